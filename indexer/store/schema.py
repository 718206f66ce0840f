"""The tables every store backend shares (SQLAlchemy), and the constants and helpers that go with them.

Vectors are not in these tables: each backend keeps them where it searches them (the embedded store in a
float16 file beside the database).
"""

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import (
    JSON,
    BigInteger,
    Connection,
    DateTime,
    ForeignKey,
    Index,
    Inspector,
    LargeBinary,
    String,
    Table,
    UniqueConstraint,
    inspect,
    select,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

# Format 2: vectors moved from SQLite blobs to the float16 vector file; format 1 stores are migrated on open.
FORMAT_VERSION = 2
INDEXED, SKIPPED = "indexed", "skipped"
# A kept frame of a video (indexer/video.py): a row with a vector that searches find, answered as a moment of its
# video (the row it points to, which is the item). Everything that lists items (timeline, counts, duplicates,
# clusters, tags) sees only INDEXED rows; searches see both.
FRAME = "frame"
SEARCHED = (INDEXED, FRAME)


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
    # The timeline (search/browse.py) walks this index: indexed images with a capture time in its order, those
    # without (taken_at NULL) in file-time order. status leads, or SQLite sorts what the status index finds.
    __table_args__ = (
        UniqueConstraint("root_id", "relpath"),
        Index("ix_images_timeline", "status", "taken_at", "mtime_ns"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)  # also the FAISS id and the row of the vector file
    # No index of its own: the unique (root_id, relpath) index serves look-ups by root.
    root_id: Mapped[int] = mapped_column(ForeignKey("roots.id"))
    relpath: Mapped[str]
    # 64-bit in PostgreSQL (files over 2 GB, nanosecond times); SQLite integers are 64-bit whatever the name.
    size: Mapped[int] = mapped_column(BigInteger)
    mtime_ns: Mapped[int] = mapped_column(BigInteger)
    hash: Mapped[str | None] = mapped_column(String(32), index=True)
    # The perceptual hash of the decoded picture (imagehash's 64-bit pHash, hex), for "same picture" duplicates.
    # NULL for images indexed before clipdex computed it: they are not candidates until re-indexed.
    phash: Mapped[str | None] = mapped_column(String(16))
    width: Mapped[int | None]
    height: Mapped[int | None]
    format: Mapped[str | None]
    taken_at: Mapped[datetime | None] = mapped_column(DateTime)
    status: Mapped[str] = mapped_column(String(8), index=True)
    skip_reason: Mapped[str | None]
    indexed_at: Mapped[datetime] = mapped_column(DateTime)
    # The data version of the commit that last wrote this row's vector or status: an index saved at version V
    # catches up by the rows above V (and the removals above V) instead of being rebuilt.
    vector_version: Mapped[int] = mapped_column(default=0, index=True)
    # Videos. The video's own row is the item: its vector is its first kept frame's, its format names the container
    # and codec. Each later kept frame is a FRAME row pointing to it, at "<video path>#t=<seconds>" (a W3C media
    # fragment, so the path is unique and says where to play from), with the video's folder, dates and size.
    video_id: Mapped[int | None] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True)
    timestamp_ms: Mapped[int | None] = mapped_column(BigInteger)  # the moment a row shows (a video: its first frame)
    duration_ms: Mapped[int | None] = mapped_column(BigInteger)  # a video's length, where its container says
    # A Live Photo's movie (same name as the still, beside it): the still is the item, the movie plays in its view.
    motion_relpath: Mapped[str | None]


class RemovedVector(Base):
    """An image deleted at a data version: an index saved before it must drop the id. Pruned once no saved
    index is older."""

    __tablename__ = "removed_vectors"
    id: Mapped[int] = mapped_column(primary_key=True)  # the image id
    data_version: Mapped[int] = mapped_column(index=True)


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


# Text read in images (OCR) is stored as captions of a reader whose name starts with this: searchable with the
# same full-text index, replaced and forgotten with them; `source="text"` searches it, "caption" the rest.
READ_TEXT = "ocr:"
# The title, description and keywords other programs wrote into an image's XMP or IPTC, or its sidecars, as one
# searchable caption of this model (indexer/enrich/keywords.py); `source="keyword"` searches it.
METADATA_TEXT = "xmp:metadata"


class TextLine(Base):
    """A line of text read in an image (OCR), with where it sits (four corners as fractions of the image's width
    and height, as displayed) and the reader's confidence; the image's whole text is also a caption
    (indexer/enrich/ocr.py)."""

    __tablename__ = "text_lines"
    id: Mapped[int] = mapped_column(primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True)
    model: Mapped[str]
    text: Mapped[str]
    confidence: Mapped[float]
    box: Mapped[list] = mapped_column(JSON)  # [[x, y] x 4], 0-1, clockwise from the top left


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


class Keyword(Base):
    """A keyword another program gave an image (XMP dc:subject, the last level of lr:hierarchicalSubject, IPTC
    Keywords), for the keyword filter."""

    __tablename__ = "keywords"
    __table_args__ = (UniqueConstraint("image_id", "keyword"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    keyword: Mapped[str]
    folded: Mapped[str] = mapped_column(index=True)  # lower-cased, what the filter compares


class MetadataRead(Base):
    """An image whose metadata was read, what it held besides keywords, and the stamp of its sidecars then (their
    names, sizes and modification times): a changed sidecar is read again without re-embedding the image."""

    __tablename__ = "metadata_reads"
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), primary_key=True)
    sidecars: Mapped[str]
    title: Mapped[str | None]
    description: Mapped[str | None]


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


class TextModel(Base):
    """A text encoder other than the store model's own, measured to share its space (indexer/models/paired_text.py)."""

    __tablename__ = "text_models"
    name: Mapped[str] = mapped_column(String, primary_key=True)
    agreement: Mapped[float]  # mean cosine with the store model's text vectors on the probe sentences
    checked_at: Mapped[datetime] = mapped_column(DateTime)


class TrashedFile(Base):
    """A file clipdex moved into its root's trash folder (indexer/trash.py), so it can be moved back."""

    __tablename__ = "trashed_files"
    id: Mapped[int] = mapped_column(primary_key=True)
    root_id: Mapped[int] = mapped_column(ForeignKey("roots.id"))
    relpath: Mapped[str]  # where it was, relative to its root
    trash_relpath: Mapped[str]  # where it is now, relative to its root
    size: Mapped[int] = mapped_column(BigInteger)
    moved_at: Mapped[datetime] = mapped_column(DateTime)


def schema_behind(conn: Connection) -> bool:
    """True when the database lacks a table, a column or an index of the shared tables (a store made by an older
    clipdex)."""
    inspector = inspect(conn)
    present = set(inspector.get_table_names())
    return any(
        table.name not in present
        or set(table.columns.keys()) - {c["name"] for c in inspector.get_columns(table.name)}
        or missing_indexes(inspector, table)
        for table in Base.metadata.sorted_tables
    )


def missing_indexes(inspector: Inspector, table: Table) -> list[Index]:
    """The declared indexes of a table the database lacks."""
    present = {index["name"] for index in inspector.get_indexes(table.name)}
    return [index for index in table.indexes if index.name not in present]


def migrate_schema(conn: Connection) -> None:
    """Forward migration for additive changes: the tables, columns and indexes added since the store was made are
    created. A new column is nullable or has a constant default (which the rows there already get).
    Callers serialise it (PostgreSQL: an advisory lock) or accept the race of two first opens."""
    Base.metadata.create_all(conn)
    inspector = inspect(conn)
    for table in Base.metadata.sorted_tables:
        present = {c["name"] for c in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name not in present:
                definition = f"{column.name} {column.type.compile(conn.dialect)}"
                if column.default is not None:
                    definition += f" NOT NULL DEFAULT {column.default.arg!r}"
                conn.execute(text(f"ALTER TABLE {table.name} ADD COLUMN {definition}"))
        for index in missing_indexes(inspector, table):
            index.create(conn, checkfirst=True)


@dataclass
class Moment:
    """A kept frame of a video that a search found: the second it shows, its score, and its row id (for `similar`)."""

    id: int
    timestamp_s: float
    score: float


@dataclass
class Hit:
    """One search result: a stored image, its score and its caption when it has one.

    The score is the cosine similarity in embedding search, the full-text relevance in caption search (higher
    is better: minus FTS5's bm25, or PostgreSQL's ts_rank_cd), and the reciprocal-rank-fusion score in hybrid.
    """

    id: int
    path: str
    score: float
    caption: str | None = None
    taken_at: datetime | None = None
    relevance: float | None = None  # with a relevance cut-off: spreads above the query's baseline (search/relevance.py)
    # A video: the second to play from (its best matching moment, else its first kept frame), its length, and
    # every moment a search found, best first.
    timestamp_s: float | None = None
    duration_s: float | None = None
    moments: list[Moment] | None = None


FRAGMENT = "#t="  # a frame row's path is its video's with the second it shows: "clip.mp4#t=42.000"


def frame_relpath(video_relpath: str, timestamp_ms: int) -> str:
    return f"{video_relpath}{FRAGMENT}{timestamp_ms / 1000:.3f}"


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def get_root(session: Session, path: Path) -> Root:
    """The Root row for an absolute folder path, created when new."""
    root = session.scalar(select(Root).where(Root.path == str(path)))
    if root is None:
        root = Root(path=str(path))
        session.add(root)
        session.flush()
    return root
