"""The embedded store's full vectors: one float16 file, the vector of image id i at row i.

float16 keeps cosine rankings (tests/test_vectors.py checks they agree with float32) at half the bytes:
1 KB an image at 512 dimensions. The file is memory-mapped, never loaded: re-ranking gathers a
few hundred scattered rows a query from the map, whose pages are the kernel's page cache (file-backed,
reclaimable, shared by every process on the store; released from the process's mapping after each
gather), or past the memory budget reads them one by one, into one buffer the re-ranks take turns with; streaming
it all (tagging) reads spans into one chunk-sized buffer, so a 10 GB file costs the processes that search it no
anonymous memory.

Crash safety comes from the order of writes: a chunk's vectors are written and fsynced before the SQLite
transaction that makes their rows visible commits. A killed run leaves at most rows of vectors no row
points to, which the next rows with those ids overwrite. Ids come from SQLite (max + 1), so the file has
no holes worth speaking of; a skipped file's row is never written (a sparse hole).
"""

import mmap
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import faiss
import numpy as np

from indexer.settings import cpu_count
from indexer.store.core_threads import core_threads

VECTOR_FILE = "vectors.f16"
DTYPE = np.dtype("<f2")
# A read that takes only what the page cache holds, and fails at once for the rest (Linux 4.14+, where the file
# system allows it): a cached row costs one system call, not a read-ahead hint and a read.
NOWAIT = getattr(os, "RWF_NOWAIT", 0)
GATHER_ROWS = 10_000  # rows a large read gathers at a time (10 MB at 512 dimensions)
# A file past this size is read row by row by an on-disk index's build too (VectorFile.reads_rows), not only by its
# searches, and by a service's searches whatever the index: a calibration gathers ~22,000 candidates a query, each its
# own page fault in a larger file (~5 us, and held mapped until the gather ends: a 2.8 GB peak at 5M), where a compiled
# read costs ~0.6 us; in a smaller file they share the pages the kernel maps around each fault, and the map is faster.
ROW_READS_PAST = 256 << 20
SPLIT_ROWS = 4_096  # rows a core reads at least: ~3 ms, against the ~0.1 ms of handing them to another thread


