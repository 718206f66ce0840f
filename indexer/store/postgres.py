"""The PostgreSQL store: the shared tables, vectors in a pgvector column with an HNSW index, captions
searched with PostgreSQL's own text search.

For teams: several indexers (one per folder at a time, through advisory locks) and several services on
one database. Small collections are scanned exactly; from HNSW_MIN vectors a writer builds the HNSW graph
once, and PostgreSQL keeps it in step with every commit after that: nothing to save, catch up or rebuild,
and every reader sees each committed chunk on its next query.

The store uses what the server's pgvector has (Features): half-precision vectors (halfvec, 0.7) and
iterative index scans for filtered searches (0.8). Without iterative scans pgvector filters the graph's
ef_search candidates after the search, so a selective filter can leave fewer than k: such a search widens
ef_search and then scans the matching rows exactly. Small selections are scanned exactly on every server.
"""

import hashlib
import logging
import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
from pgvector import HalfVector
from pgvector.psycopg import register_vector
from pgvector.sqlalchemy import HALFVEC, Vector
from sqlalchemy import (
    Column,
    Integer,
    MetaData,
    Table,
    case,
    create_engine,
    delete,
    func,
    inspect,
    literal,
    literal_column,
    make_url,
    or_,
    select,
    text,
)
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session

from indexer.errors import StoreBusyError, StoreConnectionError, StoreFormatError, StoreNotFoundError, driver_message
from indexer.store.base import (
    READ_CHUNK,
    Store,
    by_pieces_found,
    caption_source,
    check_manifest,
    indexed_since,
    page,
    query_words,
    substring_pieces,
    words_then_pieces,
)
from indexer.store.filters import NO_FILTERS, Filters, filtered, matching_ids
from indexer.store.schema import (
    FORMAT_VERSION,
    INDEXED,
    SEARCHED,
    Base,
    Caption,
    Image,
    Manifest,
    migrate_schema,
    schema_behind,
    utcnow,
)

log = logging.getLogger(__name__)

# Graph search breadth (hnsw.ef_search): at least EF_MIN, and twice the hits asked for; pgvector allows up to
# EF_MAX. EF_MIN and the graph's shape (HNSW_M, HNSW_EF_CONSTRUCTION) are chosen by the recall@10 they buy on
# 1M CLIP-like vectors with text-like queries, the hard case (bench/postgres.py; bench/README.md#postgres).
EF_MIN, EF_MAX = 400, 1000
HNSW_M, HNSW_EF_CONSTRUCTION = 16, 128
# A filter admitting at most this many images is scanned exactly (every admitted vector scored), by whether the
# server has iterative scans. With them the graph search is as fast from about 5,000 (200k vectors, 10 hits: exact
# 48 ms, graph 52 ms; at 20,000 exact 253 ms, graph 36 ms); without them exact scans pay until 20,000.
EXACT_FILTER_LIMIT = {True: 5_000, False: 20_000}
# An iterative index scan (pgvector 0.8) reads graph candidates until k pass the filter; it may read this many
# times the tuples the filter's selectivity predicts (pgvector's default cap, hnsw.max_scan_tuples, is 20,000).
SCAN_MARGIN, SCAN_TUPLES_MIN = 4, 20_000
POLL_SECONDS = 0.2
HNSW = "image_vectors_embedding_hnsw"
# Below this many vectors an exact scan answers in ~10 ms, and every insert into an HNSW graph costs several ms
# on 2 cores: the graph is built once the collection reaches it.
HNSW_MIN = 10_000


