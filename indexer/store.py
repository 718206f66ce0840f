"""The store: one directory with a SQLite database (through SQLAlchemy) and a FAISS index.

SQLite is the source of truth, vectors included (float32 blobs next to the rows they describe), so
each chunk of work commits atomically and a killed run loses at most that chunk. The FAISS index
is derived: it is saved with the data version it reflects and rebuilt from SQLite when the two
disagree (after a crash, or when another process committed).
"""

import errno
import json
import logging
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import faiss
import numpy as np
from sqlalchemy import (
    JSON,
    DateTime,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    UniqueConstraint,
    create_engine,
    delete,
    event,
    func,
    select,
    text,
    update,
)
from sqlalchemy.exc import DatabaseError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from indexer.errors import ModelMismatchError, StorageFullError, StoreFormatError, StoreNotFoundError

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
DB_FILE = "clipdex.db"
INDEX_FILE = "index.faiss"
INDEX_META_FILE = "index.json"
INDEXED, SKIPPED = "indexed", "skipped"
# Up to this many vectors the index is exact (under 2 ms a query; 9 ms at 100k on 2 cores); above, IVF.
EXACT_LIMIT = 20_000
# nprobe is calibrated on stored vectors to this recall@10, a margin over the 0.95 promised for queries.
RECALL_TARGET = 0.97


class Base(DeclarativeBase):
    pass


class Manifest(Base):
    """A single row: what built this store and how far its data has come."""

    __tablename__ = "manifest"
    id: Mapped[int] = mapped_column(primary_key=True)
    format_version: Mapped[int]
    model: Mapped[str]
    dim: Mapped[int]
    created_at: Mapped[datetime] = mapped_column(DateTime)
    # Bumped by every commit that changes vectors; the FAISS file records the version it reflects.
    data_version: Mapped[int] = mapped_column(default=0)


class Root(Base):
    """A folder that was indexed; image paths are stored relative to it."""

    __tablename__ = "roots"
    id: Mapped[int] = mapped_column(primary_key=True)
    path: Mapped[str] = mapped_column(String, unique=True)


class Image(Base):
    """One file seen under a root: indexed with a vector, or skipped with the reason."""

    __tablename__ = "images"
    __table_args__ = (UniqueConstraint("root_id", "relpath"),)
    id: Mapped[int] = mapped_column(primary_key=True)  # also the FAISS id
    root_id: Mapped[int] = mapped_column(ForeignKey("roots.id"), index=True)
    relpath: Mapped[str]
    size: Mapped[int]
    mtime_ns: Mapped[int] = mapped_column(Integer)
    hash: Mapped[str | None] = mapped_column(String(32), index=True)
    width: Mapped[int | None]
    height: Mapped[int | None]
    format: Mapped[str | None]
    taken_at: Mapped[datetime | None] = mapped_column(DateTime)
    status: Mapped[str] = mapped_column(String(8), index=True)
    skip_reason: Mapped[str | None]
    vector: Mapped[bytes | None] = mapped_column(LargeBinary)
    indexed_at: Mapped[datetime] = mapped_column(DateTime)


