"""What both runners need: the file on its way to the store, decode configuration, reuse of content already
embedded, the progress bar. The runners (local.py, ray.py) each build on it and never import
each other."""

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from sqlalchemy import select

from indexer.scan import FileStat
from indexer.settings import Settings
from indexer.store import INDEXED, Image, Store
from indexer.video import Sampling
from indexer.worker import LoadResult, WorkerConfig

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


def decode_config(store: Store, embedder: "Embedder", settings: Settings) -> tuple[dict[str, int], WorkerConfig]:
    """The store's embedded content hashes (hash -> image id), and what every decode worker needs."""
    with store.session() as s:
        known_hashes = dict(s.execute(select(Image.hash, Image.id).where(Image.status == INDEXED)).all())
    config = WorkerConfig(
        prep=embedder.prep,
        max_pixels=settings.max_pixels,
        known_hashes=frozenset(known_hashes),
        memory_limit=settings.decode_memory,
        timeout=settings.decode_timeout,
        sampling=Sampling(
            max_frames=settings.video_max_frames,
            max_gap_s=settings.video_max_gap,
            max_seconds=settings.video_max_seconds,
        ),
        video_timeout=settings.video_timeout,
    )
    return known_hashes, config


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


def reuse_twin(pending: Pending, store: Store, known_hashes: dict[str, int]) -> bool:
    """Give a file whose content is already embedded its twin's vectors (a video's, its frames' too); False if
    another writer deleted the twin."""
    pending.source = store.image(known_hashes[pending.result.hash])
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
