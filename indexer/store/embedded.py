"""The embedded store: one directory with a SQLite database, a float16 vector file and a FAISS index.

SQLite holds the rows, the vector file (vectors.py) the full vectors, and the FAISS index (ann.py) is
derived from both: saved with the data version it reflects, it catches up on open with the rows written
since (every row carries the version that last wrote its vector) instead of being rebuilt. It is rebuilt
only when it is missing or damaged, or when the collection has outgrown it (ann.outgrown), and then by the
writer, with searches answered from the old file until the new one is renamed into place.
"""

import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import faiss
import numpy as np
from sqlalchemy import String, create_engine, delete, event, func, insert, literal_column, select, text, update
from sqlalchemy.dialects import sqlite
from sqlalchemy.orm import Session

from indexer.errors import StoreBusyError, StoreFormatError, StoreNotFoundError
from indexer.store import ann, ondisk
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
from indexer.store.filters import NO_FILTERS, Filters
from indexer.store.lock import store_writer
from indexer.store.schema import (
    FORMAT_VERSION,
    FRAME,
    INDEXED,
    SEARCHED,
    Base,
    Image,
    Manifest,
    RemovedVector,
    migrate_schema,
    utcnow,
)
from indexer.store.vectors import ROW_READS_PAST, VECTOR_FILE, VectorFile

log = logging.getLogger(__name__)

DB_FILE = "clipdex.db"
INDEX_FILE = "index.faiss"
INDEX_META_FILE = "index.json"
PROBES_FILE = "probes.npy"  # text-like queries (embedded phrases) that calibrate the index
DEFAULT_INDEX_MEMORY = 2**30
STORED_PROBES = 300  # stored vectors used as image-like calibration queries
# The writer saves its index after adding this share of its size since the last save (at least SAVE_MIN),
# so a killed long run catches up on little; the run's end always saves.
SAVE_SHARE, SAVE_MIN = 0.25, 100_000
SELECTIONS_KEPT = 8
# A filter admitting at most this many images is searched exactly, every admitted vector scored (~10 ms).
EXACT_FILTER_LIMIT = 100_000


class SharedLock:
    """Many searches at once, or one index update alone (FAISS indexes are not safe to change mid-search)."""

    def __init__(self):
        self._cond = threading.Condition()
        self._readers = 0

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: self._readers == 0)
            yield


