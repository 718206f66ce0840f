"""Micro-batching of query texts for the service: requests that arrive together share one model call.

A text tower's cost per call is mostly fixed overhead at query lengths (tokenising, dispatching twelve
layers of small matrix products), so eight queries in one call cost about twice one query, not eight
times. Each worker thread takes whatever queued up while it was busy, up to `max_batch`.
"""

import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future

import numpy as np


class TextBatcher:
    """Embeds texts on `workers` threads, batching the requests waiting for each thread."""

    def __init__(self, embed_texts: Callable[[Sequence[str]], np.ndarray], workers: int, max_batch: int = 16):
        self.embed_texts = embed_texts
        self.max_batch = max_batch
        self.queue: queue.SimpleQueue[tuple[str, Future] | None] = queue.SimpleQueue()
        self.threads = [threading.Thread(target=self.work, name=f"batcher-{i}", daemon=True) for i in range(workers)]
        for thread in self.threads:
            thread.start()

    def submit(self, text: str) -> Future:
        """A future for the text's unit vector."""
        future: Future = Future()
        self.queue.put((text, future))
        return future

    def embed(self, text: str) -> np.ndarray:
        """The text's unit vector, waiting for the batch it joins."""
        return self.submit(text).result()

    def work(self) -> None:
        while (item := self.queue.get()) is not None:
            batch = [item]
            while len(batch) < self.max_batch:
                try:
                    item = self.queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:  # closing: let this batch finish, then stop
                    self.queue.put(None)
                    break
                batch.append(item)
            try:
                vectors = self.embed_texts([text for text, _ in batch])
            except Exception as e:  # the callers see the error, the worker lives on
                for _, future in batch:
                    future.set_exception(e)
            else:
                for (_, future), vector in zip(batch, vectors, strict=True):
                    future.set_result(vector)

    def close(self) -> None:
        """Finish what is queued and stop the threads."""
        for _ in self.threads:
            self.queue.put(None)
        for thread in self.threads:
            thread.join()