@dataclass(frozen=True)
class Features:
    """What the server's pgvector can do, by its version, and whether the database has pg_trgm."""

    version: str
    trigram: bool

    @property
    def release(self) -> tuple[int, ...]:
        return tuple(int(part) for part in self.version.split(".")[:2] if part.isdigit())

    @property
    def halfvec(self) -> bool:  # 2 bytes a dimension instead of 4
        return self.release >= (0, 7)

    @property
    def iterative_scan(self) -> bool:  # filtered graph searches that keep reading until k rows pass
        return self.release >= (0, 8)

    def lacking(self) -> list[str]:
        return [
            what
            for what, has in (
                ("halfvec (0.7: vectors are stored as float32, 2 bytes a dimension more)", self.halfvec),
                ("iterative index scans (0.8: filtered searches may fall back to exact scans)", self.iterative_scan),
                ("pg_trgm (substring search reads every caption and path)", self.trigram),
            )
            if not has
        ]


_told_lacking: set[str] = set()  # servers whose missing features were logged, once per process


def vectors_table(dim: int, half: bool) -> Table:
    return Table(
        "image_vectors",
        MetaData(),
        Column("id", Integer, primary_key=True),  # the image id; the foreign key is in the DDL below
        Column("embedding", HALFVEC(dim) if half else Vector(dim), nullable=False),
    )


def schema_ddl(dim: int, half: bool) -> list[str]:
    """What PostgreSQL holds beyond the shared tables: the vectors, caption text search (the HNSW index comes
    with HNSW_MIN vectors: see save_index)."""
    return [
        "CREATE TABLE IF NOT EXISTS image_vectors (id integer PRIMARY KEY REFERENCES images(id) ON DELETE CASCADE, "
        f"embedding {'halfvec' if half else 'vector'}({dim}) NOT NULL)",
        # Kept in the row, not TOASTed out of line (a 512-d vector is just over the threshold): an exact scan
        # fetched each vector from the TOAST table and took 10 us a vector instead of 1.2 (measured).
        "ALTER TABLE image_vectors ALTER COLUMN embedding SET STORAGE PLAIN",
        "ALTER TABLE captions ADD COLUMN IF NOT EXISTS text_search tsvector "
        "GENERATED ALWAYS AS (to_tsvector('english', text)) STORED",
        "CREATE INDEX IF NOT EXISTS captions_text_search ON captions USING gin (text_search)",
    ]


def lock_key(name: str) -> int:
    """A 64-bit advisory lock key for a name (folder locks are keyed by the folder's path)."""
    return int.from_bytes(hashlib.blake2b(f"clipdex {name}".encode(), digest_size=8).digest(), "big", signed=True)


STORE_KEY, SCHEMA_KEY = lock_key("store"), lock_key("schema")


def driver(conn):
    """The psycopg connection under a SQLAlchemy one, with pgvector's types registered (once per connection)."""
    raw = conn.connection.driver_connection
    if not conn.info.get("vector_types"):
        register_vector(raw)
        conn.info["vector_types"] = True
    return raw