class EmbeddedStore(Store):
    """A store directory: rows in SQLite, vectors in the vector file, search over the FAISS index kept in step.

    `index_memory` is the budget (bytes) that chooses the index kind when the index is (re)built.
    """

    def __init__(self, path: Path, engine, manifest: Manifest, index_memory: int = DEFAULT_INDEX_MEMORY):
        super().__init__(engine, manifest, str(path))
        self.path = path
        self.local_dir = path  # thumbnails are cached here
        self.index_memory = index_memory
        self.vectors = VectorFile(path / VECTOR_FILE, self.dim)
        self._writable: VectorFile | None = None
        self.index: faiss.Index | None = None
        self.kind: ann.Kind | None = None
        self.tuning = ann.Tuning()
        self.meta: dict = {}  # the index.json of the file the index was loaded from or saved as
        self.index_version = -1  # the data version the index in memory reflects
        self.index_max_id = 0  # the highest id the index may hold: rows above are new to it
        self.added_since_save = 0
        self._lock = SharedLock()
        self._selections: dict[tuple[Filters, int], tuple[faiss.IDSelector, np.ndarray]] = {}
        self._selections_lock = threading.Lock()
        # Re-entrant: a rebuild under it saves, and saving brings the index in step first.
        self._refresh = threading.RLock()

    def data_version(self) -> int:
        with self.engine.connect() as conn:  # Core, not an ORM session: asked once per query by the service
            return conn.scalar(select(Manifest.data_version))

    def bump_version(self, session: Session) -> int:
        """Call inside the transaction that changes vectors; returns the new version."""
        session.execute(update(Manifest).values(data_version=Manifest.data_version + 1))
        return session.scalar(select(Manifest.data_version))

    # --- writing (under the writer lock) -----------------------------------------------------------

    def writing(self, root: Path | None, timeout: float):
        """One writer for the whole store, whatever its folder: the FAISS index file has one writer."""
        return store_writer(self.path, timeout)

    def commit_images(self, session: Session, rows: list[Image], vectors: dict[int, np.ndarray]) -> None:
        """Commit rows added or changed in `session` with the vectors of the indexed ones, by position in `rows`.

        The vectors are written and synced before the transaction commits, so a crash never leaves a row
        without its vector; the index catches up from both on its next use.
        """
        session.flush()  # assigns ids to new rows
        version = self.bump_version(session)
        for row in rows:
            row.vector_version = version
        indexed = [(row.id, vectors[position]) for position, row in enumerate(rows) if row.status in SEARCHED]
        if indexed:
            self.write_vectors(session, np.asarray([i for i, _ in indexed]), np.stack([v for _, v in indexed]))
        session.commit()

    def write_vectors(self, session: Session, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Written and synced before the caller commits: a committed row always has its vector."""
        writable = self.writable_vectors()
        writable.write(np.asarray(ids, dtype=np.int64), vectors)
        writable.sync()

    def insert_rows(self, session: Session, table: str, columns: tuple[str, ...], rows: list[tuple]) -> None:
        """One executemany of plain tuples: ORM or dict rows cost more than SQLite's own work."""
        marks = ", ".join("?" * len(columns))
        session.connection().exec_driver_sql(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})", rows)

    def delete_images(self, ids: list[int]) -> None:
        """Delete rows (their captions and tags cascade) in one transaction; the index drops them on next use."""
        if not ids:
            return
        with self.session() as s:
            ids = list(ids) + self.frame_ids(s, ids)
            version = self.bump_version(s)
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                s.execute(delete(Image).where(Image.id.in_(chunk)))
                s.execute(delete(RemovedVector).where(RemovedVector.id.in_(chunk)))
                s.execute(insert(RemovedVector), [{"id": i, "data_version": version} for i in chunk])
            s.commit()

    def writable_vectors(self) -> VectorFile:
        if self._writable is None:
            self._writable = VectorFile(self.vectors.path, self.dim, writable=True)
        return self._writable

    def wants_probes(self) -> bool:
        """Compressed indexes (past EXACT_LIMIT vectors) are calibrated on text-like probes too."""
        return self.probes() is None and self.count_vectors() > ann.EXACT_LIMIT

    def save_probes(self, probes: np.ndarray) -> None:
        tmp = self.path / (PROBES_FILE + ".tmp.npy")
        np.save(tmp, np.asarray(probes, dtype=np.float32))
        os.replace(tmp, self.path / PROBES_FILE)

    def probes(self) -> np.ndarray | None:
        try:
            probes = np.load(self.path / PROBES_FILE)
        except (OSError, ValueError):
            return None
        return probes if probes.ndim == 2 and probes.shape[1] == self.dim else None

    def needs_rebuild(self) -> bool:
        """Whether the index, once caught up, should be rebuilt for the collection's size and the budget (or, on
        disk, merged into a new generation)."""
        self.sync_index()
        if isinstance(self.index, ondisk.DiskIVF):
            changed = self.index.delta.ntotal + len(self.index.tombstones)
            if changed > ondisk.MERGE_SHARE * self.index.main.ntotal:
                return True
        return ann.outgrown(self.kind.spec, self.meta.get("trained", 0), self.index.ntotal, self.dim, self.index_memory)

    def save_index(self, force_rebuild: bool = False, encode_shards: ondisk.Encode | None = None) -> None:
        """Write the index and its meta atomically (temp file, rename); a writer calls it at the end of a run.

        An index the collection has outgrown is rebuilt first; the new version it commits tells readers to
        load it.
        """
        if force_rebuild or self.needs_rebuild():
            self.install(*self.build_index(encode_shards))
            with self.session() as s:
                self.index_version = self.bump_version(s)
                s.commit()
        meta = {
            **self.meta,
            "data_version": self.index_version,
            "count": int(self.index.ntotal),
            "max_id": self.index_max_id,
            "nprobe": self.tuning.nprobe,
            "rerank": self.tuning.rerank,
        }
        tmp, meta_tmp = self.path / (INDEX_FILE + ".tmp"), self.path / (INDEX_META_FILE + ".tmp")
        # The saved index this save replaces keeps its files a save longer: a reader may be loading it now. Read from
        # disk, not remembered: a new process (each `clipdex index` run) deleted it at once when it was remembered.
        replaced = self.saved_meta()
        try:
            with self._lock.shared():
                if isinstance(self.index, ondisk.DiskIVF):  # its generation's files are written: what changed since
                    meta |= ondisk.save(self.index, self.path, self.index_version)
                else:
                    faiss.write_index(self.index, str(tmp))
            if not isinstance(self.index, ondisk.DiskIVF):
                os.replace(tmp, self.path / INDEX_FILE)
            meta_tmp.write_text(json.dumps(meta))
            os.replace(meta_tmp, self.path / INDEX_META_FILE)
        finally:  # a half-written temp file must not fill what little room a full disk has left
            tmp.unlink(missing_ok=True)
            meta_tmp.unlink(missing_ok=True)
        ondisk.remove_stale(self.path, (meta, replaced))
        self.meta, self.added_since_save = meta, 0

    def index_description(self) -> str:
        """The index kind and how it is searched, for summaries: "IVF2000,SQ8 (nprobe 16, re-rank x4)"."""
        tuning = f"nprobe {self.tuning.nprobe}" + (f", re-rank x{self.tuning.rerank}" if self.kind.compressed else "")
        return self.kind.spec + (f" ({tuning})" if self.kind.spec != "Flat" else " (exact)")

    def save_if_due(self) -> None:
        self.sync_index()
        if self.added_since_save >= max(SAVE_MIN, SAVE_SHARE * self.index.ntotal):
            self.save_index()

    # --- the index ---------------------------------------------------------------------------------

    def warm(self) -> None:
        self.sync_index()

    def finish_copy(self) -> None:
        """Rows and vectors copied in: build the index over them."""
        self.save_index(force_rebuild=True)

    def sync_index(self) -> faiss.Index:
        """The index in step with the database: caught up from the saved file or from memory, else rebuilt.

        One cheap version query when nothing changed. A reader picks up a rebuilt file (its build id changed);
        otherwise the rows written since the index's version are removed and re-added, deletions dropped.
        """
        version = self.data_version()
        if self.index is not None and version == self.index_version:
            return self.index
        with self._refresh:  # concurrent requests must not each catch up
            saved = self.saved_meta()
            if self.index is None or (
                saved.get("build") != self.meta.get("build") and saved.get("data_version", -1) >= self.index_version
            ):
                self.load_or_build(saved)
            self.catch_up()
        return self.index

    def saved_meta(self) -> dict:
        """The index.json of the saved index ({} when missing or unreadable)."""
        try:
            meta = json.loads((self.path / INDEX_META_FILE).read_text())
        except (OSError, ValueError):
            return {}
        return meta if isinstance(meta, dict) and {"build", "spec", "data_version"} <= meta.keys() else {}

    def load_or_build(self, saved: dict) -> None:
        """Load the saved index and catch it up; else (missing, damaged) rebuild it.

        A loaded index must then prove it holds every stored vector (a count; two writers once saved an
        index short of rows). Counting 10M rows takes seconds, so a service (`serving`) answers
        meanwhile and swaps in a rebuilt index if the count disagrees; a writer checks before going on.
        """
        index = self.read_saved_index(saved)
        if index is not None:
            self.install(
                index, ann.Kind.parse(saved["spec"], self.dim), ann.Tuning(saved["nprobe"], saved["rerank"]), saved
            )
            self.catch_up()
            if self.serving:
                threading.Thread(target=self.check_loaded, name="index-check", daemon=True).start()
                return
            if self.holds_every_vector():
                return
        self.install(*self.build_index())
        self.save_built()

    def holds_every_vector(self) -> bool:
        """Whether the index holds as many vectors as the database, compared at one data version."""
        with self.engine.connect() as conn, conn.begin():
            version = conn.scalar(select(Manifest.data_version))
            count = conn.scalar(select(func.count()).select_from(Image).where(Image.status.in_(SEARCHED)))
        if version != self.index_version or self.index.ntotal == count:
            return True  # moved on meanwhile: the next load checks again
        log.warning(
            "the index file %s holds %d vectors once caught up, the database %d; rebuilding it",
            self.path / INDEX_FILE, self.index.ntotal, count,
        )  # fmt: skip
        return False

    def check_loaded(self) -> None:
        with self._refresh:
            if not self.holds_every_vector():
                self.install(*self.build_index())
                self.save_built()

    def read_saved_index(self, saved: dict) -> faiss.Index | None:
        index_file = self.path / INDEX_FILE
        if not saved:
            return None
        try:
            if ann.Kind.parse(saved["spec"], self.dim).on_disk:
                index = ondisk.load(self.path, saved)
                return index if index.main.d == self.dim else None
            if not index_file.exists():
                return None
            index = faiss.read_index(str(index_file))
        except (RuntimeError, OSError, ValueError, KeyError) as e:
            log.warning("the index file %s is damaged (%s); rebuilding it", index_file, e)
            return None
        if index.d != self.dim:
            return None
        return index

    def save_built(self) -> None:
        """Save an index a reader had to build, if no writer holds the store (else the writer will)."""
        try:
            with store_writer(self.path, timeout=0):
                self.save_index()
        except StoreBusyError:
            pass
        except OSError as e:  # a read-only store still searches
            log.warning("could not save the rebuilt index in %s: %s", self.path, e)

    def install(self, index: faiss.Index, kind: ann.Kind, tuning: ann.Tuning, meta: dict) -> None:
        """Make `index` the one searched; `meta` says the data version it reflects and its highest id."""
        with self._lock.exclusive():
            self.index, self.kind, self.tuning, self.meta = index, kind, tuning, dict(meta)
            self.index_version, self.index_max_id = meta["data_version"], meta["max_id"]
            # Rows a re-rank wants are read one by one where gathering them from the map costs a page fault each: past
            # the budget (its vectors rarely cached), and in a service over a file past ROW_READS_PAST (10M in memory,
            # 2,560 candidates: 14-15 ms from the map, 7.3-7.7 ms read). A one-shot command keeps the map: loading
            # the compiled reads costs a process ~0.7 s.
            self.vectors.reads_rows = kind.on_disk or (self.serving and self.vectors.size() > ROW_READS_PAST)
            if ann.is_ivf(index):
                index.nprobe = tuning.nprobe

    def catch_up(self) -> None:
        """Bring the index from its version to the database's: one read transaction, so one snapshot."""
        with self.engine.connect() as conn, conn.begin():
            version = conn.scalar(select(Manifest.data_version))
            if version == self.index_version:
                return
            changed = conn.execute(
                select(Image.id, Image.status).where(Image.vector_version > self.index_version).order_by(Image.id)
            ).all()
            removed = list(
                conn.scalars(select(RemovedVector.id).where(RemovedVector.data_version > self.index_version))
            )
        stale = [i for i, _ in changed if i <= self.index_max_id] + removed
        added = np.asarray([i for i, status in changed if status in SEARCHED], dtype=np.int64)
        with self._lock.exclusive():
            if stale:
                self.index.remove_ids(np.asarray(stale, dtype=np.int64))
            for ids, vectors in self.vectors.stream(in_chunks(added)):
                self.index.add_with_ids(vectors, ids)
            self.index_version = version
            if changed:
                self.index_max_id = max(self.index_max_id, changed[-1][0])
        self.added_since_save += len(added)

    def build_index(self, encode_shards: ondisk.Encode | None = None) -> tuple[faiss.Index, ann.Kind, ann.Tuning, dict]:
        """An index over every stored vector, of the kind the count and budget call for, trained and calibrated."""
        started = time.perf_counter()
        with self.engine.connect() as conn, conn.begin():
            version = conn.scalar(select(Manifest.data_version))
            ids = np.fromiter(
                conn.scalars(select(Image.id).where(Image.status.in_(SEARCHED)).order_by(Image.id)), np.int64
            )
        kind = ann.choose(len(ids), self.dim, self.index_memory)
        if kind.memory(len(ids)) > self.index_memory:
            log.warning(
                "%d vectors need %.0f MB in the smallest index, over the %.0f MB index memory budget",
                len(ids), kind.memory(len(ids)) / 1e6, self.index_memory / 1e6,
            )  # fmt: skip
        if kind.on_disk and self.vectors.size() > ROW_READS_PAST:
            self.vectors.reads_rows = True  # as installing the index will: its build reads rows one by one too
        nlist = ann.lists_of(kind.spec)
        tuning, truths = ann.Tuning(), []
        sample = np.empty((0, self.dim), np.float32)
        if nlist:  # k-means sample, and the calibration queries: stored vectors and text-like probes
            rng = np.random.default_rng(0)
            sample = self.vectors.read(
                np.sort(rng.choice(ids, min(len(ids), ann.TRAIN_PER_LIST * nlist), replace=False))
            )
            own = np.sort(rng.choice(ids, min(len(ids), STORED_PROBES), replace=False))
            truths.append((ann.ExactTop(self.vectors.read(own), 11), own))
            probes = self.probes()
            if probes is None:
                log.warning("no text-like probes in %s: the index is calibrated on stored vectors only", self.path)
            else:
                truths.append((ann.ExactTop(probes, 10), None))
        build = f"{time.time_ns()}"
        if kind.on_disk:
            index = ondisk.build(
                kind, self.dim, sample, self.vectors.path, ids, [truth for truth, _ in truths], self.path, build,
                encode_shards,
            )  # fmt: skip
        else:
            batches = self.vectors.stream(in_chunks(ids))
            index = ann.build(kind, self.dim, sample, batches, [truth for truth, _ in truths])
        del sample  # trained on: the calibration need not hold it too (1.5 GB at 20M)
        if nlist:
            tuning = ann.calibrate(index, kind, truths, self.vectors.best)
        log.info(
            "built a %s index over %d vectors in %.1f s (nprobe %d, re-rank %d)",
            kind.spec, len(ids), time.perf_counter() - started, tuning.nprobe, tuning.rerank,
        )  # fmt: skip
        meta = {
            "build": build,
            "spec": kind.spec,
            "trained": len(ids),
            "data_version": version,
            "max_id": int(ids[-1]) if len(ids) else 0,
        }
        return index, kind, tuning, meta

    # --- searching ---------------------------------------------------------------------------------

    def search(
        self,
        vector: np.ndarray,
        k: int,
        offset: int = 0,
        filters: Filters = NO_FILTERS,
        exclude: tuple[int, ...] = (),
    ) -> list[tuple[int, float]]:
        """(id, cosine) of the best stored vectors for a unit vector, best first, after skipping `offset`.

        Row filters become an IDSelector inside the FAISS search, so k hits come back whenever k images
        match, however few do; min_score cuts the ranked list, which is exact because it is sorted.
        """
        index = self.sync_index()
        if index.ntotal == 0:
            return []
        want = min(k + offset + len(exclude), index.ntotal)
        query = np.asarray(vector, dtype=np.float32).reshape(1, -1)
        selector, fraction = None, 1.0
        if filters.selects_rows:
            selector, allowed = self.selection(filters)
            if len(allowed) == 0:
                return []
            fraction = len(allowed) / index.ntotal
        if selector is not None and len(allowed) <= EXACT_FILTER_LIMIT:  # few enough to score them all: exact
            found, found_ids = self.vectors.best(allowed, query[0], want)
            scores, ids = found[None], found_ids[None]
        else:
            with self._lock.shared():
                scores, ids = ann.search(
                    index, self.tuning, self.kind.compressed, query, want, self.vectors.best, selector, fraction
                )
        ranked = ((int(i), float(s)) for i, s in zip(ids[0], scores[0], strict=True) if i != -1)
        return page(ranked, k, offset, filters, exclude)

    def selection(self, filters: Filters) -> tuple[faiss.IDSelector, np.ndarray]:
        """A FAISS selector of the images meeting the row filters, and their ids.

        Folder and date selections are kept for the last few filters at this data version (every commit
        bumps it): paging, and other queries with the same filter, would otherwise fetch the ids from SQL
        again (a tenth of 10M images is a second of SQL). Tags and keywords change without a version bump: not
        kept.
        """
        key = (filters.rows_only, self.index_version)
        with self._selections_lock:
            if key in self._selections:
                return self._selections[key]
        ids = self.matching_ids(filters, frames=True)
        found = faiss.IDSelectorBatch(ids), ids
        if filters.tag is None and filters.keyword is None:
            with self._selections_lock:
                if len(self._selections) >= SELECTIONS_KEPT:
                    self._selections.pop(next(iter(self._selections)))
                self._selections[key] = found
        return found

    # --- reading -----------------------------------------------------------------------------------

    def iter_vectors(
        self, chunk_size: int = READ_CHUNK, indexed_after: datetime | None = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids, vectors) of indexed images in id order and chunks, optionally only those indexed after a time."""
        query = select(Image.id).where(*indexed_since(indexed_after)).order_by(Image.id)

        def id_chunks():
            with self.engine.connect() as conn:
                for chunk in conn.execution_options(yield_per=chunk_size).execute(query).partitions():
                    yield np.fromiter((r[0] for r in chunk), dtype=np.int64, count=len(chunk))

        yield from self.vectors.stream(id_chunks())

    def vectors_of(self, ids: np.ndarray) -> np.ndarray:
        return self.vectors.read(np.asarray(ids, dtype=np.int64))

    # --- captions ----------------------------------------------------------------------------------

    def match_captions(
        self, query: str, limit: int, filters: Filters = NO_FILTERS, source: str = "caption"
    ) -> list[tuple[int, float, str]]:
        """FTS5 over the captions: the query's words, quoted (no FTS5 syntax from users), joined by OR.

        Relevance is minus FTS5's bm25 (bm25 is lower for better matches); an image with several captions
        counts with its best one. Then the substring matches, from the trigram index. Row filters restrict the
        images considered.
        """
        words, pieces = query_words(query), substring_pieces(query)
        if not words:
            return []
        among = self.matching_ids(filters, frames=True) if filters.selects_rows else None
        # SQLite returns the bare column `text` from the row that gave MIN(rank): the best caption.
        sql = text(
            "SELECT c.image_id, MIN(f.rank) AS best, c.text FROM captions_fts AS f "
            "JOIN captions AS c ON c.id = f.rowid JOIN images AS i ON i.id = c.image_id "
            "WHERE captions_fts MATCH :query AND i.status IN (:status, :frame) "
            + f"AND {source_sql(source)} "
            + in_selection("c.image_id", among)
            + "GROUP BY c.image_id ORDER BY best, c.image_id LIMIT :limit"
        )
        params = {"query": fts_phrases(words), "status": INDEXED, "frame": FRAME, "limit": limit}
        params["among"] = among_json(among)
        with self.session() as s:
            by_words = [(image_id, -float(best), caption) for image_id, best, caption in s.execute(sql, params)]
            by_pieces = []
            if pieces and len(by_words) < limit:
                found = pieces_found("c.text", pieces)
                sql = text(
                    f"SELECT c.image_id, MAX({found}) AS found, c.text FROM captions_trigram AS f "
                    "JOIN captions AS c ON c.id = f.rowid JOIN images AS i ON i.id = c.image_id "
                    "WHERE captions_trigram MATCH :query AND i.status IN (:status, :frame) "
                    + f"AND {source_sql(source)} "
                    + in_selection("c.image_id", among)
                    + "GROUP BY c.image_id ORDER BY found DESC, c.image_id LIMIT :limit"
                )
                pieces_params = {f"piece{n}": piece for n, piece in enumerate(pieces)}
                params = {**params, **pieces_params, "query": fts_phrases(pieces), "limit": 2 * limit}
                by_pieces = s.execute(sql, params).all()
        return words_then_pieces(by_words, by_pieces, limit)

    def match_names(self, query: str, limit: int, filters: Filters = NO_FILTERS) -> list[tuple[int, float, str]]:
        """The trigram index over the images' paths within their folders."""
        pieces = substring_pieces(query)
        if not pieces:
            return []
        among = self.matching_ids(filters) if filters.selects_rows else None
        found = pieces_found("i.relpath", pieces)
        sql = text(
            f"SELECT i.id, {found} AS found, i.relpath FROM images_names AS f JOIN images AS i ON i.id = f.rowid "
            "WHERE images_names MATCH :query AND i.status = :status "
            + in_selection("i.id", among)
            + "ORDER BY found DESC, i.id LIMIT :limit"
        )
        params = {f"piece{n}": piece for n, piece in enumerate(pieces)}
        params |= {"query": fts_phrases(pieces), "status": INDEXED, "limit": limit, "among": among_json(among)}
        with self.session() as s:
            return by_pieces_found(s.execute(sql, params).all(), pieces)


