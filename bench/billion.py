"""Toward a billion images: the on-disk index (indexer/store/ondisk.py) measured at the sizes this machine holds,
with its growth fitted and projected to 1B.

For each size, a synthetic CLIP-like 512-d store as bench/scale.py makes it, indexed with a budget of BUDGET_PER_IMAGE
bytes an image (16 GB at 1B), below every in-memory kind, so the codes live on disk. It prints the build's time and
peak memory, bytes per image on disk, and from a fresh process searching as the service does: resident memory
(anonymous and file-backed) after the queries, recall@10 against exact search on held-out text-like and image-like
queries, the lists probed and re-rank depth, search p50/p95 warm, and p50 cold (every file of the store dropped
from the page cache before each query). Then the fitted growth (a power law in the size) and the projection.

With --ray, each size's generation is built with its shards encoded as Ray tasks (indexer/runners/ray_index_build.py)
on a local cluster of 2 CPUs, RAY_SHARDS shards, and searched: the build's time, the peak memory of the driver and
of the largest task. (Built once, not once in process and once on Ray: at 20M a build takes most of an hour.) A
smoke run builds on Ray at RAY_SMOKE_SIZE, after its sizes.

    python -m bench.billion [--sizes 1000000,5000000,20000000] [--ray]     (BENCH_QUICK=1: 200,000 and 1,000,000)
"""

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.scale import disk_bytes, percentile, planted_collection, status_kb
from bench.smoke import SMOKE, announce, pick
from indexer.models.cpu import cpu_line
from indexer.store import ondisk, open_store
from indexer.store.ann import recall_at

BUDGET_PER_IMAGE = 16  # bytes of index memory an image: under the smallest in-memory kind (PQ32x4fsr, 24 B)
COLD_QUERIES = pick(30, 3)
RAY_CPUS = 2
RAY_SHARDS = 4  # shards (tasks) a Ray build cuts the vectors into, so that each CPU has more than one
RAY_SMOKE_SIZE = 3000
TARGETS = (
    "at 20M: service RSS <= 1 GB, recall@10 >= 0.95 (text-like and image-like), search p50 <= 100 ms warm, "
    "<= 1.7 KB an image on disk"
)


def build(store_dir: Path, count: int, on_ray: bool) -> dict:
    """In a fresh process (its peak memory is the build's own, or with `on_ray` the driver's): the on-disk index over
    the planted store."""
    figures, shards = {}, None
    if on_ray:
        from indexer.runners.ray_index_build import RayShards

        started = time.perf_counter()
        start_local_cluster()
        figures["cluster_seconds"] = time.perf_counter() - started
        ondisk.SHARD_VECTORS = math.ceil(count / RAY_SHARDS)
        shards = RayShards()
    store = open_store(store_dir, index_memory=BUDGET_PER_IMAGE * count)
    started = time.perf_counter()
    store.save_index(force_rebuild=True, encode_shards=shards)
    return figures | {
        "seconds": time.perf_counter() - started,
        "peak_mb": status_kb("VmHWM") / 1024,  # not ru_maxrss: Linux carries it over from the parent across exec
        "task_peak_mb": max(shards.task_peaks_mb) if shards else None,
        "tasks": len(shards.task_peaks_mb) if shards else None,
        "index": store.index_description(),
        "on_disk": store.kind.on_disk,
    }


def start_local_cluster() -> None:
    """A Ray cluster of RAY_CPUS CPUs on this machine alone (127.0.0.1), for this process."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # listen on 127.0.0.1 only
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    ray.init(
        address="local",  # a new cluster, never one a `ray start` left running here
        num_cpus=RAY_CPUS, num_gpus=0, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
    )  # fmt: skip


def evict(store_dir: Path) -> None:
    """Drop the store's files from the page cache (what a cold start, or a collection far larger than RAM, sees)."""
    for path in store_dir.iterdir():
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def search(store_dir: Path, count: int, queries_file: Path) -> dict:
    """In a fresh process, as the service searches (one thread a request): the figures of one size."""
    import faiss

    faiss.omp_set_num_threads(1)
    queries = np.load(queries_file)
    truth = np.load(queries_file.with_suffix(".truth.npy"))
    store = open_store(store_dir, index_memory=BUDGET_PER_IMAGE * count)
    store.serving = True
    store.search(queries[0], 10)
    found, seconds = [], []
    for query in queries:
        started = time.perf_counter()
        found.append([i for i, _ in store.search(query, 10)])
        seconds.append(time.perf_counter() - started)
    half = len(queries) // 2  # the first half text-like, the second image-like
    cold = []
    for query in queries[:COLD_QUERIES]:
        evict(store_dir)
        started = time.perf_counter()
        store.search(query, 10)
        cold.append(time.perf_counter() - started)
    return {
        "recall_text": recall_at(found[:half], truth[:half]),
        "recall_image": recall_at(found[half:], truth[half:]),
        "p50_ms": percentile(seconds, 50),
        "p95_ms": percentile(seconds, 95),
        "cold_p50_ms": percentile(cold, 50),
        "rss_mb": status_kb("VmRSS") / 1024,
        "anon_mb": status_kb("RssAnon") / 1024,
        "file_mb": status_kb("RssFile") / 1024,
        "nprobe": store.tuning.nprobe,
        "rerank": store.tuning.rerank,
        "lists": store.index.nlist,
    }


