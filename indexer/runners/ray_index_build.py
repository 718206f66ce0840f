"""An on-disk index generation's shards encoded as Ray tasks, in parallel across the cluster (ondisk.build's
`encode`; `EmbeddedStore.save_index(encode_shards=RayShards(address))`).

The trained, empty index is serialised once into the object store. Each task opens the store's vector file
read-only at the same path (the Ray runner already requires every node to see the same paths), encodes its shard's
ids into a clone of the trained index, and writes the shard file under a temporary name renamed into place, so a
retried task never leaves half a shard. The calibration's exact top-k are computed where the vectors are read: each
task returns its shard's top-k for the queries, which the driver merges, so the driver never reads the vectors.
"""

from pathlib import Path

import faiss
import numpy as np

from indexer.store import ann
from indexer.store.ondisk import ShardWork, encode_shard
from indexer.store.vectors import VectorFile


class RayShards:
    """ondisk.Encode on the Ray cluster at `address`; after a build, `task_peaks_mb` holds each task's peak RSS."""

    def __init__(self, address: str = "default"):
        self.address = address
        self.task_peaks_mb: list[float] = []

    def __call__(self, work: ShardWork) -> list[str]:
        # Imported here, not at the top: the tasks import this module, and need none of the indexing pipeline.
        from indexer.runners.ray import check_every_node_reads, connect

        ray = connect(self.address)
        check_every_node_reads(ray, work.scratch)  # a clear error for a store on the driver's own disk
        # A fresh worker a task (max_calls=1): its peak is the task's own, and no shard's memory outlives it.
        task = ray.remote(max_calls=1)(encode_task)
        trained = ray.put(faiss.serialize_index(work.trained))
        queries = ray.put([(truth.queries, truth.k) for truth in work.truths])
        refs = [
            task.remote(trained, str(work.vector_file), work.dim, ids, str(work.scratch / f"shard-{n}.faiss"), queries)
            for n, ids in enumerate(work.shards)
        ]
        paths, self.task_peaks_mb = [], []
        for path, tops, peak_mb in ray.get(refs):
            for truth, (scores, ids) in zip(work.truths, tops, strict=True):
                truth.merge(scores, ids)
            paths.append(path)
            self.task_peaks_mb.append(peak_mb)
        return paths


def encode_task(
    trained: np.ndarray, vector_file: str, dim: int, ids: np.ndarray, path: str, queries: list[tuple[np.ndarray, int]]
) -> tuple[str, list[tuple[np.ndarray, np.ndarray]], float]:
    """Ray task: one shard encoded and written; (its file, its top-k (scores, ids) for each set of queries, this
    worker's peak RSS in MB)."""
    truths = [ann.ExactTop(q, k) for q, k in queries]
    vectors = VectorFile(Path(vector_file), dim)
    try:
        encode_shard(faiss.deserialize_index(trained), vectors, ids, Path(path), truths)
    finally:
        vectors.close()
    return path, [(truth.scores, truth.ids) for truth in truths], peak_rss_mb()


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB (Linux's VmHWM: unlike ru_maxrss, not carried over from the process
    that started it); NaN where the system does not say."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")