def source_sql(source: str) -> str:
    """base.caption_source on `c.model`, as SQL for the queries written out here (its prefixes are clipdex's
    constants, not user text)."""
    condition = caption_source(source, literal_column("c.model", String))
    return str(condition.compile(dialect=sqlite.dialect(), compile_kwargs={"literal_binds": True}))


def fts_phrases(terms: list[str]) -> str:
    """An FTS5 query matching any of the terms, each quoted as a phrase: no FTS5 syntax from users."""
    return " OR ".join('"' + term.replace('"', '""') + '"' for term in terms)


def pieces_found(column: str, pieces: list[str]) -> str:
    """SQL counting the pieces (bound as :piece0, :piece1, ...) that `column` holds, case folded."""
    return " + ".join(f"(instr(lower({column}), :piece{n}) > 0)" for n in range(len(pieces)))


def in_selection(column: str, among: np.ndarray | None) -> str:
    return "" if among is None else f"AND {column} IN (SELECT value FROM json_each(:among)) "


def among_json(among: np.ndarray | None) -> str | None:
    return None if among is None else json.dumps(among.tolist())


def in_chunks(ids: np.ndarray) -> Iterator[np.ndarray]:
    return (ids[start : start + READ_CHUNK] for start in range(0, len(ids), READ_CHUNK))


