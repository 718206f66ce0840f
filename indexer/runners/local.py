"""The local runner: decode in a pool of worker processes while this process embeds in batches."""

import logging
import multiprocessing
import threading
import time
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from indexer.models.embedder import Embedder
from indexer.runners.work import Pending, decode_config, embed_files, indexing_progress, reuse_twin
from indexer.scan import FileStat
from indexer.settings import Settings, cpu_count
from indexer.store import Store
from indexer.worker import LoadResult, WorkerConfig, load_file, setup_worker

log = logging.getLogger(__name__)

# Seconds past a file's own timeout before its worker is killed: the timeout's signal only stops Python code, and
# a decoder looping inside C (FFmpeg, libtiff) never returns to it.
HARD_LIMIT_GRACE = 5.0


class DecodePool:
    """The decode worker processes, started anew when one must be killed or one died."""

    def __init__(self, workers: int, config: WorkerConfig):
        self.workers, self.config = workers, config
        self.context = multiprocessing.get_context("spawn")  # fork after torch has threads is unsafe
        self.pool = self.start()

    def start(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(self.workers, self.context, initializer=setup_worker, initargs=(self.config,))

    def submit(self, path: Path) -> Future:
        return self.pool.submit(load_file, path)

    def restart(self) -> None:
        """Kill every worker (Python 3.11's pool has no public way to stop a busy one) and start new ones."""
        for process in list(self.pool._processes.values()):
            process.kill()
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.pool = self.start()

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def run_workers(root: Path, todo, embedder: "Embedder", store: Store, settings: Settings, show_progress: bool):
    """Decode in a process pool while this process embeds; yields Pending files in order.

    A file still decoding HARD_LIMIT_GRACE seconds past its timeout is skipped and the workers are started anew;
    so is a file whose worker died twice while it was first in line (a decoder that crashes on it).
    """
    config = decode_config(store, embedder, settings)
    workers = settings.workers or cpu_count()
    batch_size = embedder.batch_size
    hard_limit = max(settings.decode_timeout, settings.video_timeout) + HARD_LIMIT_GRACE
    # Enough decoded work queued to keep every worker busy while a batch is in inference, and no more.
    window = batch_size * 2 + workers * 4
    batch: list[Pending] = []
    progress = indexing_progress(show_progress)
    # The image session opens (0.5-0.8 s for ViT-B/32, mostly outside the GIL) while the workers start and decode.
    threading.Thread(target=embedder.load_image_tower, daemon=True).start()
    started = time.perf_counter()
    pool = DecodePool(workers, config)
    crashes: dict[str, int] = {}
    try:
        with progress:
            task = progress.add_task("index", total=len(todo), rate=0.0)
            queue: deque[tuple[FileStat, int | None, Future]] = deque()
            items = iter(todo)
            done = 0

            def fill() -> None:
                for stat, image_id in items:
                    queue.append((stat, image_id, pool.submit(root / stat.relpath)))
                    if len(queue) >= window:
                        return

            def resubmit() -> None:
                """After a restart: the queued files again (their futures died with the old workers)."""
                for n, (stat, image_id, _) in enumerate(list(queue)):
                    queue[n] = (stat, image_id, pool.submit(root / stat.relpath))

            def flush():
                nonlocal done
                if batch:
                    embed_files(embedder, batch)
                done += len(batch)
                progress.update(task, completed=done, rate=done / (time.perf_counter() - started))
                yield from batch
                batch.clear()

            fill()
            while queue:
                stat, image_id, future = queue.popleft()
                try:
                    # First in line, so running: the workers take files in order.
                    result = future.result(timeout=hard_limit)
                except TimeoutError:
                    log.warning("%s: still decoding after %g s; its worker is stopped", stat.relpath, hard_limit)
                    result = LoadResult(hash=None, skip_reason=f"timeout: still decoding after {hard_limit:g} s")
                    pool.restart()
                    resubmit()
                except BrokenProcessPool:  # a worker died (a decoder crashed): tried again, skipped the second time
                    crashes[stat.relpath] = crashes.get(stat.relpath, 0) + 1
                    pool.restart()
                    if crashes[stat.relpath] < 2:
                        queue.appendleft((stat, image_id, future))
                        resubmit()
                        continue
                    log.warning("%s: its decoder crashed twice", stat.relpath)
                    result = LoadResult(hash=None, skip_reason="crashed: the decoder's process died on it, twice")
                    resubmit()
                fill()
                pending = Pending(stat=stat, image_id=image_id, result=result)
                if pending.result.decoded is None:
                    done += 1
                    if pending.result.skip_reason is None and not reuse_twin(pending, store):
                        continue
                    yield pending
                    continue
                batch.append(pending)
                if sum(len(p.result.pixels) for p in batch) >= batch_size:  # a video brings its frames
                    yield from flush()
            yield from flush()
    finally:
        pool.close()
