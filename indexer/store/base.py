"""The store interface every backend implements, and the row reads they share (plain SQLAlchemy).

The engine, the pipeline, tagging, captioning and the API use only what is here, plus `session()` for the
shared tables (schema.py). A backend keeps the vectors where it searches them and implements the abstract
operations: write and read vectors, search with filters, match caption text, bulk inserts, the writer lock.
"""

import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager
from datetime import datetime
from pathlib import Path
from typing import NamedTuple

import numpy as np
from sqlalchemy import and_, delete, func, select
from sqlalchemy.orm import Session

from indexer.errors import ModelMismatchError, StoreFormatError
from indexer.store.filters import NO_FILTERS, Filters, matching_ids
from indexer.store.schema import (
    FORMAT_VERSION,
    FRAGMENT,
    FRAME,
    INDEXED,
    METADATA_TEXT,
    READ_TEXT,
    SEARCHED,
    SKIPPED,
    Caption,
    CaptionFailure,
    Image,
    Keyword,
    Manifest,
    MetadataRead,
    Root,
    TextLine,
)

READ_CHUNK = 10_000


class HitRow(NamedTuple):
    path: str
    caption: str | None
    taken_at: datetime | None
    timestamp_ms: int | None  # a video's first kept frame
    duration_ms: int | None  # a video's length


def join_path(root: str, relpath: str) -> str:
    """An item's absolute path, or its URL under a web root ("https://host": pathlib would make it https:/host)."""
    return f"{root.rstrip('/')}/{relpath}" if "://" in root else str(Path(root) / relpath)