# Full-text indexes, FTS5 tables over a column of another table (external content), kept in step by triggers,
# so every write path (captioning, cascade deletes of images, plain SQL) updates them: name -> (table, column,
# tokenizer). Words of captions and read text (the porter stemmer lets "dogs" find "dog"), and trigrams of them
# and of the images' paths for substring search (case folded; any piece of 3 or more characters).
FULL_TEXT = {
    "captions_fts": ("captions", "text", "porter unicode61 remove_diacritics 2"),
    "captions_trigram": ("captions", "text", "trigram"),
    "images_names": ("images", "relpath", "trigram"),
}


def full_text_ddl(name: str, table: str, column: str, tokenizer: str) -> list[str]:
    remove = f"INSERT INTO {name}({name}, rowid, {column}) VALUES ('delete', old.id, old.{column});"
    add = f"INSERT INTO {name}(rowid, {column}) VALUES (new.id, new.{column});"
    return [
        f"CREATE VIRTUAL TABLE IF NOT EXISTS {name} USING fts5("
        f"{column}, content='{table}', content_rowid='id', tokenize='{tokenizer}')",
        f"CREATE TRIGGER IF NOT EXISTS {name}_insert AFTER INSERT ON {table} BEGIN {add} END",
        f"CREATE TRIGGER IF NOT EXISTS {name}_delete AFTER DELETE ON {table} BEGIN {remove} END",
        f"CREATE TRIGGER IF NOT EXISTS {name}_update AFTER UPDATE OF {column} ON {table} BEGIN {remove} {add} END",
    ]


