"""Index a folder: scan it against the store, hand the work to a runner (local process pool, or Ray), commit what
comes back in chunks, then the optional passes (captions, read text)."""

import logging
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import select, update

from indexer.decode import HEALABLE_REASONS
from indexer.enrich.keywords import KeywordSummary, read_store_metadata
from indexer.errors import BadInputError, StoreNotFoundError, reporting_full_disk
from indexer.models.embedder import embed_text_set
from indexer.models.loading import canonical_name
from indexer.runners.local import run_workers
from indexer.runners.work import Pending
from indexer.scan import diff_against_store
from indexer.settings import DEFAULT_MODEL, Settings
from indexer.store import FRAME, INDEXED, SKIPPED, Image, Store, get_root, open_store, utcnow
from indexer.store.probes import PROBE_QUERIES
from indexer.store.schema import frame_relpath

if TYPE_CHECKING:
    from indexer.enrich.captions import CaptionSummary
    from indexer.enrich.ocr import OcrSummary
    from indexer.enrich.tags import TagSummary
    from indexer.models.embedder import Embedder

log = logging.getLogger(__name__)


@dataclass
class IndexSummary:
    """What one run did; `line()` is the closing summary users see."""

    indexed: int = 0  # embedded now
    reused: int = 0  # same content already in the store: vector copied, nothing embedded
    unchanged: int = 0
    removed: int = 0
    skipped: Counter = field(default_factory=Counter)  # reason code -> count
    seconds: float = 0.0
    captions: "CaptionSummary | None" = None  # when the run also captioned
    text: "OcrSummary | None" = None  # when the run also read the text in the images
    retagged: "list[TagSummary] | None" = None  # when the run also tagged with the saved label sets
    metadata: "KeywordSummary | None" = None  # when images' metadata (keywords, titles) was read
    index: str = ""  # the search index after a run that changed it: its kind and tuning
    cluster: str = ""  # for a run on Ray: the workers and GPUs that took part

    @property
    def images_per_second(self) -> float:
        return (self.indexed + self.reused) / self.seconds if self.seconds else 0.0

    def line(self) -> str:
        skipped = sum(self.skipped.values())
        reasons = ", ".join(f"{code} {n}" for code, n in self.skipped.most_common())
        return (
            (
                f"indexed {self.indexed}, reused {self.reused}, unchanged {self.unchanged}, removed {self.removed}, "
                f"skipped {skipped}{f' ({reasons})' if reasons else ''} in {self.seconds:.1f} s "
                f"({self.images_per_second:.1f} images/s)"
            )
            + (f"; index {self.index}" if self.index else "")
            + (f"; {self.cluster}" if self.cluster else "")
            + (f"; {self.metadata.line()}" if self.metadata and self.metadata.read else "")
            + (f"; {self.captions.line()}" if self.captions else "")
            + (f"; {self.text.line()}" if self.text else "")
            + "".join(f"\n{tagged.line()}" for tagged in self.retagged or ())
        )


def load_embedder(name: str, settings: Settings) -> "Embedder":
    """Imported here, not at the top: unchanged re-runs never need a model (nor torch)."""
    from indexer.models.runtimes import make_embedder

    return make_embedder(name, settings)


def index_folder(
    folder: Path,
    settings: Settings,
    show_progress: bool = True,
    caption: bool = False,
    embedder: "Embedder | None" = None,
    ocr: bool = False,
    retag: bool = False,
) -> IndexSummary:
    """Bring the store up to date with `folder`; safe to interrupt and re-run at any point.

        With `caption`, the folder's images that lack a caption from the configured captioner are captioned
        after embedding: new and changed images, and any a killed run left uncaptioned; with `ocr`, the same for
        the text in them (indexer/enrich/ocr.py); with `retag`, the images indexed since each saved label set last ran
    are tagged with it (indexer/enrich/tags.py). `embedder`, when given, is an already loaded model for the store
        (benchmarks time the pipeline without model loading); otherwise the model is loaded only if there is
        something to embed.
    """
    started = time.perf_counter()
    root = Path(folder).expanduser().resolve()
    if not root.is_dir():
        raise BadInputError(f"{folder} is not a folder")
    if caption:
        from indexer.enrich.captions import resolve_captioner

        resolve_captioner(settings)  # a bad captioner fails now, not after the indexing
    reader = None
    if ocr:
        from indexer.enrich.ocr import Reader

        reader = Reader(settings.ocr_model, settings.ocr_keys)  # so does a missing OCR model
    if settings.ray:
        from indexer.runners.ray import connect

        connect(settings.ray)  # so does a cluster that cannot be reached
    store, embedder = open_for_writing(settings, embedder)
    with store.writing(root, settings.lock_timeout):  # one writer per folder (per store, for the embedded one)
        with reporting_full_disk(settings.store):
            root_id, summary = update_store(store, root, settings, show_progress, embedder)
        summary.seconds = time.perf_counter() - started  # indexing only: captions report their own time
        if caption:
            from indexer.enrich.captions import caption_store

            summary.captions = caption_store(store, settings, root_id=root_id, show_progress=show_progress)
        if reader is not None:
            from indexer.enrich.ocr import ocr_store

            summary.text = ocr_store(store, settings, root_id=root_id, show_progress=show_progress, reader=reader)
        if retag:
            from indexer.enrich.tags import retag_store

            summary.retagged = retag_store(store, show_progress)
    return summary