class Caption(Base):
    """A caption of an image by one captioning model and prompt; several models' captions can coexist."""

    __tablename__ = "captions"
    __table_args__ = (UniqueConstraint("image_id", "model", "prompt"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True)
    model: Mapped[str]
    prompt: Mapped[str] = mapped_column(default="")
    text: Mapped[str]
    created_at: Mapped[datetime] = mapped_column(DateTime)


class CaptionFailure(Base):
    """An image a captioning model and prompt could not caption, with the reason; re-runs skip it until --redo."""

    __tablename__ = "caption_failures"
    __table_args__ = (UniqueConstraint("image_id", "model", "prompt"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True)
    model: Mapped[str]
    prompt: Mapped[str]
    reason: Mapped[str]
    created_at: Mapped[datetime] = mapped_column(DateTime)


# Full-text index over caption text: an FTS5 table over `captions` (external content), kept in step by
# triggers, so every write path (captioning, cascade deletes of images, plain SQL) updates it.
# The porter stemmer lets "dogs" find "dog".
CAPTION_FTS_DDL = (
    "CREATE VIRTUAL TABLE IF NOT EXISTS captions_fts USING fts5("
    "text, content='captions', content_rowid='id', tokenize='porter unicode61 remove_diacritics 2')",
    "CREATE TRIGGER IF NOT EXISTS captions_fts_insert AFTER INSERT ON captions BEGIN "
    "INSERT INTO captions_fts(rowid, text) VALUES (new.id, new.text); END",
    "CREATE TRIGGER IF NOT EXISTS captions_fts_delete AFTER DELETE ON captions BEGIN "
    "INSERT INTO captions_fts(captions_fts, rowid, text) VALUES ('delete', old.id, old.text); END",
    "CREATE TRIGGER IF NOT EXISTS captions_fts_update AFTER UPDATE OF text ON captions BEGIN "
    "INSERT INTO captions_fts(captions_fts, rowid, text) VALUES ('delete', old.id, old.text); "
    "INSERT INTO captions_fts(rowid, text) VALUES (new.id, new.text); END",
)


def ensure_caption_fts(engine) -> None:
    """Create the caption full-text index and its triggers when missing, filled from captions already stored."""
    with engine.begin() as conn:
        if conn.exec_driver_sql("SELECT 1 FROM sqlite_master WHERE name = 'captions_fts'").first():
            return  # made together with its triggers, in one transaction
        for statement in CAPTION_FTS_DDL:
            conn.exec_driver_sql(statement)
        conn.exec_driver_sql("INSERT INTO captions_fts(captions_fts) VALUES ('rebuild')")


class Tag(Base):
    """A zero-shot label given to an image from a named label set, with its score."""

    __tablename__ = "tags"
    # The unique index leads with image_id, so it also serves look-ups by image: no second index to update.
    __table_args__ = (UniqueConstraint("image_id", "label_set", "label"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    label_set: Mapped[str]
    label: Mapped[str] = mapped_column(index=True)
    score: Mapped[float]
    model: Mapped[str]


class LabelSet(Base):
    """A named zero-shot label set, remembered so newly indexed images can be tagged with it.

    `weights` is the classifier (one unit vector per label, float32 blob) with its `scale`, `bias` and
    `activation`, so tagging new images needs no text model; `tagged_at` marks how far tagging has come.
    """

    __tablename__ = "label_sets"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String, unique=True)
    model: Mapped[str]
    labels: Mapped[list] = mapped_column(JSON)
    templates: Mapped[list] = mapped_column(JSON)
    options: Mapped[dict] = mapped_column(JSON)
    activation: Mapped[str] = mapped_column(String(8))  # "softmax" or "sigmoid"
    scale: Mapped[float]
    bias: Mapped[float]
    weights: Mapped[bytes] = mapped_column(LargeBinary)
    tagged_at: Mapped[datetime] = mapped_column(DateTime)


@dataclass
class Hit:
    """One search result: a stored image, its score and its caption when it has one.

    The score is the cosine similarity in embedding search, the bm25 relevance (higher is better) in
    caption search, and the reciprocal-rank-fusion score in hybrid search.
    """

    id: int
    path: str
    score: float
    caption: str | None = None


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class Store:
    """An open store: the database session factory plus the FAISS index kept in step with it."""

    def __init__(self, path: Path, engine, manifest: Manifest):
        self.path = path
        self.engine = engine
        self.model = manifest.model
        self.dim = manifest.dim
        self.index: faiss.Index | None = None
        self.index_version = -1
        self.index_max_id = 0  # the highest image id when the index was loaded or refreshed: rows above are new
        self.index_partial = False  # refresh_index added rows: edits and deletions may be missing

    def session(self) -> Session:
        return Session(self.engine, expire_on_commit=False)

    def data_version(self) -> int:
        with self.engine.connect() as conn:  # Core, not an ORM session: asked once per query by the service
            return conn.scalar(select(Manifest.data_version))

    def bump_version(self, session: Session) -> None:
        """Call inside the transaction that changes vectors."""
        session.execute(update(Manifest).values(data_version=Manifest.data_version + 1))

    # --- the FAISS index ---------------------------------------------------------------------------

    def load_index(self) -> faiss.Index:
        """The index matching the database now: from memory, from disk, or rebuilt from SQLite.

        Either an exact IndexIDMap2(IndexFlatIP) or, above EXACT_LIMIT vectors, an IVF-flat index;
        both take add_with_ids and remove_ids with image ids, so the pipeline keeps them in step.
        """
        version = self.data_version()
        if self.index is not None and self.index_version == version and index_suits(self.index):
            return self.index
        with self.session() as s:
            self.index_max_id, self.index_partial = s.scalar(select(func.max(Image.id))) or 0, False
        index = self.read_saved_index(version)
        if index is not None:
            self.index, self.index_version = index, version
            return self.index
        self.index, self.index_version = self.build_index(), version
        self.save_index()
        return self.index

    def read_saved_index(self, version: int) -> faiss.Index | None:
        """The index file, if it is readable, of the right kind, and holds exactly the stored vectors' ids.

        The version alone is not proof (two writers once saved an index under a version whose rows it lacked),
        so the ids are checked against the database: their count and their sum. SQLite is the truth; a
        damaged, stale or mismatched file is logged and rebuilt from it.
        """
        index_file = self.path / INDEX_FILE
        if not index_file.exists() or self.saved_version() != version:
            return None
        try:
            index = faiss.read_index(str(index_file))
        except RuntimeError as e:
            log.warning("the index file %s is damaged (%s); rebuilding it from the database", index_file, e)
            return None
        if not index_suits(index):
            return None
        with self.engine.connect() as conn:
            count, id_sum = conn.execute(
                select(func.count(), func.coalesce(func.sum(Image.id), 0)).where(Image.status == INDEXED)
            ).one()
        ids = index_ids(index)
        if len(ids) != count or int(ids.sum()) != id_sum:
            log.warning(
                "the index file %s holds %d vectors, the database %d; rebuilding it from the database",
                index_file, len(ids), count,
            )  # fmt: skip
            return None
        return index

    def saved_version(self) -> int | None:
        """The data version of the index file on disk (None when missing or unreadable)."""
        try:
            return json.loads((self.path / INDEX_META_FILE).read_text()).get("data_version")
        except (OSError, ValueError, AttributeError):
            return None

    def refresh_index(self) -> faiss.Index:
        """For a reader while an indexer runs: the index brought up to the database without a full rebuild.

        Rows committed since (ids above any seen) are added as the indexer's chunks land; once the indexer
        saves its index for the current version, that one is loaded, edits and deletions included. Only
        rows that vanished with no saved index to explain them make it rebuild.
        """
        version = self.data_version()
        if self.index is not None and self.index_version == version and not self.index_partial:
            return self.index
        if self.index is None or self.saved_version() == version:
            self.index_version = -1  # whatever is in memory is older than the saved file
            return self.load_index()
        if self.index_version == version:
            return self.index
        with self.session() as s:  # one read transaction: a consistent snapshot
            version = s.scalar(select(Manifest.data_version))
            count = s.scalar(select(func.count()).select_from(Image).where(Image.status == INDEXED))
            rows = s.execute(
                select(Image.id, Image.vector).where(Image.status == INDEXED, Image.id > self.index_max_id)
            ).all()
        if rows:
            ids = np.asarray([r[0] for r in rows], dtype=np.int64)
            self.index.add_with_ids(np.frombuffer(b"".join(r[1] for r in rows), np.float32).reshape(-1, self.dim), ids)
            self.index_max_id = int(ids.max())
        if self.index.ntotal != count:  # rows were deleted or skipped: only a full load knows which
            self.index_version = -1
            return self.load_index()
        self.index_version, self.index_partial = version, True
        return self.index

    def build_index(self) -> faiss.Index:
        """An inner-product index over every stored vector (unit length: cosine), of the kind its size calls for."""
        with self.session() as s:
            count = s.scalar(select(func.count()).where(Image.status == INDEXED))
        nlist = ivf_lists(count)
        if not nlist:
            index = faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))
            self.add_all(index)
            return index
        index = faiss.index_factory(self.dim, f"IVF{nlist},Flat", faiss.METRIC_INNER_PRODUCT)
        # k-means on ~40 vectors per list (faiss's minimum for stable centroids), spread over the id range.
        step = max(1, count // (40 * nlist))
        with self.session() as s:
            blobs = s.scalars(select(Image.vector).where(Image.status == INDEXED, Image.id % step == 0))
            sample = np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(-1, self.dim)
        index.train(sample)
        self.add_all(index)
        index.nprobe = calibrate_nprobe(index, sample[:: max(1, len(sample) // 300)])
        return index

    def add_all(self, index: faiss.Index) -> None:
        for ids, vecs in self.iter_vectors():
            index.add_with_ids(vecs, ids)

    def iter_vectors(
        self, chunk_size: int = 10_000, indexed_after: datetime | None = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids, vectors) of indexed images in chunks, optionally only those indexed after a time."""
        query = select(Image.id, Image.vector).where(*indexed_since(indexed_after))
        with self.engine.connect() as conn:  # Core, not the ORM session: a third faster on millions of rows
            for chunk in conn.execution_options(yield_per=chunk_size).execute(query).partitions():
                ids = np.fromiter((r[0] for r in chunk), dtype=np.int64, count=len(chunk))
                vecs = np.frombuffer(b"".join(r[1] for r in chunk), dtype=np.float32).reshape(-1, self.dim)
                yield ids, vecs

    def save_index(self) -> None:
        """Write the index and its version atomically: temp file, fsync, rename.

        An index that has outgrown its kind (a flat one past EXACT_LIMIT after a big run) is rebuilt first.
        """
        if self.index is None:
            return
        if not index_suits(self.index) and self.index_version == self.data_version():
            self.index = self.build_index()
        tmp, meta_tmp = self.path / (INDEX_FILE + ".tmp"), self.path / (INDEX_META_FILE + ".tmp")
        try:
            faiss.write_index(self.index, str(tmp))
            os.replace(tmp, self.path / INDEX_FILE)
            meta_tmp.write_text(json.dumps({"data_version": self.index_version, "count": self.index.ntotal}))
            os.replace(meta_tmp, self.path / INDEX_META_FILE)
        finally:  # a half-written temp file must not fill what little room a full disk has left
            tmp.unlink(missing_ok=True)
            meta_tmp.unlink(missing_ok=True)

    def count_vectors(self, indexed_after: datetime | None = None) -> int:
        """How many vectors `iter_vectors` would yield."""
        with self.session() as s:
            return s.scalar(select(func.count()).select_from(Image).where(*indexed_since(indexed_after)))

    # --- reading -----------------------------------------------------------------------------------

    def image(self, image_id: int) -> Image | None:
        with self.session() as s:
            return s.get(Image, image_id)

    def vector(self, image_id: int) -> np.ndarray | None:
        with self.engine.connect() as conn:
            blob = conn.scalar(select(Image.vector).where(Image.id == image_id, Image.status == INDEXED))
        return None if blob is None else np.frombuffer(blob, dtype=np.float32)

    def paths(self, ids: list[int]) -> dict[int, str]:
        """Absolute paths of the given image ids."""
        with self.session() as s:
            rows = s.execute(select(Image.id, Root.path, Image.relpath).join(Root).where(Image.id.in_(ids))).all()
        return {i: str(Path(root) / rel) for i, root, rel in rows}

    def hit_rows(self, ids: list[int]) -> dict[int, tuple[str, str | None]]:
        """(absolute path, newest caption or None) of the given image ids: one query for a page of hits."""
        newest = (
            select(Caption.text)
            .where(Caption.image_id == Image.id)
            .order_by(Caption.created_at.desc(), Caption.id.desc())
            .limit(1)
            .scalar_subquery()
        )
        query = select(Image.id, Root.path, Image.relpath, newest).join(Root).where(Image.id.in_(ids))
        with self.engine.connect() as conn:
            return {i: (str(Path(root) / rel), caption) for i, root, rel, caption in conn.execute(query)}

    def find_path(self, path: Path) -> int | None:
        """The id of an indexed image by its absolute path, if it lies under a known root."""
        path = path.resolve()
        with self.session() as s:
            for root_id, root in s.execute(select(Root.id, Root.path)).all():
                if path.is_relative_to(root):
                    return s.scalar(
                        select(Image.id).where(
                            Image.root_id == root_id,
                            Image.relpath == path.relative_to(root).as_posix(),
                            Image.status == INDEXED,
                        )
                    )
        return None

    def counts(self) -> dict[str, int]:
        with self.session() as s:
            rows = s.execute(select(Image.status, func.count()).group_by(Image.status)).all()
        return {status: n for status, n in rows}

    def skipped(self) -> list[tuple[str, str]]:
        """(absolute path, reason) of every skipped file."""
        with self.session() as s:
            rows = s.execute(
                select(Root.path, Image.relpath, Image.skip_reason)
                .join(Root)
                .where(Image.status == SKIPPED)
                .order_by(Root.path, Image.relpath)
            ).all()
        return [(str(Path(root) / rel), reason) for root, rel, reason in rows]

    def roots(self) -> list[str]:
        with self.session() as s:
            return list(s.scalars(select(Root.path).order_by(Root.path)))

    def delete_images(self, session: Session, ids: list[int]) -> None:
        """Delete rows inside the caller's transaction (the index follows on the next load)."""
        for start in range(0, len(ids), 500):
            session.execute(delete(Image).where(Image.id.in_(ids[start : start + 500])))

    # --- captions ----------------------------------------------------------------------------------

    def delete_captions(self, session: Session, ids: list[int]) -> None:
        """Forget the captions and caption failures of images whose content changed (in the caller's transaction)."""
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            session.execute(delete(Caption).where(Caption.image_id.in_(chunk)))
            session.execute(delete(CaptionFailure).where(CaptionFailure.image_id.in_(chunk)))

    def has_captions(self) -> bool:
        with self.session() as s:
            return s.scalar(select(Caption.id).limit(1)) is not None

    def match_captions(self, fts_query: str, limit: int, among=None) -> list[tuple[int, float, str]]:
        """(image id, relevance, best matching caption) for an FTS5 query, most relevant first.

        Relevance is minus FTS5's bm25 (bm25 is lower for better matches); an image with several captions
        counts with its best one. `among`, a sequence of image ids, restricts the images considered.
        """
        # SQLite returns the bare column `text` from the row that gave MIN(rank): the best caption.
        sql = text(
            "SELECT c.image_id, MIN(f.rank) AS best, c.text FROM captions_fts AS f "
            "JOIN captions AS c ON c.id = f.rowid JOIN images AS i ON i.id = c.image_id "
            "WHERE captions_fts MATCH :query AND i.status = :status "
            + ("AND c.image_id IN (SELECT value FROM json_each(:among)) " if among is not None else "")
            + "GROUP BY c.image_id ORDER BY best, c.image_id LIMIT :limit"
        )
        params = {"query": fts_query, "status": INDEXED, "limit": limit}
        if among is not None:
            params["among"] = json.dumps([int(i) for i in among])
        with self.session() as s:
            rows = s.execute(sql, params).all()
        return [(image_id, -float(best), caption) for image_id, best, caption in rows]


def damage_message(e: BaseException) -> str | None:
    """What to tell the user when SQLite reports the store's database as damaged; None for other errors."""
    if isinstance(e, DatabaseError) and any(
        words in str(e) for words in ("malformed", "not a database", "disk I/O error", "file is not")
    ):
        return (
            f"the store's database is damaged ({str(e.orig) if e.orig else e}): restore clipdex.db from a "
            "backup, or index the folders again into a new --store"
        )
    return None


def is_disk_full(e: BaseException) -> bool:
    """Whether an error from SQLite, FAISS or the filesystem means the disk (or quota) is full."""
    message = str(e).lower()
    return getattr(e, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or any(
        words in message for words in ("disk is full", "no space left", "quota exceeded")
    )


@contextmanager
def reporting_full_disk(path: Path) -> Iterator[None]:
    """A full disk while writing the store at `path` becomes one clear StorageFullError."""
    try:
        yield
    except (OperationalError, OSError, RuntimeError) as e:
        if not is_disk_full(e):
            raise
        raise StorageFullError(
            f"the disk holding {path} is full; nothing committed is lost (the last chunk was not written): "
            "free some space and run again to finish"
        ) from None


def indexed_since(indexed_after: datetime | None) -> list:
    """Conditions selecting indexed images, optionally only those (re)indexed after a time."""
    conditions = [Image.status == INDEXED]
    if indexed_after is not None:
        conditions.append(Image.indexed_at > indexed_after)
    return conditions


def index_ids(index: faiss.Index) -> np.ndarray:
    """Every id an IDMap or IVF index holds."""
    if isinstance(index, faiss.IndexIVF):
        lists = index.invlists
        chunks = [
            faiss.rev_swig_ptr(lists.get_ids(i), lists.list_size(i)).copy()
            for i in range(index.nlist)
            if lists.list_size(i)
        ]
        return np.concatenate(chunks) if chunks else np.empty(0, dtype=np.int64)
    return faiss.vector_to_array(index.id_map)


def ivf_lists(count: int) -> int:
    """IVF list count for `count` vectors: 0 (exact) up to EXACT_LIMIT, then about 2 sqrt(count)."""
    return 0 if count <= EXACT_LIMIT else int(2 * math.sqrt(count))


def index_suits(index: faiss.Index) -> bool:
    """Whether an index still fits its size: flat up to EXACT_LIMIT, IVF lists within 2x of what its size calls for."""
    if not isinstance(index, faiss.IndexIVF):
        return index.ntotal <= EXACT_LIMIT
    want = ivf_lists(index.ntotal)
    return want / 2 <= index.nlist <= want * 2


def calibrate_nprobe(index: faiss.IndexIVF, queries: np.ndarray, k: int = 10) -> int:
    """The smallest power-of-two nprobe whose recall@k on `queries` against exhaustive search is RECALL_TARGET.

    Queries are stored vectors, so each one's own id is dropped from both result lists.
    """
    index.nprobe = index.nlist  # every list: exact, as the lists hold full vectors
    _, exact = index.search(queries, k + 1)
    nprobe = 1
    while nprobe < index.nlist:
        index.nprobe = nprobe
        _, found = index.search(queries, k + 1)
        if recall_at(found[:, 1:], exact[:, 1:]) >= RECALL_TARGET:
            break
        nprobe *= 2
    return min(nprobe, index.nlist)


def recall_at(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean fraction of each row of `exact` ids that the same row of `found` holds."""
    hits = sum(len(set(f) & set(e) - {-1}) for f, e in zip(found, exact, strict=True))
    return hits / max(1, int((exact != -1).sum()))


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets a search service read while the indexer writes; NORMAL sync is durable at checkpoints.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")  # deleting an image deletes its captions and tags
    cursor.close()


def _engine(path: Path):
    engine = create_engine(f"sqlite:///{path / DB_FILE}")
    event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def open_store(path: Path, model: str | None = None, dim: int | None = None, create: bool = False) -> Store:
    """Open a store; with create=True make it for `model` and `dim` if it does not exist yet.

    A store built with another model than `model` is refused: its vectors would be garbage for it.
    """
    path = Path(path).expanduser()
    db_file = path / DB_FILE
    if not db_file.exists() or db_file.stat().st_size == 0:  # an empty file (a reader's stray connect) is no store
        if not create:
            raise StoreNotFoundError(f"no clipdex store at {path}; index a folder first (clipdex index DIR)")
        if model is None or dim is None:
            raise ValueError("creating a store needs the model name and its dimension")
        path.mkdir(parents=True, exist_ok=True)
        engine = _engine(path)
        Base.metadata.create_all(engine)
        with Session(engine) as s:
            s.add(Manifest(id=1, format_version=FORMAT_VERSION, model=model, dim=dim, created_at=utcnow()))
            s.commit()
    engine = _engine(path)
    with Session(engine, expire_on_commit=False) as s:
        try:
            # Forward migration for additive changes: tables added since the store was made are created.
            Base.metadata.create_all(engine)
            ensure_caption_fts(engine)
            manifest = s.scalar(select(Manifest))
        except Exception as e:
            raise StoreFormatError(f"{db_file} is not a clipdex store ({e})") from None
    if manifest is None:
        raise StoreFormatError(f"{db_file} has no manifest; it is damaged. Index into a new --store")
    if manifest.format_version > FORMAT_VERSION:
        raise StoreFormatError(
            f"{path} was written by a newer clipdex (format {manifest.format_version}, this one reads up to "
            f"{FORMAT_VERSION}); upgrade clipdex"
        )
    if model is not None and model != manifest.model:
        raise ModelMismatchError(
            f"the store at {path} was built with {manifest.model}, not {model}: their vectors are not "
            f"comparable. Leave out --model to use {manifest.model}, or pass a new --store"
        )
    return Store(path, engine, manifest)


def get_root(session: Session, path: Path) -> Root:
    """The Root row for an absolute folder path, created when new."""
    root = session.scalar(select(Root).where(Root.path == str(path)))
    if root is None:
        root = Root(path=str(path))
        session.add(root)
        session.flush()
    return root