def ensure_full_text(engine) -> None:
    """Create the full-text indexes and their triggers when missing, filled from the rows already stored."""
    with engine.begin() as conn:
        for name, (table, column, tokenizer) in FULL_TEXT.items():
            if conn.exec_driver_sql("SELECT 1 FROM sqlite_master WHERE name = ?", (name,)).first():
                continue  # made together with its triggers, in one transaction
            for statement in full_text_ddl(name, table, column, tokenizer):
                conn.exec_driver_sql(statement)
            conn.exec_driver_sql(f"INSERT INTO {name}({name}) VALUES ('rebuild')")


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


def open_embedded(
    path: Path,
    model: str | None = None,
    dim: int | None = None,
    create: bool = False,
    index_memory: int = DEFAULT_INDEX_MEMORY,
    lock_timeout: float = 3600.0,
) -> EmbeddedStore:
    """Open a store directory; with create=True make it for `model` and `dim` if it does not exist yet.

    A store built with another model than `model` is refused: its vectors would be garbage for it.
    """
    path = Path(path).expanduser()
    db_file = path / DB_FILE
    if not db_file.exists() or db_file.stat().st_size == 0:  # an empty file (a reader's stray connect) is no store
        if not create:
            raise StoreNotFoundError(f"no clipdex store at {path}; index a folder first (clipdex index DIR)")
        if model is None or dim is None:
            raise ValueError("creating a store needs the model name and its dimension")
        with store_writer(path, lock_timeout):  # two first runs at once: one creates, the other opens
            if not db_file.exists() or db_file.stat().st_size == 0:
                create_database(path, model, dim)
    engine = _engine(path)
    manifest = read_manifest(engine, db_file)
    check_manifest(manifest, model, str(path))
    if manifest.format_version < FORMAT_VERSION:
        with store_writer(path, lock_timeout):
            manifest = read_manifest(engine, db_file)
            if manifest.format_version == 1:
                move_vectors_out(path, engine, manifest.dim)
    if not (path / VECTOR_FILE).exists():
        raise StoreFormatError(
            f"{path / VECTOR_FILE} is missing: restore it from a backup, or index into a new --store"
        )
    return EmbeddedStore(path, engine, manifest, index_memory)