class Store(ABC):
    """An open store: its rows through SQLAlchemy, its vectors and their search through the backend."""

    local_dir: Path | None = None  # a directory of the store's own (thumbnails are cached there), if it has one
    serving = False  # a service sets it: a derived index may prove itself after the first answers; re-ranks read rows

    # Whether several processes may commit chunks of one run at once (each in its own transaction): the Ray
    # runner then has its workers write; otherwise the driver takes their shards in, one at a time.
    parallel_writers = False

    def __init__(self, engine, manifest: Manifest, location: str):
        self.engine = engine
        self.model = manifest.model
        self.dim = manifest.dim
        self.location = location  # what users passed, shown in stats and messages (never a password)

    def session(self) -> Session:
        return Session(self.engine, expire_on_commit=False)

    # --- writing -----------------------------------------------------------------------------------

    @abstractmethod
    def writing(self, root: Path | None, timeout: float) -> AbstractContextManager[None]:
        """Hold the writer lock for the block: for folder `root`, or for the whole store when None.

        Waits up to `timeout` seconds for another writer, saying so, then raises StoreBusyError. A killed
        holder never leaves it locked. Re-entrant within a process.
        """

    @abstractmethod
    def commit_images(self, session: Session, rows: list[Image], vectors: dict[int, np.ndarray]) -> None:
        """Commit rows added or changed in `session` with the vectors of the indexed ones (by position in
        `rows`), atomically: a crash leaves either the whole chunk or none of it."""

    @abstractmethod
    def write_vectors(self, session: Session, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Store vectors of rows flushed in `session`, made durable with its commit (not before)."""

    @abstractmethod
    def delete_images(self, ids: list[int]) -> None:
        """Delete rows, their vectors, captions and tags, and the frames of the videos among them, in one
        transaction."""

    def frame_ids(self, session: Session, video_ids: list[int]) -> list[int]:
        """The ids of the kept frames of these videos (delete_images deletes them with their video)."""
        found = []
        for start in range(0, len(video_ids), 500):
            chunk = video_ids[start : start + 500]
            found += session.scalars(select(Image.id).where(Image.video_id.in_(chunk), Image.status == FRAME))
        return found

    def byte_order(self, column):
        """`column` to ORDER BY in byte order, the order of Python's strings (SQLite's BINARY collation is)."""
        return column

    @abstractmethod
    def insert_rows(self, session: Session, table: str, columns: tuple[str, ...], rows: list[tuple]) -> None:
        """Insert many plain tuples into a table in the session's transaction, the backend's fastest way."""

    def delete_captions(self, session: Session, ids: list[int]) -> None:
        """Forget the captions, caption failures, read text and metadata of images whose content changed (in the
        caller's transaction)."""
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            for table in (Caption, CaptionFailure, TextLine, Keyword, MetadataRead):
                session.execute(delete(table).where(table.image_id.in_(chunk)))

    # The search index: a backend whose index is derived from the rows (the embedded FAISS file) saves it
    # here; one whose database keeps its index in step (pgvector's HNSW) has nothing to do.

    def wants_probes(self) -> bool:
        """Whether the index needs text-like calibration queries (save_probes) before it is next saved."""
        return False

    def save_probes(self, probes: np.ndarray) -> None:  # noqa: B027 - a no-op unless the backend derives its index
        """Keep text-like calibration queries (the model's embeddings of plain phrases) with the store."""

    def save_if_due(self) -> None:  # noqa: B027 - a no-op unless the backend derives its index
        """Save the search index when a long run has added enough since the last save."""

    def save_index(self, encode_shards=None) -> None:  # noqa: B027 - a no-op unless the backend derives its index
        """Bring the search index in step and save it; a writer calls it at the end of a run. `encode_shards`
        (ondisk.Encode) encodes an on-disk generation's shards elsewhere, on a Ray cluster (runners/ray_index_build)."""

    def warm(self) -> None:  # noqa: B027 - a no-op unless the backend derives its index
        """Open the search index now, not on the first query (a service calls it at start)."""

    @abstractmethod
    def finish_copy(self) -> None:
        """After `clipdex store copy` wrote rows with their source ids: make the store ready for use."""

    @abstractmethod
    def index_description(self) -> str:
        """The search index and how it is searched, for summaries."""

    # --- vectors and search ------------------------------------------------------------------------

    @abstractmethod
    def vectors_of(self, ids: np.ndarray) -> np.ndarray:
        """The stored vectors of indexed images, in the order of `ids` (float32)."""

    @abstractmethod
    def iter_vectors(
        self, chunk_size: int = READ_CHUNK, indexed_after: datetime | None = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids, vectors) of indexed images in id order and chunks, optionally only those indexed after a time."""

    @abstractmethod
    def search(
        self,
        vector: np.ndarray,
        k: int,
        offset: int = 0,
        filters: Filters = NO_FILTERS,
        exclude: tuple[int, ...] = (),
    ) -> list[tuple[int, float]]:
        """(id, cosine) of the best stored vectors for a unit vector, best first, after skipping `offset`.

        Row filters are part of the search: k hits come back whenever k images match, however few do;
        min_score cuts the ranked list. `exclude` leaves ids out (the query images themselves).
        """

    @abstractmethod
    def match_captions(
        self, query: str, limit: int, filters: Filters = NO_FILTERS, source: str = "caption"
    ) -> list[tuple[int, float, str]]:
        """(image id, relevance, best matching caption) of images whose captions share words with `query`,
        most relevant first (relevance: higher is better, in the backend's own full-text scoring), then those
        whose captions only hold one of its pieces inside a longer word or number (relevance 0; see
        substring_pieces): "harb" finds "harbour", "42.5" finds "TOTAL 42.50".

        `source`: "caption" for written captions, "text" for the text read in the images (READ_TEXT), "keyword"
        for the title, description and keywords of their metadata (METADATA_TEXT)."""

    @abstractmethod
    def match_names(self, query: str, limit: int, filters: Filters = NO_FILTERS) -> list[tuple[int, float, str]]:
        """(image id, share of the query's pieces found, path within its folder) of the indexed images whose file
        or folder names hold pieces of `query` (substring_pieces), those holding the most first, then by id."""

    def vector(self, image_id: int) -> np.ndarray | None:
        """The stored vector of an indexed image or a video's frame (None for another id)."""
        with self.engine.connect() as conn:
            found = conn.scalar(select(Image.id).where(Image.id == image_id, Image.status.in_(SEARCHED)))
        return None if found is None else self.vectors_of(np.asarray([image_id]))[0]

    def frames(self, video_id: int) -> list[tuple[int, int]]:
        """(row id, timestamp in ms) of a video's kept frames after its first (the video's own row), in time order."""
        with self.engine.connect() as conn:
            query = select(Image.id, Image.timestamp_ms).where(Image.video_id == video_id, Image.status == FRAME)
            return [(i, ms) for i, ms in conn.execute(query.order_by(Image.timestamp_ms))]

    def moments(self, ids: list[int]) -> dict[int, tuple[int, int]]:
        """{row id: (its video's id, timestamp in ms)} for the ids that are videos or their frames."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(Image.id, func.coalesce(Image.video_id, Image.id), Image.timestamp_ms).where(
                    Image.id.in_(ids), Image.timestamp_ms.is_not(None)
                )
            )
            return {i: (video, ms) for i, video, ms in rows}

    def count_videos(self) -> int:
        """How many indexed items are videos (a video's row has the time of its first kept frame)."""
        with self.engine.connect() as conn:
            query = select(func.count()).select_from(Image)
            return conn.scalar(query.where(Image.status == INDEXED, Image.timestamp_ms.is_not(None)))

    def has_frames(self) -> bool:
        """Whether any video has kept frames besides its first: searches then answer by video."""
        with self.engine.connect() as conn:
            return conn.scalar(select(Image.id).where(Image.status == FRAME).limit(1)) is not None

    def count_vectors(self, indexed_after: datetime | None = None) -> int:
        """How many vectors `iter_vectors` would yield."""
        with self.engine.connect() as conn:
            return conn.scalar(select(func.count()).select_from(Image).where(*indexed_since(indexed_after)))

    def sample_vectors(self, size: int, seed: int = 0) -> tuple[np.ndarray, int]:
        """Up to `size` stored vectors drawn at random (all of them in a smaller store), and how many the store
        holds. Every id is not read: ids are mostly dense, so random ids between the lowest and highest are drawn
        and the indexed ones kept (a few rounds at most)."""
        with self.engine.connect() as conn:
            low, high, count = conn.execute(
                select(func.min(Image.id), func.max(Image.id), func.count()).where(Image.status == INDEXED)
            ).one()
            if count <= size:
                ids = self.matching_ids(NO_FILTERS)
                return (self.vectors_of(ids) if len(ids) else np.zeros((0, self.dim), dtype=np.float32)), count
            rng, found = np.random.default_rng(seed), set()
            for _ in range(8):
                candidates = np.unique(rng.integers(low, high + 1, 2 * size)).tolist()
                found.update(conn.scalars(select(Image.id).where(Image.id.in_(candidates), Image.status == INDEXED)))
                if len(found) >= size:
                    break
        ids = rng.permutation(np.fromiter(found, dtype=np.int64))[:size]
        return self.vectors_of(np.sort(ids)), count

    def matching_ids(self, filters: Filters, frames: bool = False) -> np.ndarray:
        """Ids of indexed images that meet the row filters (with `frames`, and of the videos' kept frames)."""
        with self.engine.connect() as conn:
            return np.fromiter(conn.scalars(matching_ids(filters, frames)), dtype=np.int64)

    # --- rows --------------------------------------------------------------------------------------

    def image(self, image_id: int) -> Image | None:
        with self.session() as s:
            return s.get(Image, image_id)

    def paths(self, ids: list[int]) -> dict[int, str]:
        """Absolute paths of the given image ids."""
        with self.session() as s:
            rows = s.execute(select(Image.id, Root.path, Image.relpath).join(Root).where(Image.id.in_(ids))).all()
        return {i: join_path(root, rel) for i, root, rel in rows}

    def pictures(self, ids: list[int]) -> dict[int, tuple[str, float | None]]:
        """Where each row's picture is: (absolute path, None) for a still; a video's file and the second of the
        frame for a video or a frame of one."""
        with self.session() as s:
            rows = s.execute(
                select(Image.id, Root.path, Image.relpath, Image.video_id, Image.timestamp_ms)
                .join(Root)
                .where(Image.id.in_(ids))
            ).all()
        return {
            i: (join_path(root, rel.rpartition(FRAGMENT)[0] if video else rel), None if ms is None else ms / 1000)
            for i, root, rel, video, ms in rows
        }

    def relpaths(self, ids: list[int]) -> dict[int, str]:
        """Paths of the given image ids within their indexed folders."""
        with self.session() as s:
            return dict(s.execute(select(Image.id, Image.relpath).where(Image.id.in_(ids))).all())

    def hit_rows(self, ids: list[int]) -> dict[int, HitRow]:
        """(absolute path, newest caption or None, capture time, a video's first kept frame and length in ms) of
        the given image ids: one query for a page."""
        query = select(
            Image.id, Root.path, Image.relpath, newest_caption(), Image.taken_at, Image.timestamp_ms, Image.duration_ms
        ).join(Root)
        with self.engine.connect() as conn:
            return {
                i: HitRow(join_path(root, rel), caption, taken, at, length)
                for i, root, rel, caption, taken, at, length in conn.execute(query.where(Image.id.in_(ids)))
            }

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

    def text_sources(self) -> set[str]:
        """The sources of text (caption_source: "caption", "text", "keyword") that some image has: one query, asked
        by every hybrid search (three queries took ~1 ms a search)."""
        sources = ("caption", *TEXT_SOURCES)
        checks = [select(Caption.id).where(caption_source(source)).exists() for source in sources]
        with self.engine.connect() as conn:
            present = conn.execute(select(*checks)).one()
        return {source for source, has in zip(sources, present, strict=True) if has}


def newest_caption():
    """The newest written caption of the query's image row, as a correlated scalar subquery (None without one)."""
    return (
        select(Caption.text)
        .where(Caption.image_id == Image.id, caption_source("caption"))
        .order_by(Caption.created_at.desc(), Caption.id.desc())
        .limit(1)
        .scalar_subquery()
    )


def check_manifest(manifest: Manifest, model: str | None, location: str) -> None:
    """A store written by a newer clipdex is refused, and so is one built with another model than `model`:
    its vectors would be garbage for it."""
    if manifest.format_version > FORMAT_VERSION:
        raise StoreFormatError(
            f"{location} was written by a newer clipdex (format {manifest.format_version}, this one reads up to "
            f"{FORMAT_VERSION}); upgrade clipdex"
        )
    if model is not None and model != manifest.model:
        raise ModelMismatchError(
            f"the store {location} was built with {manifest.model}, not {model}: their vectors are not "
            f"comparable. Leave out --model to use {manifest.model}, or pass a new --store"
        )


def page(
    ranked: Iterable[tuple[int, float]], k: int, offset: int, filters: Filters, exclude: tuple[int, ...]
) -> list[tuple[int, float]]:
    """The page a search returns from its (id, score) ranking, best first: `exclude` left out, `offset` hits
    skipped, k kept, then cut at min_score (exact, since the ranking is sorted)."""
    hits = [(i, score) for i, score in ranked if i not in exclude][offset : offset + k]
    return hits if filters.min_score is None else [(i, score) for i, score in hits if score >= filters.min_score]


def indexed_since(indexed_after: datetime | None) -> list:
    """Conditions selecting indexed images, optionally only those (re)indexed after a time."""
    conditions = [Image.status == INDEXED]
    if indexed_after is not None:
        conditions.append(Image.indexed_at > indexed_after)
    return conditions


# The kinds of stored text (rows of captions) other than written captions, by their model's prefix.
TEXT_SOURCES = {"text": READ_TEXT, "keyword": METADATA_TEXT}


def caption_source(source: str, model=Caption.model):
    """SQL condition on a caption's model column: written captions ("caption"), text read in the images ("text"),
    or the title, description and keywords of their metadata ("keyword")."""
    if source in TEXT_SOURCES:
        return model.startswith(TEXT_SOURCES[source], autoescape=True)
    return and_(*(~model.startswith(prefix, autoescape=True) for prefix in TEXT_SOURCES.values()))


def query_words(text: str) -> list[str]:
    """The words of a free-text caption query, lower-cased: what each backend's full-text search matches."""
    return re.findall(r"\w+", text.lower())


def substring_pieces(text: str) -> list[str]:
    """The pieces of a query that substring search looks for: its whitespace-separated parts, lower-cased, of
    at least 3 characters (the backends' trigram indexes match nothing shorter), once each."""
    return list(dict.fromkeys(piece for piece in text.lower().split() if len(piece) >= SUBSTRING_MIN))


SUBSTRING_MIN = 3


def by_pieces_found(rows: Iterable[tuple[int, int, str]], pieces: list[str]) -> list[tuple[int, float, str]]:
    """(id, pieces found, text) rows as match_names returns them: the share of the pieces as the score."""
    return [(image_id, found / len(pieces), text) for image_id, found, text in rows]


def words_then_pieces(
    by_words: list[tuple[int, float, str]], by_pieces: list[tuple[int, int, str]], limit: int
) -> list[tuple[int, float, str]]:
    """Word matches first, then the images only a substring of the query found (relevance 0), `limit` in all."""
    known = {image_id for image_id, _, _ in by_words}
    extra = [(image_id, 0.0, text) for image_id, _, text in by_pieces if image_id not in known]
    return (by_words + extra)[:limit]