def open_for_writing(settings: Settings, embedder: "Embedder | None") -> tuple[Store, "Embedder | None"]:
    """The store to index into, created for the model when new; (store, the embedder if one was loaded)."""
    requested = canonical_name(settings.model) if settings.model else None
    options = {"index_memory": settings.index_memory, "lock_timeout": settings.lock_timeout}
    try:
        return open_store(settings.store, model=requested, **options), embedder
    except StoreNotFoundError:
        # The model is loaded only when there is work, so unchanged re-runs stay fast; a new store needs its dim.
        embedder = embedder or load_embedder(requested or DEFAULT_MODEL, settings)
        return open_store(settings.store, model=embedder.name, dim=embedder.dim, create=True, **options), embedder


def update_store(
    store: Store, root: Path, settings: Settings, show_progress: bool, embedder: "Embedder | None"
) -> tuple[int, IndexSummary]:
    """The indexing itself, under the writer lock: (the folder's root id, what was done)."""
    summary = IndexSummary()
    with store.session() as s:
        root_id = get_root(s, root).id
        s.commit()
        rows = s.execute(
            select(Image.id, Image.relpath, Image.size, Image.mtime_ns, Image.skip_reason).where(
                Image.root_id == root_id,
                Image.status != FRAME,  # frames come and go with their video
            )
        )
        known = {
            relpath: (image_id, size, mtime, (reason or "").split(":")[0] in HEALABLE_REASONS)
            for image_id, relpath, size, mtime, reason in rows
        }
    scan = diff_against_store(root, known)
    summary.unchanged = scan.unchanged
    record_unreadable_folders(store, root_id, root, scan.unreadable_dirs, known, summary)
    todo = [(stat, None) for stat in scan.new] + [(stat, image_id) for image_id, stat in scan.changed]
    if todo:
        embedder = embedder or load_embedder(store.model, settings)
        writer = ChunkWriter(store, root_id, summary)
        cluster = None
        if settings.ray:
            from indexer.runners.ray import ClusterUse, run_on_ray

            cluster = ClusterUse()
            files = run_on_ray(root, todo, embedder, store, settings, show_progress, cluster)
        else:
            files = run_workers(root, todo, embedder, store, settings, show_progress)
        for pending in files:
            writer.add(pending)
            if len(writer.rows) >= settings.commit_every:
                writer.commit()
        writer.commit()
        summary.cluster = cluster.line() if cluster else ""
    # Deleted last, so a file that moved is recognised by its content and reuses the vector of its old row.
    if scan.deleted:
        store.delete_images(scan.deleted)
        summary.removed = len(scan.deleted)
    pair_live_photos(store, root_id, scan.motions)
    threads = settings.workers or os.cpu_count() or 1
    summary.metadata = read_store_metadata(store, root_id, root, scan.sidecars, threads, show_progress)
    if todo or scan.deleted:  # an unchanged run writes nothing (it also works on a full disk)
        if store.wants_probes():
            embedder = embedder or load_embedder(store.model, settings)
            store.save_probes(embed_text_set(embedder, PROBE_QUERIES))  # once per model and runtime
        store.save_index()
        summary.index = store.index_description()
    return root_id, summary


def record_unreadable_folders(
    store: Store, root_id: int, root: Path, folders: list[str], known: dict, summary: IndexSummary
) -> None:
    """A folder that could not be listed gets a skipped row ("sub/dir/"), so `stats --skipped` shows it.

    Its row lies under the folder, so the scan keeps it while the folder stays unreadable and deletes it, like
    a vanished file, once the folder can be listed again.
    """
    rows = [Path(folder).relative_to(root).as_posix() + "/" for folder in folders if Path(folder) != root]
    if rows:
        summary.skipped["unreadable folder"] += len(rows)
    new = [relpath for relpath in rows if relpath not in known]
    if not new:
        return
    with store.session() as s:
        for relpath in new:
            s.add(
                Image(
                    root_id=root_id, relpath=relpath, size=0, mtime_ns=0, status=SKIPPED, indexed_at=utcnow(),
                    skip_reason="unreadable folder: its files cannot be listed; they are kept as they were",
                )
            )  # fmt: skip
        s.commit()