def create_database(path: Path, model: str, dim: int) -> None:
    """A new store's database, made whole under a temporary name and renamed into place (after the vector file):
    a reader opening the store meanwhile finds no store or a complete one, never tables half made (its own
    forward migration would race the creation's)."""
    VectorFile(path / VECTOR_FILE, dim, writable=True).close()
    staging = path / f"{DB_FILE}.new"
    staging.unlink(missing_ok=True)
    engine = create_engine(f"sqlite:///{staging}")  # no WAL yet: one file to rename
    try:
        Base.metadata.create_all(engine)
        ensure_full_text(engine)
        with Session(engine) as s:
            s.add(Manifest(id=1, format_version=FORMAT_VERSION, model=model, dim=dim, created_at=utcnow()))
            s.commit()
    finally:
        engine.dispose()
    os.replace(staging, path / DB_FILE)


def read_manifest(engine, db_file: Path) -> Manifest:
    with Session(engine, expire_on_commit=False) as s:
        try:
            with engine.begin() as conn:
                migrate_schema(conn)
            ensure_full_text(engine)
            manifest = s.scalar(select(Manifest))
        except Exception as e:
            raise StoreFormatError(f"{db_file} is not a clipdex store ({e})") from None
    if manifest is None:
        raise StoreFormatError(f"{db_file} has no manifest; it is damaged. Index into a new --store")
    return manifest


