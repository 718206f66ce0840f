"""The store: what the indexer writes and the query service reads, behind one interface.

`open_store` picks the backend; today that is the embedded one (embedded.py: SQLite, a float16 vector file
and a FAISS index in one directory). Every backend shares the tables (schema.py) and the row filters
(filters.py), and offers the same operations: commit a chunk of rows with their vectors, delete rows,
search a vector with filters, stream the vectors, match caption text, read rows.
"""

from indexer.store.embedded import DB_FILE, INDEX_FILE, INDEX_META_FILE, Store, open_embedded
from indexer.store.filters import NO_FILTERS, Filters
from indexer.store.schema import (
    INDEXED,
    SKIPPED,
    Caption,
    CaptionFailure,
    Hit,
    Image,
    LabelSet,
    Manifest,
    Root,
    Tag,
    get_root,
    utcnow,
)

open_store = open_embedded

__all__ = [
    "DB_FILE", "INDEX_FILE", "INDEX_META_FILE", "INDEXED", "NO_FILTERS", "SKIPPED", "Caption", "CaptionFailure",
    "Filters", "Hit", "Image", "LabelSet", "Manifest", "Root", "Store", "Tag", "get_root", "open_store", "utcnow",
]  # fmt: skip