class VectorFile:
    """Read and write rows of the vector file; open for reading unless `writable`."""

    def __init__(self, path: Path, dim: int, writable: bool = False):
        self.path, self.dim = Path(path), dim
        self.row_bytes = dim * DTYPE.itemsize
        flags = os.O_RDWR | os.O_CREAT if writable else os.O_RDONLY
        self.fd = os.open(self.path, flags | getattr(os, "O_CLOEXEC", 0), 0o644)
        self._table = np.empty((0, dim), dtype=DTYPE)
        self._map: mmap.mmap | None = None
        self._remapping = threading.Lock()
        self.reads_rows = False  # see gather
        self._nowait = NOWAIT
        self._scorer = new_scorer(dim)  # past the memory budget, the rows a re-rank reads, in its codes
        self._reranking = threading.Lock()

    def close(self) -> None:
        if self.fd >= 0:
            self._table = np.empty((0, self.dim), dtype=DTYPE)
            os.close(self.fd)
            self.fd = -1

    def size(self) -> int:
        """Bytes of the rows the file holds."""
        return self.rows() * self.row_bytes

    def rows(self) -> int:
        """How many rows the file holds (ids 0..rows-1); rows never written read as zeros."""
        return os.fstat(self.fd).st_size // self.row_bytes

    def write(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Write the vectors at their ids' rows, runs of consecutive ids in one call each (not yet synced)."""
        ids = np.asarray(ids, dtype=np.int64)
        data = np.ascontiguousarray(vectors, dtype=DTYPE)
        order = np.argsort(ids, kind="stable")
        ids, data = ids[order], data[order]
        breaks = np.flatnonzero(np.diff(ids) != 1) + 1
        for run_ids, run in zip(np.split(ids, breaks), np.split(data, breaks), strict=True):
            if len(run_ids):
                buffer = memoryview(run).cast("B")
                offset = int(run_ids[0]) * self.row_bytes
                while buffer:  # pwrite may write less than asked
                    done = os.pwrite(self.fd, buffer, offset)
                    buffer, offset = buffer[done:], offset + done

    def sync(self) -> None:
        os.fsync(self.fd)

    def read(self, ids) -> np.ndarray:
        """float32 vectors of the given ids, in their order (zeros for rows never written).

        Gathered GATHER_ROWS at a time: a build's k-means sample gathered at once (357,760 rows of 5M) held 1.3 GB
        of the file's mapped pages and a float16 copy beside the float32 one, a 1.7 GB peak against 0.84 GB.
        """
        ids = np.asarray(ids, dtype=np.int64)
        out = np.zeros((len(ids), self.dim), dtype=np.float32)
        for start in range(0, len(ids), GATHER_ROWS):
            present, rows = self.gather(ids[start : start + GATHER_ROWS])
            out[start : start + GATHER_ROWS][present] = rows
        return out

    def best(self, ids, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids) of the k stored vectors among `ids` with the highest inner product, best first.

        FAISS's float16 kernels score the gathered rows in place of a float32 copy (numpy converts float16
        at ~4 ns a value: 2.6 ms for 1,280 candidates, against 0.4 ms this way). Rows never written are left out.

        Past the memory budget the rows are read straight into one scorer's codes, a re-rank at a time: reading
        row by row holds the GIL between system calls, so two threads reading at once take longer than one after
        the other (20,480 rows split over two threads: 81-86 ms, against 44-49 ms in one), and one buffer kept
        spares each query allocating 20 MB, faulting it in and copying it into a scorer (10-25 ms at 20,480 rows).
        """
        ids = np.asarray(ids, dtype=np.int64)
        if self.reads_rows:
            # In file order: the kernel finds rows' pages faster so (20,480 rows of 20M: 28-31 ms, against 32-38).
            ids = np.sort(ids[self.on_file(ids)])
            with self._reranking:
                self.read_rows(ids, self.scorer_rows(len(ids)))
                return score(self._scorer, ids, query, k)
        present, rows = self.gather(ids)
        scorer = new_scorer(self.dim)
        faiss.copy_array_to_vector(rows.view(np.uint8).ravel(), scorer.codes)
        return score(scorer, ids[present], query, k)

    def scorer_rows(self, count: int) -> np.ndarray:
        """The kept scorer's codes as `count` float16 rows to fill (grown, never shrunk: at most MAX_CANDIDATES
        rows, 20 MB at 512 dimensions)."""
        codes, size = self._scorer.codes, count * self.row_bytes
        if codes.size() < size:
            codes.resize(size)
        if not count:
            return np.empty((0, self.dim), dtype=DTYPE)
        return faiss.rev_swig_ptr(codes.data(), size).view(DTYPE).reshape(count, self.dim)

    def gather(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(which ids the file holds, their float16 rows).

        Rows are copied out of the map, whose pages are then released. For a file larger than memory (the vectors
        of a collection past the memory budget, `reads_rows`) each row would be a page fault of its own (6 us
        here, half of it again to release it: 220 ms for 20,480 rows of 20M, page cache warm); instead they are
        read one by one (read_rows).
        """
        if self.reads_rows:
            present = self.on_file(ids)
            return present, self.read_rows(ids[present])
        table = self.mapped(int(ids.max()) + 1) if len(ids) else self._table
        present = (ids >= 0) & (ids < len(table))
        rows = table[ids[present]]  # fancy indexing copies
        self.release()
        return present, rows

    def on_file(self, ids: np.ndarray) -> np.ndarray:
        """Which ids have a row in the file (those past its end were never written)."""
        return (ids >= 0) & (ids < self.rows())

    def read_rows(self, ids: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """The float16 rows of ids the file holds, a read each, into `out` if given.

        Rows in the page cache are read at once (NOWAIT); the others are asked of the kernel together
        (POSIX_FADV_WILLNEED starts reading them in parallel), then read. 20,480 rows of 20M all cached: 12 ms
        (32-35 ms in a Python loop, 71 ms hinting every row first); ~250 ms with none cached.
        """
        out = np.empty((len(ids), self.dim), dtype=DTYPE) if out is None else out
        if not len(ids):
            return out
        offsets, size = ids * self.row_bytes, self.row_bytes
        missed = self.read_cached(out, offsets).tolist()
        for n in missed:
            os.posix_fadvise(self.fd, int(offsets[n]), size, os.POSIX_FADV_WILLNEED)
        buffer = memoryview(out).cast("B")
        for n in missed:
            if os.preadv(self.fd, [buffer[n * size : (n + 1) * size]], int(offsets[n])) != size:
                raise OSError(f"{self.path} ends inside row {ids[n]}")
        return out

    def read_cached(self, rows: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """Read the rows at `offsets` that the page cache holds into `rows`, never waiting for the disk: the
        positions of the others (all of them where there is no NOWAIT; where the file system refuses it, each read
        fails at once and the row is read as an uncached one).

        Split among the cores in parts of at least SPLIT_ROWS rows (20,480 rows of 20M: ~12 ms in two, ~19 in one).
        """
        if not self._nowait:
            return np.arange(len(offsets))
        from indexer.store import scattered_reads  # numba, imported by stores past the memory budget only

        missed, rows = np.empty(len(offsets), dtype=np.int64), rows.view(np.uint16)  # numba has no float16
        bounds = np.linspace(0, len(offsets), max(1, min(cpu_count(), len(offsets) // SPLIT_ROWS)) + 1, dtype=int)

        def part(n: int) -> np.ndarray:
            first, end = bounds[n], bounds[n + 1]
            count = scattered_reads.read_rows(
                self.fd, rows[first:end], offsets[first:end], self._nowait, missed[first:end]
            )
            return first + missed[first : first + count]  # its positions count from its first row

        others = [core_threads().submit(part, n) for n in range(1, len(bounds) - 1)]
        return np.concatenate([part(0), *(other.result() for other in others)])

    def release(self) -> None:
        """Unmap the pages just gathered from this process (they stay in the page cache).

        The kernel maps whole page-cache folios (up to 2 MB) for each scattered row touched: 320 rows of a
        200 MB file mapped all of it, which a service would show as resident memory. MADV_DONTNEED on a
        shared file map drops only the mapping (0.3 ms); another thread reading meanwhile faults pages in again.
        """
        if self._map is not None:
            self._map.madvise(mmap.MADV_DONTNEED)

    def mapped(self, rows: int) -> np.ndarray:
        """The file as a read-only (rows, dim) array, mapped again once it has grown past `rows`.

        A replaced map stays alive while a reader still holds its array, so no lock is needed to read.
        """
        table = self._table
        if len(table) < rows:
            with self._remapping:
                size = self.rows()
                if len(self._table) < min(rows, size):
                    self._map = mmap.mmap(self.fd, size * self.row_bytes, prot=mmap.PROT_READ)
                    self._map.madvise(mmap.MADV_RANDOM)  # no read-ahead around scattered rows
                    self._table = np.frombuffer(self._map, dtype=DTYPE).reshape(size, self.dim)
                table = self._table
        return table

    def read_span(self, first: int, last: int) -> np.ndarray:
        """float16 rows first..last (inclusive) in one read: for streaming ids in order."""
        out = np.zeros((last - first + 1, self.dim), dtype=DTYPE)
        buffer = memoryview(out).cast("B")
        offset = first * self.row_bytes
        while buffer:
            done = os.preadv(self.fd, [buffer], offset)
            if done == 0:  # end of file: the rest stay zeros
                break
            buffer, offset = buffer[done:], offset + done
        return out

    def stream(self, id_chunks: Iterator[np.ndarray]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids, float32 vectors) for each chunk of ascending ids: a dense chunk is read as one span."""
        for ids in id_chunks:
            if not len(ids):
                continue
            first, last = int(ids[0]), int(ids[-1])
            if last - first < 4 * len(ids):
                yield ids, self.read_span(first, last)[ids - first].astype(np.float32)
            else:  # sparse ids (only the images indexed since a date): row by row
                yield ids, self.read(ids)


def new_scorer(dim: int) -> faiss.IndexScalarQuantizer:
    """An empty index scoring float16 rows by inner product: fill its codes and set its ntotal."""
    return faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)


def score(scorer: faiss.IndexScalarQuantizer, ids: np.ndarray, query: np.ndarray, k: int):
    """(scores, ids) of the k best of the scorer's rows, which hold `ids`' vectors in order."""
    if not len(ids) or k < 1:
        return np.empty(0, dtype=np.float32), np.empty(0, dtype=np.int64)
    scorer.ntotal = len(ids)
    found, positions = scorer.search(np.asarray(query, dtype=np.float32).reshape(1, -1), min(k, len(ids)))
    return found[0], ids[positions[0]]
