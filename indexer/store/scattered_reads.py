"""Scattered reads of a file's rows in one compiled loop (numba): a system call a row and nothing else.

A re-rank past the memory budget reads ~20,000 rows of 1 KB from all over a 20 GB file. In a Python loop each
`os.preadv` costs about as much again as the system call itself (slicing the buffer, the argument list, the call);
compiled, 20,480 cached rows of 20M take 19-20 ms instead of 32-35. The loop holds no GIL, so the rows can be split
over the cores (12 ms in two, vectors.VectorFile.read_cached).

Imported only when a store reads past the memory budget: numba takes ~0.3 s to import and ~0.4 s to load the
compiled loop from its cache (~0.8 s to compile it the first time, kept in __pycache__).
"""

import numba
import numpy as np
from numba import types

# glibc's preadv2 (Linux only, as RWF_NOWAIT is): named rather than taken through ctypes, so the loop can be cached
_preadv2 = types.ExternalFunction(
    "preadv2", types.intp(types.int32, types.voidptr, types.int32, types.int64, types.int32)
)


def read_rows(fd: int, rows: np.ndarray, offsets: np.ndarray, flags: int, missed: np.ndarray) -> int:
    """Read rows[n] (a C-contiguous row of any dtype numba knows: pass float16 as uint16) from offsets[n] with
    preadv2(flags); the positions whose read fell short (not cached under RWF_NOWAIT, refused, or an error) go to
    the front of `missed`: how many."""
    size = rows.shape[1] * rows.itemsize
    iovec = np.empty(2, dtype=np.uint64)  # struct iovec: base, length
    iovec[1] = size
    count = 0
    for n in range(offsets.shape[0]):
        iovec[0] = rows[n].ctypes.data
        if _preadv2(fd, iovec.ctypes, 1, offsets[n], flags) != size:
            missed[count] = n
            count += 1
    return count


try:
    read_rows = numba.njit(nogil=True, cache=True)(read_rows)
except RuntimeError:  # nowhere writable to keep the compiled loop (numba's cache): compiled by each process
    read_rows = numba.njit(nogil=True)(read_rows)