def pair_live_photos(store: Store, root_id: int, motions: dict[str, str]) -> None:
    """Record each still's Live Photo movie as the scan found them now: a movie added, gone or renamed changes no
    vector, only what plays in the still's view."""
    with store.session() as s:
        paired = {
            relpath: (image_id, motion)
            for image_id, relpath, motion in s.execute(
                select(Image.id, Image.relpath, Image.motion_relpath).where(
                    Image.root_id == root_id, Image.motion_relpath.is_not(None)
                )
            )
        }
        for relpath, (image_id, motion) in paired.items():
            if motions.get(relpath) != motion:
                s.execute(update(Image).where(Image.id == image_id).values(motion_relpath=motions.get(relpath)))
        new = [relpath for relpath in motions if relpath not in paired]
        for start in range(0, len(new), 500):
            for image_id, relpath in s.execute(
                select(Image.id, Image.relpath).where(
                    Image.root_id == root_id, Image.relpath.in_(new[start : start + 500])
                )
            ):
                s.execute(update(Image).where(Image.id == image_id).values(motion_relpath=motions[relpath]))
        s.commit()


class ChunkWriter:
    """Collects finished files and writes them, with their vectors, in one transaction per chunk."""

    def __init__(self, store: Store, root_id: int, summary: IndexSummary):
        self.store, self.root_id, self.summary = store, root_id, summary
        self.rows: list[Pending] = []

    def add(self, pending: Pending) -> None:
        self.rows.append(pending)

    def commit(self) -> None:
        """Write the collected rows and their vectors in one transaction; the index catches up from them. A video
        writes its row (with its first kept frame's vector) and a FRAME row per later kept frame."""
        if not self.rows:
            return
        changed = [p.image_id for p in self.rows if p.image_id is not None]
        with self.store.session() as s:
            stale_frames = self.store.frame_ids(s, changed)
        self.store.delete_images(stale_frames)  # a changed video's frames show its old content
        with self.store.session() as s:
            rows, vectors, videos = [], {}, []
            for p in self.rows:
                row = s.get(Image, p.image_id) if p.image_id is not None else None
                if row is None:
                    row = Image(root_id=self.root_id, relpath=p.stat.relpath)
                    s.add(row)
                self.fill_row(row, p)
                if p.vectors is not None and row.status == INDEXED:
                    vectors[len(rows)] = p.vectors[0]
                    if row.timestamp_ms is not None:
                        videos.append((row, p))
                rows.append(row)
            s.flush()  # a new video's id, for its frames
            for video, p in videos:
                for ms, vector in zip(frame_times(p)[1:], p.vectors[1:], strict=True):
                    vectors[len(rows)] = vector
                    rows.append(frame_row(video, ms))
                    s.add(rows[-1])
            # A changed file's captions describe its old content.
            self.store.delete_captions(s, changed)
            self.store.commit_images(s, rows, vectors)
        self.store.save_if_due()
        self.rows.clear()

    def fill_row(self, row: Image, p: Pending) -> None:
        decoded, result = p.result.decoded, p.result
        row.size, row.mtime_ns, row.hash, row.indexed_at = p.stat.size, p.stat.mtime_ns, result.hash, utcnow()
        row.timestamp_ms = row.duration_ms = None
        if result.skip_reason is not None:
            row.status, row.skip_reason = SKIPPED, result.skip_reason
            self.summary.skipped[result.skip_reason.split(":")[0]] += 1
            log.warning("skipping %s: %s", p.stat.relpath, result.skip_reason)
            return
        row.status, row.skip_reason = INDEXED, None
        meta = decoded if decoded is not None else p.source
        row.width, row.height, row.format, row.taken_at = meta.width, meta.height, meta.format, meta.taken_at
        row.phash = meta.phash
        times = frame_times(p)
        if times:
            row.timestamp_ms = times[0]
            video = result.video
            if video is None:  # reused from its twin
                row.duration_ms = p.source.duration_ms
            elif video.duration_s is not None:
                row.duration_ms = round(video.duration_s * 1000)
            if video is not None and video.cut_off:
                log.warning("%s: only its first %g s were read (video_max_seconds)", p.stat.relpath, times[-1] / 1000)
        if decoded is not None:
            self.summary.indexed += 1
        else:
            self.summary.reused += 1


def frame_times(p: Pending) -> list[int] | None:
    """The kept frames' times (ms) of a video, decoded now or reused from its twin; None for a still."""
    if p.result.video is not None:
        return [round(t * 1000) for t in p.result.video.timestamps]
    return p.timestamps_ms


def frame_row(video: Image, timestamp_ms: int) -> Image:
    """A FRAME row of a video: searched, answered as a moment of it, filtered by its folder and dates."""
    return Image(
        root_id=video.root_id, relpath=frame_relpath(video.relpath, timestamp_ms), size=video.size,
        mtime_ns=video.mtime_ns, width=video.width, height=video.height, format=video.format,
        taken_at=video.taken_at, status=FRAME, indexed_at=video.indexed_at, video_id=video.id,
        timestamp_ms=timestamp_ms,
    )  # fmt: skip