class PostgresStore(Store):
    parallel_writers = True

    def __init__(self, engine, manifest: Manifest, location: str, index_memory: int, features: Features, half: bool):
        super().__init__(engine, manifest, location)
        self.index_memory = index_memory
        self.features = features
        self.half = half  # the vectors are halfvec (else float32 vector): fixed when the store was made
        self.vectors = vectors_table(self.dim, half)
        self._writers: dict[int | None, list] = {}  # lock key (None: the whole store) -> [connection, depth]
        self._writers_guard = threading.Lock()

    # --- writing -----------------------------------------------------------------------------------

    @contextmanager
    def writing(self, root: Path | None, timeout: float) -> Iterator[None]:
        """One writer per folder (several folders are indexed at once); None locks the whole store.

        Session-level advisory locks on a connection of their own: PostgreSQL drops them when the holder's
        connection ends, kill -9 included. A folder writer holds the store key shared, so a whole-store
        writer (captioning every folder) waits for every folder writer, and they for it.
        """
        key = None if root is None else lock_key(f"folder {Path(root)}")
        with self._writers_guard:
            held = self._writers.get(key) or self._writers.get(None)
            if held:
                held[1] += 1
        if not held:
            held = [self.take_locks(key, root, timeout), 1]
            with self._writers_guard:
                self._writers[key] = held
        try:
            yield
        finally:
            with self._writers_guard:
                held[1] -= 1
                if held[1] == 0:
                    self._writers = {k: v for k, v in self._writers.items() if v is not held}
            if held[1] == 0:
                held[0].execute(text("SELECT pg_advisory_unlock_all()"))
                held[0].close()

    def take_locks(self, key: int | None, root: Path | None, timeout: float):
        conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        wanted = [("pg_try_advisory_lock", STORE_KEY)]
        if key is not None:
            wanted = [("pg_try_advisory_lock_shared", STORE_KEY), ("pg_try_advisory_lock", key)]
        what = f"the folder {root}" if root is not None else f"the store {self.location}"
        deadline, said = time.monotonic() + timeout, False
        try:
            while wanted:
                function, lock = wanted[0]
                if conn.scalar(text(f"SELECT {function}(:key)"), {"key": lock}):
                    wanted.pop(0)
                    continue
                if not said:
                    log.warning("%s is being written by another clipdex process; waiting (up to %.0f s)", what, timeout)
                    said = True
                if time.monotonic() >= deadline:
                    raise StoreBusyError(
                        f"{what} is still being written by another clipdex process after {timeout:.0f} s; "
                        "try again when it has finished, or raise CLIPDEX_LOCK_TIMEOUT"
                    )
                time.sleep(POLL_SECONDS)
        except BaseException:
            conn.close()
            raise
        return conn

    def commit_images(self, session: Session, rows: list[Image], vectors: dict[int, np.ndarray]) -> None:
        session.flush()  # assigns ids to new rows
        # A changed file keeps its id: its old vector goes (a skipped file's too), the new one comes in.
        ids = [row.id for row in rows]
        for start in range(0, len(ids), 1000):
            session.execute(delete(self.vectors).where(self.vectors.c.id.in_(ids[start : start + 1000])))
        indexed = [(row.id, vectors[position]) for position, row in enumerate(rows) if row.status in SEARCHED]
        if indexed:
            self.write_vectors(session, np.asarray([i for i, _ in indexed]), np.stack([v for _, v in indexed]))
        session.commit()

    def write_vectors(self, session: Session, ids: np.ndarray, vectors: np.ndarray) -> None:
        """COPY in binary, in the session's transaction (the fastest way into PostgreSQL)."""
        raw = driver(session.connection())
        vectors = np.asarray(vectors, dtype=np.float16 if self.half else np.float32)
        with raw.cursor() as cursor:
            with cursor.copy("COPY image_vectors (id, embedding) FROM STDIN WITH (FORMAT BINARY)") as copy:
                copy.set_types(["integer", "halfvec" if self.half else "vector"])
                for image_id, vector in zip(np.asarray(ids).tolist(), vectors, strict=True):
                    copy.write_row((image_id, HalfVector(vector) if self.half else vector))

    def byte_order(self, column):
        return column.collate("C")  # the database's own collation may sort by language rules

    def insert_rows(self, session: Session, table: str, columns: tuple[str, ...], rows: list[tuple]) -> None:
        raw = driver(session.connection())
        with raw.cursor() as cursor, cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)

    def delete_images(self, ids: list[int]) -> None:
        """Vectors, captions and tags go with their rows (ON DELETE CASCADE)."""
        with self.session() as s:
            ids = list(ids) + self.frame_ids(s, ids)  # stores made before videos lack the cascade from a video
            for start in range(0, len(ids), 1000):
                s.execute(delete(Image).where(Image.id.in_(ids[start : start + 1000])))
            s.commit()

    def has_hnsw(self) -> bool:
        with self.engine.connect() as conn:
            return bool(conn.scalar(text("SELECT to_regclass(:name) IS NOT NULL"), {"name": HNSW}))

    def save_index(self, encode_shards=None) -> None:
        """Build the HNSW graph once the collection reaches HNSW_MIN vectors; PostgreSQL keeps it in step after.

        Built CONCURRENTLY, so indexers of other folders go on committing meanwhile; `index_memory` is the
        build's maintenance_work_mem (a graph that does not fit is built far slower), shared by the server's
        parallel maintenance workers (max_parallel_maintenance_workers, the server's setting).
        """
        if self.has_hnsw() or self.count_vectors() < HNSW_MIN:
            return
        started = time.perf_counter()
        with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": SCHEMA_KEY})  # one builder
            try:
                if conn.scalar(text("SELECT to_regclass(:name) IS NULL"), {"name": HNSW}):
                    conn.execute(text(f"SET maintenance_work_mem = '{max(64, self.index_memory >> 20)}MB'"))
                    conn.execute(
                        text(
                            f"CREATE INDEX CONCURRENTLY {HNSW} ON image_vectors USING hnsw (embedding "
                            f"{'halfvec' if self.half else 'vector'}_cosine_ops) "
                            f"WITH (m = {HNSW_M}, ef_construction = {HNSW_EF_CONSTRUCTION})"
                        )
                    )
                    log.info("built the HNSW index in %.1f s", time.perf_counter() - started)
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": SCHEMA_KEY})

    def index_description(self) -> str:
        kind = f"pgvector {self.features.version}, {'halfvec' if self.half else 'float32'}, cosine"
        if self.has_hnsw():
            return f"HNSW ({kind})"
        return f"exact scan ({kind}; an HNSW index from {HNSW_MIN} images)"

    def finish_copy(self) -> None:
        """Rows copied with their ids: the id sequences continue after the highest one."""
        with self.engine.begin() as conn:
            for table in Base.metadata.sorted_tables:
                if "id" in table.c and table.name != "manifest":
                    conn.execute(
                        text(
                            f"SELECT setval(pg_get_serial_sequence('{table.name}', 'id'), "
                            f"COALESCE((SELECT MAX(id) FROM {table.name}), 0) + 1, false)"
                        )
                    )
            conn.execute(text("ANALYZE"))
        self.save_index()  # loaded without the graph: built once now, not maintained row by row

    # --- vectors and search ------------------------------------------------------------------------

    def vectors_of(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        with self.engine.connect() as conn:
            raw = driver(conn)
            with raw.cursor(binary=True) as cursor:
                cursor.execute("SELECT id, embedding FROM image_vectors WHERE id = ANY(%s)", (ids.tolist(),))
                found = {image_id: vector.to_numpy() for image_id, vector in cursor.fetchall()}
        if not len(ids):
            return np.empty((0, self.dim), np.float32)
        return np.stack([found[i] for i in ids.tolist()]).astype(np.float32, copy=False)

    def iter_vectors(
        self, chunk_size: int = READ_CHUNK, indexed_after: datetime | None = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        query = (
            select(self.vectors.c.id, self.vectors.c.embedding)
            .join(Image, Image.id == self.vectors.c.id)
            .where(*indexed_since(indexed_after))
            .order_by(self.vectors.c.id)
        )
        compiled = query.compile(self.engine)
        with self.engine.connect() as conn:
            raw = driver(conn)
            with raw.cursor(name="clipdex_vectors", binary=True) as cursor:  # server-side: chunk by chunk
                cursor.execute(str(compiled), compiled.params)
                while rows := cursor.fetchmany(chunk_size):
                    ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
                    yield ids, np.stack([r[1].to_numpy() for r in rows]).astype(np.float32, copy=False)

    def search(
        self,
        vector: np.ndarray,
        k: int,
        offset: int = 0,
        filters: Filters = NO_FILTERS,
        exclude: tuple[int, ...] = (),
    ) -> list[tuple[int, float]]:
        want = k + offset + len(exclude)
        query = np.asarray(vector, dtype=np.float32).reshape(-1)
        among = matching_ids(filters, frames=True) if filters.selects_rows else None
        with self.engine.connect() as conn, conn.begin():  # one snapshot; the hnsw settings are set for it alone
            exact, admitted = want > EF_MAX, None
            if among is not None and not exact:
                limit = EXACT_FILTER_LIMIT[self.features.iterative_scan]
                admitted = conn.scalar(select(func.count()).select_from(among.limit(limit + 1).subquery()))
                if admitted == 0:
                    return []
                exact = admitted <= limit
            rows = None if exact else self.graph_search(conn, query, want, filters, admitted)
            if rows is None:
                rows = conn.execute(self.ranked(query, filters, exact=True).limit(want)).all()
        return page(((int(i), 1.0 - float(d)) for i, d in rows), k, offset, filters, exclude)

    def graph_search(self, conn, query: np.ndarray, want: int, filters: Filters, admitted: int | None) -> list | None:
        """HNSW search; None when a filter left fewer than `want` of the candidates (the caller scans exactly).

        With iterative scans (pgvector 0.8) a filtered search reads on through the graph, in strict distance
        order, until `want` rows pass: up to SCAN_MARGIN times the tuples the filter's selectivity predicts
        (`admitted` counts them up to just past EXACT_FILTER_LIMIT, a lower bound on it). Without them it takes the
        widest graph search at once, as the filter drops most of its candidates.
        """
        ef = min(EF_MAX, max(EF_MIN, 2 * want))
        if filters.selects_rows and self.features.iterative_scan:
            # The planner's row count (kept by ANALYZE and autovacuum): a count(*) would cost more than the search.
            rows = conn.scalar(text("SELECT reltuples FROM pg_class WHERE oid = 'image_vectors'::regclass"))
            selectivity = admitted / max(1.0, rows or 0.0, admitted)
            tuples = max(SCAN_TUPLES_MIN, math.ceil(SCAN_MARGIN * want / selectivity))
            conn.execute(text("SELECT set_config('hnsw.iterative_scan', 'strict_order', true)"))
            conn.execute(text("SELECT set_config('hnsw.max_scan_tuples', :n, true)"), {"n": str(tuples)})
        elif filters.selects_rows:
            ef = EF_MAX
        conn.execute(text("SELECT set_config('hnsw.ef_search', :ef, true)"), {"ef": str(ef)})
        rows = conn.execute(self.ranked(query, filters, exact=False).limit(want)).all()
        return rows if len(rows) >= want or not filters.selects_rows else None

    def ranked(self, query: np.ndarray, filters: Filters, exact: bool):
        """SELECT (id, cosine distance) best first; `exact` orders by an expression the index cannot serve.

        Filters join each candidate's image row (by its primary key) rather than test it against the set of all
        matching ids: a graph search then checks the few rows it reads, where `id IN (...)` would first collect
        every match (a tenth of 1M images took 100 ms).
        """
        distance = self.vectors.c.embedding.cosine_distance(query)
        ranked = select(self.vectors.c.id, distance).order_by(distance + 0 if exact else distance)
        if not filters.selects_rows:
            return ranked
        return filtered(ranked.join(Image, Image.id == self.vectors.c.id), filters, frames=True)

    def match_captions(
        self, query: str, limit: int, filters: Filters = NO_FILTERS, source: str = "caption"
    ) -> list[tuple[int, float, str]]:
        """PostgreSQL text search (english stemming): any of the query's words; relevance is ts_rank_cd. Then the
        substring matches (ILIKE, served by pg_trgm's index)."""
        words = query_words(query)
        if not words:
            return []
        by_words = self.match_caption_words(query, words, limit, filters, source)
        pieces = substring_pieces(query)
        if not pieces or len(by_words) >= limit:
            return by_words
        found = pieces_found(Caption.text, pieces).label("found")
        best = (
            select(Caption.image_id, found, Caption.text)
            .join(Image, Image.id == Caption.image_id)
            .where(holds_any(Caption.text, pieces), Image.status.in_(SEARCHED), caption_source(source))
            .distinct(Caption.image_id)
            .order_by(Caption.image_id, found.desc(), Caption.id)
        )
        if filters.selects_rows:
            best = best.where(Caption.image_id.in_(matching_ids(filters, frames=True)))
        best = best.subquery()
        ranked = select(best).order_by(best.c.found.desc(), best.c.image_id).limit(2 * limit)
        with self.engine.connect() as conn:
            return words_then_pieces(by_words, conn.execute(ranked).all(), limit)

    def match_names(self, query: str, limit: int, filters: Filters = NO_FILTERS) -> list[tuple[int, float, str]]:
        pieces = substring_pieces(query)
        if not pieces:
            return []
        found = pieces_found(Image.relpath, pieces)
        ranked = (
            select(Image.id, found, Image.relpath)
            .where(holds_any(Image.relpath, pieces), Image.status == INDEXED)
            .order_by(found.desc(), Image.id)
            .limit(limit)
        )
        if filters.selects_rows:
            ranked = ranked.where(Image.id.in_(matching_ids(filters)))
        with self.engine.connect() as conn:
            return by_pieces_found(conn.execute(ranked).all(), pieces)

    def match_caption_words(
        self, query: str, words: list[str], limit: int, filters: Filters, source: str
    ) -> list[tuple[int, float, str]]:
        # PostgreSQL's parser keeps "42.50" or "e-mail" whole in a document: the query's whitespace-separated
        # pieces are tried whole too, besides their words.
        pieces = list(dict.fromkeys([*query.lower().split(), *words]))
        tsquery = func.plainto_tsquery("english", pieces[0])
        for piece in pieces[1:]:
            tsquery = tsquery.op("||")(func.plainto_tsquery("english", piece))  # || of tsqueries is OR
        document = literal_column("captions.text_search")
        relevance = func.ts_rank_cd(document, tsquery)
        best = (
            select(Caption.image_id, relevance.label("relevance"), Caption.text)
            .join(Image, Image.id == Caption.image_id)
            .where(document.op("@@")(tsquery), Image.status.in_(SEARCHED), caption_source(source))
            .distinct(Caption.image_id)
            .order_by(Caption.image_id, relevance.desc(), Caption.id)
        )
        if filters.selects_rows:
            best = best.where(Caption.image_id.in_(matching_ids(filters, frames=True)))
        best = best.subquery()
        ranked = select(best).order_by(best.c.relevance.desc(), best.c.image_id).limit(limit)
        with self.engine.connect() as conn:
            return [(image_id, float(score), caption) for image_id, score, caption in conn.execute(ranked)]


def holds_any(column, pieces: list[str]):
    """`column` holds one of the pieces, case folded: ILIKE, which pg_trgm's GIN index serves."""
    escaped = (piece.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") for piece in pieces)
    return or_(*(column.ilike(f"%{piece}%") for piece in escaped))


def pieces_found(column, pieces: list[str]):
    """How many of the (lower-cased) pieces `column` holds."""
    return sum((case((func.strpos(func.lower(column), piece) > 0, 1), else_=0) for piece in pieces), literal(0))


def open_postgres(
    location: str, model: str | None = None, dim: int | None = None, create: bool = False, index_memory: int = 2**30
) -> PostgresStore:
    """Open the store in a PostgreSQL database; with create=True make its tables for `model` and `dim` if the
    database has none yet (the pgvector extension is created when missing)."""
    url = make_url(location)
    if url.drivername in ("postgresql", "postgres"):  # plain postgresql:// means psycopg 3, the driver clipdex installs
        url = url.set(drivername="postgresql+psycopg")
    shown = url.render_as_string(hide_password=True)
    engine = create_engine(url, pool_pre_ping=True, connect_args={"connect_timeout": 10, "application_name": "clipdex"})
    try:
        with engine.begin() as conn:
            if create:
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_KEY})  # one creator
            if not inspect(conn).has_table(Manifest.__tablename__):
                if not create:
                    raise StoreNotFoundError(
                        f"no clipdex store in the database {shown}; index a folder into it first (clipdex index DIR)"
                    )
                if model is None or dim is None:
                    raise ValueError("creating a store needs the model name and its dimension")
                create_schema(conn, model, dim, shown)
            elif schema_behind(conn):
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_KEY})
                migrate_schema(conn)
            if conn.scalar(text("SELECT to_regclass(:name) IS NULL"), {"name": TRIGRAM_INDEXES[-1][0]}):
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_KEY})
                create_trigram_indexes(conn)
            if conn.scalar(text("SELECT to_regclass(:name) IS NULL"), {"name": BYTE_ORDER_INDEX}):
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_KEY})
                conn.execute(
                    text(f'CREATE INDEX IF NOT EXISTS {BYTE_ORDER_INDEX} ON images (root_id, relpath COLLATE "C")')
                )
    except OperationalError as e:
        raise StoreConnectionError(
            f"cannot connect to the PostgreSQL store {shown}: {driver_message(e)}. Check that the server is running "
            "and that the host, port, database, user and password in the URL are right"
        ) from None
    with Session(engine, expire_on_commit=False) as s:
        manifest = s.scalar(select(Manifest))
    if manifest is None:
        raise StoreFormatError(f"the database {shown} has clipdex tables but no manifest; index into a new database")
    check_manifest(manifest, model, shown)
    with engine.connect() as conn:
        features = server_features(conn)
        column = conn.scalar(
            text(
                "SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
                "WHERE attrelid = 'image_vectors'::regclass AND attname = 'embedding'"
            )
        )
    lacking = features.lacking()
    if lacking and shown not in _told_lacking:
        _told_lacking.add(shown)
        log.warning("the PostgreSQL store's pgvector %s lacks %s", features.version, "; ".join(lacking))
    return PostgresStore(engine, manifest, shown, index_memory, features, half=column.startswith("halfvec"))


