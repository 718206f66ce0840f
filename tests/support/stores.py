"""Looking inside a store the way tests need: its rows and vectors, its index's ids; planting rows."""

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
from sqlalchemy import select, text
from sqlalchemy.exc import OperationalError

from indexer.errors import StoreFormatError, StoreNotFoundError
from indexer.settings import Settings
from indexer.store import INDEXED, Image, get_root, is_database_url, open_store, utcnow
from indexer.store.ann import index_ids


def stored(settings: Settings) -> dict[str, tuple[int, np.ndarray]]:
    """{relpath: (id, vector)} of every indexed image."""
    store = open_store(settings.store)
    with store.session() as s:
        rows = s.execute(select(Image.relpath, Image.id).where(Image.status == INDEXED)).all()
    return {rel: (i, store.vector(i)) for rel, i in rows}


def faiss_ids(settings: Settings) -> list[int]:
    """Every id the store's vector search holds: its FAISS index's ids, or its pgvector rows."""
    store = open_store(settings.store)
    if is_database_url(settings.store):
        with store.engine.connect() as conn:
            return sorted(conn.scalars(text("SELECT id FROM image_vectors")))
    return sorted(index_ids(store.sync_index()).tolist())


@contextmanager
def indexed_counter(location) -> Iterator[Callable[[], int]]:
    """Counts of a store's indexed rows, for polling a running indexer: the store is opened once it exists and kept
    open, so a poll is one query. Opened at each poll, a PostgreSQL store took ~0.1 s, longer on a busy machine:
    long enough, once, for an indexer to finish 224 images between two polls."""
    store = None

    def count() -> int:
        nonlocal store
        if store is None:
            try:
                store = open_store(location)
            except (StoreNotFoundError, StoreFormatError, OperationalError):  # not created yet, or being created
                return 0
        return store.counts().get(INDEXED, 0)

    try:
        yield count
    finally:
        if store is not None:
            store.engine.dispose()


def indexed_rows(location) -> int:
    """The indexed rows now (0 before the store exists); its connections are disposed of at once."""
    with indexed_counter(location) as count:
        return count()


def plant(store, vectors: np.ndarray) -> list[int]:
    """Write rows with the given vectors into a store, as the indexer would; returns their ids."""
    with store.session() as s:
        root_id = get_root(s, store.path / "photos").id
        rows = [
            Image(
                root_id=root_id,
                relpath=f"p{len(vectors)}_{i}.jpg",
                size=1,
                mtime_ns=0,
                status=INDEXED,
                indexed_at=utcnow(),
            )
            for i in range(len(vectors))
        ]
        s.add_all(rows)
        store.commit_images(s, rows, dict(enumerate(np.asarray(vectors, dtype=np.float32))))
        return [r.id for r in rows]
