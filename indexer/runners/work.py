"""What both runners need: the store's rows in scan order, the file on its way to the store, decode
configuration, reuse of content already embedded, the chunk writer, the progress bar. The runners (local.py,
ray.py) each build on it and never import each other."""

import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from sqlalchemy import select, true

from indexer.decode import HEALABLE_REASONS
from indexer.scan import FileStat, StoredFile
from indexer.settings import Settings
from indexer.store import FRAME, INDEXED, SKIPPED, Image, Store, utcnow
from indexer.store.schema import frame_relpath
from indexer.video import Sampling
from indexer.worker import KnownContent, LoadResult, WorkerConfig

if TYPE_CHECKING:
    from indexer.models.embedder import Embedder

log = logging.getLogger(__name__)


@dataclass
class Pending:
    """One file on its way to the store."""

    stat: FileStat
    image_id: int | None  # set for a changed file: its row is updated in place
    result: LoadResult
    # One row per picture embedded: a still's one, or a video's kept frames in time order.
    vectors: np.ndarray | None = None
    source: Image | None = None  # the stored image whose vector and metadata a reused file copies
    # A video's kept frames (ms), the first being the video's own row; what a reused video copies from its twin.
    timestamps_ms: list[int] | None = None


def embed_files(embedder: "Embedder", files: list[Pending]) -> None:
    """Embed the pictures of decoded files (a video's frames with them), `embedder.batch_size` at a time."""
    pictures = [pixels for p in files for pixels in p.result.pixels]
    size = embedder.batch_size
    vectors = np.concatenate([embedder.embed_pixels(pictures[i : i + size]) for i in range(0, len(pictures), size)])
    start = 0
    for p in files:
        count = len(p.result.pixels)
        p.vectors, start = vectors[start : start + count], start + count


def stored_files(store: Store, root_id: int, start: str | None = None, end: str | None = None) -> Iterator[StoredFile]:
    """The store's rows of a root (with paths in [start, end), byte order) in relpath byte order, as the scan merges
    them, streamed (a cursor, not a list)."""
    relpath = store.byte_order(Image.relpath)
    query = (
        select(Image.id, Image.relpath, Image.size, Image.mtime_ns, Image.skip_reason)
        .where(Image.root_id == root_id, Image.status != FRAME)  # frames come and go with their video
        .where(relpath >= start if start is not None else true(), relpath < end if end is not None else true())
        .order_by(relpath)
        .execution_options(yield_per=10_000)
    )
    with store.session() as s:
        for image_id, relpath, size, mtime, reason in s.execute(query):
            yield StoredFile(image_id, relpath, size, mtime, (reason or "").split(":")[0] in HEALABLE_REASONS)


def decode_config(store: Store, embedder: "Embedder", settings: Settings) -> WorkerConfig:
    """What every decode worker needs, the store's embedded content among it."""
    with store.session() as s:
        query = select(Image.hash).where(Image.status == INDEXED).execution_options(yield_per=50_000)
        known = KnownContent(s.scalars(query))
    return WorkerConfig(
        prep=embedder.prep,
        max_pixels=settings.max_pixels,
        known_hashes=known,
        memory_limit=settings.decode_memory,
        timeout=settings.decode_timeout,
        sampling=Sampling(
            max_frames=settings.video_max_frames,
            max_gap_s=settings.video_max_gap,
            max_seconds=settings.video_max_seconds,
        ),
        video_timeout=settings.video_timeout,
    )


@dataclass
class WriteCounts:
    """What a chunk writer wrote: files embedded now, reused from a twin, skipped (reason code -> count)."""

    indexed: int = 0
    reused: int = 0
    skipped: Counter = field(default_factory=Counter)

    def add(self, other: "WriteCounts") -> None:
        self.indexed, self.reused = self.indexed + other.indexed, self.reused + other.reused
        self.skipped.update(other.skipped)


class ChunkWriter:
    """Collects finished files and writes them, with their vectors, in one transaction per chunk."""

    def __init__(self, store: Store, root_id: int):
        self.store, self.root_id = store, root_id
        self.counts = WriteCounts()
        self.rows: list[Pending] = []

    def add(self, pending: Pending) -> None:
        self.rows.append(pending)

    def commit(self) -> None:
        """Write the collected rows and their vectors in one transaction; the index catches up from them. A video
        writes its row (with its first kept frame's vector) and a FRAME row per later kept frame."""
        if not self.rows:
            return
        with self.store.session() as s:
            # A new file the store already has was written by an earlier try of the same shard (a Ray task retried
            # after its commit): it is rewritten, not added twice.
            written = self.written(s, [p.stat.relpath for p in self.rows if p.image_id is None])
            ids = [p.image_id if p.image_id is not None else written.get(p.stat.relpath) for p in self.rows]
            changed = [image_id for image_id in ids if image_id is not None]
            stale_frames = self.store.frame_ids(s, changed)
        self.store.delete_images(stale_frames)  # a changed video's frames show its old content
        with self.store.session() as s:
            rows, vectors, videos = [], {}, []
            for p, image_id in zip(self.rows, ids, strict=True):
                row = s.get(Image, image_id) if image_id is not None else None
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

    def written(self, s, relpaths: list[str]) -> dict[str, int]:
        """{relpath: id} of those of `relpaths` the root already has a row for."""
        found = {}
        for start in range(0, len(relpaths), 500):
            query = select(Image.relpath, Image.id).where(
                Image.root_id == self.root_id, Image.relpath.in_(relpaths[start : start + 500])
            )
            found.update(s.execute(query).all())
        return found

    def fill_row(self, row: Image, p: Pending) -> None:
        decoded, result = p.result.decoded, p.result
        row.size, row.mtime_ns, row.hash, row.indexed_at = p.stat.size, p.stat.mtime_ns, result.hash, utcnow()
        row.timestamp_ms = row.duration_ms = None
        if result.skip_reason is not None:
            row.status, row.skip_reason = SKIPPED, result.skip_reason
            self.counts.skipped[result.skip_reason.split(":")[0]] += 1
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
            self.counts.indexed += 1
        else:
            self.counts.reused += 1


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


def indexing_progress(show_progress: bool) -> Progress:
    return Progress(
        TextColumn("indexing"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:.1f} images/s"),
        TimeRemainingColumn(),
        disable=not show_progress,
        transient=False,
    )


def reuse_twin(pending: Pending, store: Store) -> bool:
    """Give a file whose content is already embedded its twin's vectors (a video's, its frames' too); False if
    another writer deleted the twin."""
    with store.session() as s:
        query = select(Image.id).where(Image.hash == pending.result.hash, Image.status == INDEXED).limit(1)
        twin = s.scalar(query)
    pending.source = store.image(twin) if twin is not None else None
    vector = store.vector(pending.source.id) if pending.source else None
    if vector is None:  # another writer (of another folder) deleted it meanwhile
        log.info("%s: its twin is gone; it is indexed on the next run", pending.stat.relpath)
        return False
    frames = store.frames(pending.source.id)
    pending.vectors = vector[None]
    if frames:
        pending.vectors = np.concatenate([pending.vectors, store.vectors_of(np.asarray([i for i, _ in frames]))])
    if pending.source.timestamp_ms is not None:
        pending.timestamps_ms = [pending.source.timestamp_ms] + [ms for _, ms in frames]
    return True