def move_vectors_out(path: Path, engine, dim: int) -> None:
    """Format 1 -> 2: the float32 blobs in SQLite move to the float16 vector file, and the space is reclaimed."""
    started = time.perf_counter()
    log.warning("upgrading the store %s: moving its vectors out of the database (once)", path)
    vectors = VectorFile(path / VECTOR_FILE, dim, writable=True)
    with engine.connect() as conn:  # vector_version came with format 2: read_manifest's migration added it
        rows = conn.exec_driver_sql("SELECT id, vector FROM images WHERE vector IS NOT NULL ORDER BY id")
        for chunk in rows.partitions(READ_CHUNK):
            ids = np.fromiter((r[0] for r in chunk), dtype=np.int64, count=len(chunk))
            vectors.write(ids, np.frombuffer(b"".join(r[1] for r in chunk), np.float32).reshape(-1, dim))
        vectors.sync()
        vectors.close()
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE images SET vector = NULL")
        conn.execute(update(Manifest).values(format_version=FORMAT_VERSION, data_version=Manifest.data_version + 1))
    with engine.connect() as conn:
        conn.exec_driver_sql("VACUUM")
    for name in (INDEX_FILE, INDEX_META_FILE):  # format 1 index files lack what catching up needs
        (path / name).unlink(missing_ok=True)
    log.warning("upgraded the store %s in %.1f s", path, time.perf_counter() - started)
