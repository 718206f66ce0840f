"""Indexing on Ray against the local pipeline on this machine, and the scaling model for a GPU cluster.

Full-size ViT-B/32 with random weights, the same 300 web-sized JPEGs (1024x768) as bench/indexing.py. Both paths
run end to end through `index_folder` into a fresh store, model loading included, twice each; the best run
counts. The Ray path runs on a local cluster (127.0.0.1, one CPU per core) started once beforehand, as a user's
cluster would be; its start-up is printed apart.

The scaling model takes what is measured here, the decode cost per image and the embedding rate of one actor,
and prints the throughput the same code would reach on N GPUs: each GPU's actor embeds at most its rate, the
decode tasks at most (CPU cores) / (decode cost), so decoding becomes the limit once a GPU has fewer cores than
its rate times the decode cost. The GPU rate is not measured here (no GPU): it is the one the issue states for a
ViT-B/32 on one good GPU, and `make bench-gpu` measures it where there is one.
"""

import os
import shutil
import time

from bench.indexing import DATA, QUICK, console, decode_cost, encode_cost, load, make_images, vit_b32
from bench.smoke import announce, pick
from indexer.models.cpu import cpu_line
from indexer.quiet import silenced
from indexer.settings import Settings, cpu_count
from indexer.worker import WorkerConfig

COUNT = pick(60 if QUICK else 300, 4)
GPU_RATE = 1_500  # ViT-B/32 images/s on one good GPU (issue 14); clip-retrieval: 7,000 on 8 A100s, resize-bound
CORES_PER_GPU = (4, 8, 16)  # a cloud 8-GPU node has 64-128 vCPUs
OVERHEAD_TARGET = 0.20


def best_rate(folder, settings: Settings, runs: int) -> tuple[float, str]:
    """Best images/s of `runs` fresh indexing runs, and the summary line of that run."""
    from indexer.indexing import index_folder

    best = (0.0, "")
    for run in range(runs):
        store = DATA / "stores" / f"ray-bench-{run}"
        shutil.rmtree(store, ignore_errors=True)
        summary = index_folder(folder, settings.model_copy(update={"store": str(store)}), show_progress=False)
        best = max(best, (summary.images_per_second, summary.line()))
        shutil.rmtree(store, ignore_errors=True)
    return best


def main() -> None:
    from indexer.models.runtimes import make_embedder

    cores = cpu_count()
    console.print(cpu_line())
    announce(console.print)
    console.print(f"[bold]Ray benchmark[/bold]{' (quick)' if QUICK else ''}; {load()}")
    model_dir = vit_b32()
    settings = Settings(model=str(model_dir), device="cpu", cache_dir=DATA / "cache")
    embedder = make_embedder(str(model_dir), settings)  # exports to ONNX once, before anything is timed
    paths = make_images(DATA / f"1024x768-{COUNT}", COUNT, (1024, 768))
    folder = paths[0].parent
    runs = pick(1 if QUICK else 2, 1)

    local_rate, local_line = best_rate(folder, settings, runs)
    console.print(f"local pipeline   {local_rate:7.1f} images/s ({local_line})")

    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # the local cluster listens on 127.0.0.1 only
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")  # as clipdex's own connect() (ray#57733)
    import ray

    started = time.perf_counter()
    with silenced(2):
        ray.init(num_cpus=cores, num_gpus=0, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    console.print(f"Ray cluster      started in {time.perf_counter() - started:.1f} s (once per cluster, not per run)")
    ray_rate, ray_line = best_rate(folder, settings.model_copy(update={"ray": "default"}), runs)
    ray.shutdown()
    overhead = 1 - ray_rate / local_rate
    verdict = "met" if overhead <= OVERHEAD_TARGET else "missed"
    console.print(f"Ray              {ray_rate:7.1f} images/s ({ray_line})")
    console.print(
        f"ratio            {ray_rate / local_rate:7.2f} (Ray overhead {overhead:.0%} on {cores} cores; "
        f"target at most {OVERHEAD_TARGET:.0%}: {verdict}) ({load()})"
    )

    config = WorkerConfig(prep=embedder.prep, max_pixels=settings.max_pixels, known_hashes=frozenset())
    console.print("\n[bold]scaling model[/bold] (measured here: decode cost and one CPU actor; GPU rate assumed)")
    web_ms, pixels = decode_cost(paths[: 20 if QUICK else 60], config)
    photos = make_images(DATA / "4000x3000-300", pick(10 if QUICK else 30, 2), (4000, 3000))
    photo_ms, _ = decode_cost(photos, config)
    _, actor_rate = encode_cost(embedder, pixels, pick(2 if QUICK else 6, 1))
    console.print(f"  decode           {web_ms:7.1f} core-ms/image web 1024x768, {photo_ms:.1f} photo 4000x3000")
    console.print(f"  CPU actor        {actor_rate:7.1f} images/s (ViT-B/32 on {cores} cores of this machine)")
    console.print(f"  GPU actor        {GPU_RATE:7,d} images/s (assumed: ViT-B/32 fp16 on one good GPU)")
    for name, ms in (("web 1024x768", web_ms), ("photo 4000x3000", photo_ms)):
        need = GPU_RATE * ms / 1000
        console.print(f"  {name}: a GPU needs {need:.0f} decoding cores to stay busy")
        header = "    GPUs " + "".join(f"{f'{c} cores/GPU':>16}" for c in CORES_PER_GPU)
        console.print(header)
        for gpus in (1, 2, 4, 8, 16, 32, 64):
            cells = []
            for per_gpu in CORES_PER_GPU:
                decode_limit = gpus * per_gpu * 1000 / ms
                rate = min(gpus * GPU_RATE, decode_limit)
                cells.append(f"{rate:>10,.0f} {'decode' if decode_limit < gpus * GPU_RATE else 'GPU':>5}")
            console.print(f"    {gpus:4d} " + "".join(cells))


if __name__ == "__main__":
    main()
