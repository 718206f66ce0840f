"""The store: what the indexer writes and the query service reads, behind one interface.

`open_store` picks the backend from the location: a path is the embedded store (embedded.py: SQLite, a
float16 vector file and a FAISS index in one directory), a postgresql:// URL the PostgreSQL one
(postgres.py: pgvector and PostgreSQL text search). Every backend shares the tables (schema.py) and the
row filters (filters.py), and implements the same interface (base.py): commit a chunk of rows with their
vectors, delete rows, search a vector with filters, stream the vectors, match caption text, read rows.
"""

from pathlib import Path

from indexer.store.base import Store
from indexer.store.embedded import DB_FILE, DEFAULT_INDEX_MEMORY, INDEX_FILE, INDEX_META_FILE, open_embedded
from indexer.store.filters import NO_FILTERS, Filters
from indexer.store.schema import (
    FRAME,
    INDEXED,
    METADATA_TEXT,
    READ_TEXT,
    SEARCHED,
    SKIPPED,
    Caption,
    CaptionFailure,
    Hit,
    Image,
    Keyword,
    LabelSet,
    Manifest,
    MetadataRead,
    Moment,
    Root,
    Tag,
    TextLine,
    TextModel,
    get_root,
    utcnow,
)


def is_database_url(location: str | Path) -> bool:
    """Whether a store location is a PostgreSQL URL (postgresql://..., postgresql+psycopg://...) and not a path."""
    scheme, found, _ = str(location).partition("://")
    return bool(found) and scheme.split("+", 1)[0].lower() in ("postgresql", "postgres")


def open_store(
    location: str | Path,
    model: str | None = None,
    dim: int | None = None,
    create: bool = False,
    index_memory: int = DEFAULT_INDEX_MEMORY,
    lock_timeout: float = 3600.0,
) -> Store:
    """Open the store at a path or database URL; with create=True make it for `model` and `dim` if missing.

    A store built with another model than `model` is refused. `index_memory` is the memory the search
    index may take: it picks the embedded store's FAISS index kind, and is PostgreSQL's memory for
    building the HNSW graph.
    """
    if is_database_url(location):
        from indexer.store.postgres import open_postgres  # psycopg and pgvector: the postgres extra

        return open_postgres(str(location), model, dim, create, index_memory)
    return open_embedded(Path(location), model, dim, create, index_memory, lock_timeout)


__all__ = [
    "DB_FILE", "FRAME", "INDEX_FILE", "INDEX_META_FILE", "INDEXED", "METADATA_TEXT", "READ_TEXT", "NO_FILTERS",
    "SEARCHED", "SKIPPED", "Caption", "CaptionFailure", "Filters", "Hit", "Image", "Keyword", "LabelSet", "Manifest",
    "MetadataRead", "Moment", "Root",
    "Store", "Tag", "TextLine",
    "TextModel", "get_root", "is_database_url", "open_store", "utcnow",
]  # fmt: skip
