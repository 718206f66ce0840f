"""The embedded store's full vectors: one float16 file, the vector of image id i at row i.

float16 keeps cosine rankings (tests/test_vectors.py checks they agree with float32) at half the bytes:
1 KB an image at 512 dimensions. Rows are read by offset (pread), never loaded whole or memory-mapped, so a
10 GB file costs the processes that search it no resident memory: the kernel's page cache keeps what is
read often, and streaming it all (tagging) passes through one chunk-sized buffer.

Crash safety comes from the order of writes: a chunk's vectors are written and fsynced before the SQLite
transaction that makes their rows visible commits. A killed run leaves at most rows of vectors no row
points to, which the next rows with those ids overwrite. Ids come from SQLite (max + 1), so the file has
no holes worth speaking of; a skipped file's row is never written (a sparse hole).
"""

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

VECTOR_FILE = "vectors.f16"
DTYPE = np.dtype("<f2")


class VectorFile:
    """Read and write rows of the vector file; open for reading unless `writable`."""

    def __init__(self, path: Path, dim: int, writable: bool = False):
        self.path, self.dim = Path(path), dim
        self.row_bytes = dim * DTYPE.itemsize
        flags = os.O_RDWR | os.O_CREAT if writable else os.O_RDONLY
        self.fd = os.open(self.path, flags | getattr(os, "O_CLOEXEC", 0), 0o644)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

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
        """float32 vectors of the given ids, in their order."""
        ids = np.asarray(ids, dtype=np.int64)
        out = np.zeros((len(ids), self.dim), dtype=DTYPE)
        for j, image_id in enumerate(ids.tolist()):
            row = os.pread(self.fd, self.row_bytes, image_id * self.row_bytes)
            if len(row) == self.row_bytes:  # past the end: never written, zeros
                out[j] = np.frombuffer(row, dtype=DTYPE)
        return out.astype(np.float32)

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
