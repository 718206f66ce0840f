"""Index a folder: scan it against the store, hand the work to a runner (local process pool, or Ray), commit what
comes back in chunks, then the optional passes (captions, read text)."""

import logging
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import select, update

from indexer.enrich.keywords import KeywordSummary, read_store_metadata
from indexer.errors import BadInputError, StoreNotFoundError, reporting_full_disk
from indexer.models.embedder import embed_text_set
from indexer.models.loading import canonical_name
from indexer.runners.local import run_workers
from indexer.runners.work import ChunkWriter, WriteCounts, stored_files
from indexer.scan import ScanResult, diff_against_store
from indexer.settings import DEFAULT_MODEL, Settings
from indexer.store import SKIPPED, Image, Store, get_root, open_store, utcnow
from indexer.store.probes import PROBE_QUERIES

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

    def model() -> "Embedder":
        nonlocal embedder
        embedder = embedder or load_embedder(store.model, settings)
        return embedder

    if settings.ray:
        from indexer.runners.ray import ClusterUse, index_on_ray

        cluster = ClusterUse()
        scan, counts = index_on_ray(root, root_id, store, model, settings, show_progress, cluster)
    else:
        scan = diff_against_store(root, stored_files(store, root_id))
        counts = index_locally(store, root, root_id, scan, model, settings, show_progress)
    wrote = bool(counts.indexed or counts.reused or counts.skipped)
    summary.cluster = cluster.line() if settings.ray and wrote else ""
    summary.unchanged = scan.unchanged
    summary.indexed, summary.reused, summary.skipped = counts.indexed, counts.reused, counts.skipped
    record_unreadable_folders(store, root_id, root, scan.unreadable_dirs, summary)
    # Deleted last, so a file that moved is recognised by its content and reuses the vector of its old row.
    if scan.deleted:
        store.delete_images(scan.deleted)
        summary.removed = len(scan.deleted)
    pair_live_photos(store, root_id, scan.motions)
    threads = settings.workers or os.cpu_count() or 1
    summary.metadata = read_store_metadata(store, root_id, root, scan.sidecars, threads, show_progress)
    if wrote or scan.deleted:  # an unchanged run writes nothing (it also works on a full disk)
        if store.wants_probes():
            store.save_probes(embed_text_set(model(), PROBE_QUERIES))  # once per model and runtime
        if settings.ray:  # an on-disk generation, if one is due, is encoded by tasks across the cluster
            from indexer.runners.ray_index_build import RayShards

            store.save_index(encode_shards=RayShards(settings.ray))
        else:
            store.save_index()
        summary.index = store.index_description()
    return root_id, summary


def index_locally(
    store: Store,
    root: Path,
    root_id: int,
    scan: ScanResult,
    model: "Callable[[], Embedder]",
    settings: Settings,
    show_progress: bool,
) -> WriteCounts:
    """Decode, embed and commit the scan's new and changed files on this machine, a chunk at a time."""
    todo = [(stat, None) for stat in scan.new] + [(stat, image_id) for image_id, stat in scan.changed]
    writer = ChunkWriter(store, root_id)
    if todo:
        for pending in run_workers(root, todo, model(), store, settings, show_progress):
            writer.add(pending)
            if len(writer.rows) >= settings.commit_every:
                writer.commit()
        writer.commit()
    return writer.counts


def record_unreadable_folders(
    store: Store, root_id: int, root: Path, folders: list[str], summary: IndexSummary
) -> None:
    """A folder that could not be listed gets a skipped row ("sub/dir/"), so `stats --skipped` shows it.

    Its row lies under the folder, so the scan keeps it while the folder stays unreadable and deletes it, like
    a vanished file, once the folder can be listed again.
    """
    rows = [Path(folder).relative_to(root).as_posix() + "/" for folder in folders if Path(folder) != root]
    if not rows:
        return
    summary.skipped["unreadable folder"] += len(rows)
    with store.session() as s:
        known = set(s.scalars(select(Image.relpath).where(Image.root_id == root_id, Image.relpath.in_(rows))))
        for relpath in rows:
            if relpath in known:
                continue
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
