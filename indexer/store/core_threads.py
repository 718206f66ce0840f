"""The threads that split one search's work among the cores: a query's probed lists (ann.scan_lists) and a
re-rank's reads (vectors.VectorFile.read_cached).

The service gives each request one thread; past the memory budget a single query is worth splitting (at 20M:
scanning 1.1M codes and reading 20,480 rows). FAISS and the compiled reads release the GIL, and plain threads do
not spin as OpenMP's barriers do on a busy machine.
"""

import os
from concurrent.futures import ThreadPoolExecutor
from functools import cache

from indexer.settings import cpu_count


@cache
def core_threads() -> ThreadPoolExecutor:
    """One thread a core, shared by every search of the process."""
    return ThreadPoolExecutor(max_workers=cpu_count(), thread_name_prefix="clipdex-core")


if hasattr(os, "register_at_fork"):  # a forked child has none of its parent's threads: it starts its own pool
    os.register_at_fork(after_in_child=core_threads.cache_clear)
