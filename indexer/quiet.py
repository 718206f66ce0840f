"""Quiet for the user: what libraries print past Python's logging and warnings, from C code, straight to a file
descriptor (FAISS's notes on stdout, Ray's core on stderr)."""

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def silenced(fd: int) -> Iterator[None]:
    """The process's file descriptor `fd` (1: standard output, 2: standard error) sent to /dev/null for the block."""
    (sys.stdout if fd == 1 else sys.stderr).flush()
    saved = os.dup(fd)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), fd)
        yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)