def child(mode: str, *args: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "bench.billion", f"--{mode}", *args], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def fit(sizes: list[int], values: list[float]) -> tuple[float, float]:
    """(exponent, value at 1B) of a power law through the points (least squares in log-log)."""
    slope, intercept = np.polyfit(np.log(sizes), np.log(values), 1)
    return float(slope), float(math.exp(intercept + slope * math.log(1e9)))


def planted(root: Path, count: int) -> Path:
    """`root/store-{count}` planted, with its held-out queries and their exact top-10 beside it (queries.npy,
    queries.truth.npy: text-like then image-like); a store a kept run planted whole is reused (planting 20M takes
    over an hour)."""
    store_dir = root / f"store-{count}"
    if (root / "queries.truth.npy").exists():
        print(f"{count:,} images: the store planted in {root}", flush=True)
        return store_dir
    shutil.rmtree(store_dir, ignore_errors=True)  # what a killed run left
    _, truths = planted_collection(store_dir, count)
    np.save(root / "queries.npy", np.vstack([truths["text-like"].queries, truths["image-like"].queries]))
    np.save(root / "queries.truth.tmp.npy", np.vstack([truths["text-like"].ids, truths["image-like"].ids]))
    os.replace(root / "queries.truth.tmp.npy", root / "queries.truth.npy")  # last: it marks the store whole
    return store_dir


def measure(count: int, keep: Path | None, on_ray: bool) -> dict:
    root = keep / f"billion-{count}" if keep else Path(tempfile.mkdtemp(prefix="clipdex-bench-billion-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        store_dir = planted(root, count)
        built = child("build", str(store_dir), str(count), *(["--ray"] if on_ray else []))
        figures = built | child("search", str(store_dir), str(count), str(root / "queries.npy"))
        figures["bytes_per_image"] = disk_bytes(store_dir) / count
        print(
            f"  {figures['index']}{'' if figures['on_disk'] else ' (in memory!)'}: "
            f"built in {figures['seconds']:.0f} s, peak {figures['peak_mb']:,.0f} MB{ray_build(figures)}; "
            f"{figures['bytes_per_image']:,.0f} bytes/image on disk\n"
            f"  search: {figures['nprobe']} of {figures['lists']} lists, re-rank x{figures['rerank']}; recall@10 "
            f"text-like {figures['recall_text']:.3f}, image-like {figures['recall_image']:.3f}; p50 "
            f"{figures['p50_ms']:.1f} ms, p95 {figures['p95_ms']:.1f} ms warm, p50 {figures['cold_p50_ms']:.0f} ms "
            f"cold; RSS {figures['rss_mb']:,.0f} MB (anonymous {figures['anon_mb']:,.0f}, file-backed "
            f"{figures['file_mb']:,.0f})",
            flush=True,
        )
        return figures
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)


def ray_build(figures: dict) -> str:
    """What a build on Ray adds to its line."""
    if figures.get("tasks") is None:
        return ""
    return (
        f" driver and {figures['task_peak_mb']:,.0f} MB the largest of {figures['tasks']} tasks, on Ray ({RAY_CPUS} "
        f"CPUs, local cluster started in {figures['cluster_seconds']:.0f} s)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    quick = os.environ.get("BENCH_QUICK", "") not in ("", "0")
    default = pick("200000,1000000" if quick else "1000000,5000000,20000000", "30000")
    parser.add_argument("--sizes", default=default, help="collection sizes")
    parser.add_argument("--keep", type=Path, help="plant the stores here, keep them and reuse them")
    parser.add_argument("--ray", action="store_true", help="build each size with Ray tasks on a local cluster")
    parser.add_argument("--build", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--search", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if SMOKE:  # a few thousand vectors go past the exact limit only if it is lowered
        import indexer.store.ann as ann

        ann.EXACT_LIMIT = 1000
    if args.build:
        return print(json.dumps(build(Path(args.build[0]), int(args.build[1]), args.ray)))
    if args.search:
        return print(json.dumps(search(Path(args.search[0]), int(args.search[1]), Path(args.search[2]))))
    print(cpu_line())
    announce()
    print(f"billion: the on-disk index, {BUDGET_PER_IMAGE} bytes of index memory an image; targets {TARGETS}")
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = [measure(count, args.keep, args.ray and not SMOKE) for count in sizes]
    if SMOKE:
        measure(RAY_SMOKE_SIZE, args.keep, on_ray=True)
    if len(sizes) < 2:
        return
    for name, key, unit in (
        ("search p50 warm", "p50_ms", "ms"),
        ("search p50 cold", "cold_p50_ms", "ms"),
        ("service RSS", "rss_mb", "MB"),
        ("bytes an image", "bytes_per_image", "B"),
        ("build time", "seconds", "s"),
    ):
        exponent, at_billion = fit(sizes, [row[key] for row in rows])
        print(f"  {name}: grows as size^{exponent:.2f}; at 1B about {at_billion:,.0f} {unit}")


if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    main()
