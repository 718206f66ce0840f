"""One writer at a time per store: an exclusive lock on `write.lock` in the store directory.

Two indexers writing one store lost vectors: each mirrored its own chunks into its FAISS index and saved
it under a data version that counted the other's chunks too, so the saved index claimed rows it lacked.
The lock is an OS file lock (flock), so the kernel drops it when its holder dies, kill -9 included: a
crashed writer never leaves a store locked. Readers (search, the service) take no lock; SQLite's WAL lets
them read while a writer commits.
"""

import fcntl
import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from indexer.errors import StoreBusyError

log = logging.getLogger(__name__)

LOCK_FILE = "write.lock"
POLL_SECONDS = 0.2

# Held locks of this process, by store directory: (open lock file, depth). Re-entrant, so a run that holds
# the lock can call another writer (index, then caption) without waiting on itself.
_held: dict[Path, tuple[object, int]] = {}
_guard = threading.Lock()


@contextmanager
def store_writer(path: Path, timeout: float) -> Iterator[None]:
    """Hold the store's writer lock for the block; wait up to `timeout` seconds for another writer, saying so."""
    path = Path(path).expanduser().resolve()
    with _guard:
        held = _held.get(path)
        if held:
            _held[path] = (held[0], held[1] + 1)
    if not held:
        _held[path] = (acquire(path, timeout), 1)
    try:
        yield
    finally:
        with _guard:
            lock_file, depth = _held[path]
            if depth > 1:
                _held[path] = (lock_file, depth - 1)
            else:
                del _held[path]
                lock_file.close()  # closing the file releases the lock


def acquire(path: Path, timeout: float):
    """Open and lock `path/write.lock`, recording our pid in it for the message another writer sees."""
    path.mkdir(parents=True, exist_ok=True)
    lock_file = open(path / LOCK_FILE, "a+")  # noqa: SIM115 - held open as long as the lock is held
    deadline = time.monotonic() + timeout
    said = False
    while True:
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if not said:
                lock_file.seek(0)
                holder = lock_file.read().strip() or "another process"
                log.warning("the store %s is being written by %s; waiting for it (up to %.0f s)", path, holder, timeout)
                said = True
            if time.monotonic() >= deadline:
                lock_file.close()
                raise StoreBusyError(
                    f"the store {path} is still being written by another clipdex process after {timeout:.0f} s; "
                    "try again when it has finished, or raise CLIPDEX_LOCK_TIMEOUT"
                ) from None
            time.sleep(POLL_SECONDS)
    lock_file.seek(0)
    lock_file.truncate()
    lock_file.write(f"pid {os.getpid()}")
    lock_file.flush()
    return lock_file
