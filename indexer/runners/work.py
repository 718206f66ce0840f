"""What both runners need: the file on its way to the store, decode configuration, reuse of content already
embedded, the progress bar. The runners (local.py, ray.py) each build on it and never import
each other."""

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from sqlalchemy import select

from indexer.decode import LoadResult, WorkerConfig
from indexer.scan import FileStat
from indexer.settings import Settings
from indexer.store import INDEXED, Image, Store

if TYPE_CHECKING:
    from indexer.models.embedder import Embedder

log = logging.getLogger(__name__)


@dataclass
class Pending:
    """One file on its way to the store."""

    stat: FileStat
    image_id: int | None  # set for a changed file: its row is updated in place
    result: LoadResult
    vector: np.ndarray | None = None
    source: Image | None = None  # the stored image whose vector and metadata a reused file copies


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
    """Give a file whose content is already embedded its twin's vector; False if another writer deleted the twin."""
    pending.source = store.image(known_hashes[pending.result.hash])
    pending.vector = store.vector(pending.source.id) if pending.source else None
    if pending.vector is None:  # another writer (of another folder) deleted it meanwhile
        log.info("%s: its twin is gone; it is indexed on the next run", pending.stat.relpath)
        return False
    return True