def server_features(conn) -> Features:
    versions = dict(conn.execute(text("SELECT extname, extversion FROM pg_extension")).all())
    return Features(versions["vector"], trigram="pg_trgm" in versions)


# Substring search (base.substring_pieces) through pg_trgm's GIN indexes: ILIKE '%piece%' reads only the rows that
# hold the piece's trigrams. Made with a new store, or on the first open of an older one.
TRIGRAM_INDEXES = (("captions_text_trigram", "captions", "text"), ("images_relpath_trigram", "images", "relpath"))


# The scan reads a root's paths in byte order (byte_order), the Ray runner's listing tasks a range of them each: an
# index in that order serves both whatever the database's collation. Made with a new store, or on the first open of
# an older one.
BYTE_ORDER_INDEX = "images_relpath_bytes"


def create_trigram_indexes(conn) -> None:
    """pg_trgm (a trusted extension: the database's owner may create it) and its indexes; without it, substring
    search reads every row (Features says so)."""
    try:
        with conn.begin_nested():
            conn.execute(text("CREATE EXTENSION IF NOT EXISTS pg_trgm"))
    except DBAPIError:
        return
    for name, table, column in TRIGRAM_INDEXES:
        conn.execute(text(f"CREATE INDEX IF NOT EXISTS {name} ON {table} USING gin ({column} gin_trgm_ops)"))


def create_schema(conn, model: str, dim: int, shown: str) -> None:
    try:
        with conn.begin_nested():
            conn.execute(text("CREATE EXTENSION IF NOT EXISTS vector"))
    except DBAPIError as e:
        raise StoreFormatError(
            f"the database {shown} lacks the pgvector extension ({driver_message(e)}): install pgvector on the "
            "server and run CREATE EXTENSION vector in this database as a superuser, then try again"
        ) from None
    Base.metadata.create_all(conn)
    for statement in schema_ddl(dim, server_features(conn).halfvec):
        conn.execute(text(statement))
    create_trigram_indexes(conn)
    conn.execute(
        Manifest.__table__.insert().values(
            id=1, format_version=FORMAT_VERSION, model=model, dim=dim, created_at=utcnow(), data_version=0
        )
    )
