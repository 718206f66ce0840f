"""The local runner: decode in a pool of worker processes while this process embeds in batches."""

import multiprocessing
import threading
import time
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path

from indexer.models.embedder import Embedder
from indexer.runners.work import Pending, decode_config, embed_files, indexing_progress, reuse_twin
from indexer.scan import FileStat
from indexer.settings import Settings, cpu_count
from indexer.store import Store
from indexer.worker import load_file, setup_worker


def run_workers(root: Path, todo, embedder: "Embedder", store: Store, settings: Settings, show_progress: bool):
    """Decode in a process pool while this process embeds; yields Pending files in order."""
    known_hashes, config = decode_config(store, embedder, settings)
    workers = settings.workers or cpu_count()
    batch_size = embedder.batch_size
    # Enough decoded work queued to keep every worker busy while a batch is in inference, and no more.
    window = batch_size * 2 + workers * 4
    batch: list[Pending] = []
    progress = indexing_progress(show_progress)
    context = multiprocessing.get_context("spawn")  # fork after torch has threads is unsafe
    # The image session opens (0.5-0.8 s for ViT-B/32, mostly outside the GIL) while the workers start and decode.
    threading.Thread(target=embedder.load_image_tower, daemon=True).start()
    started = time.perf_counter()
    with (
        progress,
        ProcessPoolExecutor(workers, context, initializer=setup_worker, initargs=(config,)) as pool,
    ):
        task = progress.add_task("index", total=len(todo), rate=0.0)
        queue: deque[tuple[FileStat, int | None, Future]] = deque()
        items = iter(todo)
        done = 0

        def fill() -> None:
            for stat, image_id in items:
                queue.append((stat, image_id, pool.submit(load_file, root / stat.relpath)))
                if len(queue) >= window:
                    return

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
            fill()
            pending = Pending(stat=stat, image_id=image_id, result=future.result())
            if pending.result.decoded is None:
                done += 1
                if pending.result.skip_reason is None and not reuse_twin(pending, store, known_hashes):
                    continue
                yield pending
                continue
            batch.append(pending)
            if sum(len(p.result.pixels) for p in batch) >= batch_size:  # a video brings its frames
                yield from flush()
        yield from flush()
