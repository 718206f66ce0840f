"""Ray ingest past one machine's sizes: does the pipeline keep embedding actors busy, and does the driver's memory
stay flat as the listing grows?

1. Throughput. No GPU here, so the embedding actors are stand-ins that embed at a fixed rate (ACTOR_RATE images/s
   each, random unit vectors) on a local cluster that declares ACTORS GPUs; everything else is the real pipeline
   (`index_folder` on Ray: listing tasks, decode tasks, shards written by the actors and taken in by the store).
   Target: at least 90% of the actors' summed rate once decoding has the CPUs for it, measured from the actors'
   first batch to their last. Run at two rates: one this machine's cores can feed (the target), and one they
   cannot, whose outcome is the rate the cores here decode for the pipeline.
2. The driver's memory for a MANIFEST-entry listing: listing tasks that make their folders' files synthetically
   (MANIFEST / FOLDERS entries each, no files on disk: 10M inodes would take hours to create) go through the same
   merge with the store's rows into the same parts of work, in a driver process of its own that imports what
   `clipdex index --ray` needs before it loads a model (it loads one only once there is work).
   Target: the driver's peak RSS under 500 MB at 10M entries.

    python -m bench.ray_ingest        (BENCH_QUICK=1: 1M-entry listing, fewer images)
"""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from rich.console import Console

from bench.smoke import CLIP_DIM, DATA, announce, pick
from indexer.models.cpu import cpu_line
from indexer.quiet import silenced
from indexer.runners import manifest
from indexer.runners import ray as ray_runner
from indexer.runners.work import stored_files
from indexer.scan import FileStat
from indexer.settings import Settings
from indexer.store import get_root, open_store

QUICK = os.environ.get("BENCH_QUICK", "") not in ("", "0")
ACTORS = 2  # stand-in GPUs
# Images/s of one stand-in actor: a rate the cores here can feed, then one they cannot (the decoding's ceiling).
ACTOR_RATES = pick((60.0, 240.0), (200.0,))
RAY_QUIET = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_BACKEND_LOG_LEVEL": "fatal"}  # 127.0.0.1 only; no noise
console = Console(highlight=False)  # images/s one stand-in actor embeds
IMAGES = pick(1_200 if QUICK else 4_800, 40)
MANIFEST = pick(1_000_000 if QUICK else 10_000_000, 20_000)
FOLDERS = pick(1_000, 10)
RATE_TARGET, MEMORY_TARGET_MB = 0.90, 500


class StandInEmbedder:
    """Embeds at a fixed rate: the time a GPU would take, without one. Each batch's start and end go to `times`."""

    def __init__(self, dim: int, times: Path):
        self.dim, self.times, self.batch_size = dim, times, 32
        self.rate = float((times / "rate").read_text())  # the driver's, for this run
        self.rng = np.random.default_rng(os.getpid())

    def embed_pixels(self, pictures: list) -> np.ndarray:
        started = time.time()
        time.sleep(len(pictures) / self.rate)
        with open(self.times / f"{os.getpid()}.txt", "a") as f:
            f.write(f"{started} {time.time()} {len(pictures)}\n")
        vectors = self.rng.standard_normal((len(pictures), self.dim)).astype(np.float32)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


class StandInActor(ray_runner.EmbedActor):
    def __init__(self, model: str, settings: Settings, device: str, shards: str | None):
        self.embedder = StandInEmbedder(CLIP_DIM, Path(settings.cache_dir) / "actor-times")
        self.name, self.shards = f"{ray_runner.worker_name()}:{device}", shards


def synthetic_plan(root: Path, units: int | None = None) -> manifest.Plan:
    """FOLDERS folders for tasks to 'walk', nothing listed by the driver."""
    folders = [root / f"folder{n:05d}" for n in range(FOLDERS)]
    return manifest.Plan(files=[], folders=folders, seen=frozenset(), found=manifest.Found())


def synthetic_walk_and_diff(root: Path, folder: Path, seen, location: str, root_id: int, min_rows: int, parts: int):
    """A listing task that 'finds' MANIFEST / FOLDERS files, sorted as a walk's are, and merges them with the store's
    rows under the folder as the real task does."""
    count = MANIFEST // FOLDERS
    prefix = folder.relative_to(root).as_posix()
    files = [FileStat(f"{prefix}/IMG_{n:07d}.jpg", 3_000_000, n) for n in range(count)]
    scan = manifest.StreamedScan(found=manifest.Found(count=count))
    rows = stored_files(open_store(location), root_id, *manifest.folder_range(root, folder))
    yield from manifest.changed_parts(files, rows, (), manifest.part_size(files, min_rows, parts), scan)
    yield scan


def memory_mb() -> dict[str, float]:
    """This process's resident memory, MB: now, at its peak (VmHWM: ru_maxrss would keep the forking parent's), its
    own heap's part (anonymous), and the shared memory it maps (Ray's object store, where the parts of work go)."""
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    keys = {"rss": "VmRSS", "peak": "VmHWM", "anon": "RssAnon", "shared": "RssShmem"}
    return {name: int(status[key].split()[0]) / 1024 for name, key in keys.items()}


def throughput(folder: Path, settings: Settings, actor_rate: float) -> None:
    """Index the folder on Ray with the stand-in actors; their summed rate from the first batch embedded to the
    last, against what they could do."""
    from indexer.indexing import index_folder

    times = Path(settings.cache_dir) / "actor-times"
    shutil.rmtree(times, ignore_errors=True)
    times.mkdir(parents=True)
    (times / "rate").write_text(str(actor_rate))
    ray_runner.EmbedActor = StandInActor
    store = DATA / "stores" / "ray-ingest"
    shutil.rmtree(store, ignore_errors=True)
    started = time.perf_counter()
    summary = index_folder(folder, settings.model_copy(update={"store": str(store)}), show_progress=False)
    total = time.perf_counter() - started
    shutil.rmtree(store, ignore_errors=True)
    logs = [f for f in times.iterdir() if f.suffix == ".txt"]
    batches = np.array([line.split() for f in logs for line in f.read_text().splitlines()], dtype=float)
    span = batches[:, 1].max() - batches[:, 0].min()
    embedded, summed = batches[:, 2].sum(), ACTORS * actor_rate
    rate = embedded / span
    verdict = "met" if rate >= RATE_TARGET * summed else "missed"
    console.print(f"  {summary.line()}")
    console.print(
        f"  actors' rate     {rate:7.1f} images/s from their first batch to their last ({span:.1f} s) = "
        f"{rate / summed:.0%} of their summed {summed:.0f} (target {RATE_TARGET:.0%}: {verdict})"
    )
    console.print(
        f"  end to end       {summary.indexed / total:7.1f} images/s (the driver's model load and Ray's start-up in it)"
    )


def listing(address: str) -> None:
    """The driver-memory run, in a process of its own: prints its figures as JSON."""
    import ray

    with silenced(2):
        ray.init(address=address, log_to_driver=False, logging_level="ERROR")
    root = DATA / "manifest-root"
    root.mkdir(parents=True, exist_ok=True)
    store_dir = DATA / "stores" / "ray-ingest-manifest"
    shutil.rmtree(store_dir, ignore_errors=True)
    store = open_store(store_dir, model="stand-in", dim=CLIP_DIM, create=True)
    with store.session() as s:
        root_id = get_root(s, root).id
        s.commit()
    manifest.plan, manifest.walk_and_diff = synthetic_plan, synthetic_walk_and_diff
    before = memory_mb()
    started = time.perf_counter()
    scan, streamed = ray_runner.list_and_diff(ray, root, root_id, store)
    seconds = time.perf_counter() - started
    after = memory_mb()
    assert streamed.todo == MANIFEST - MANIFEST % FOLDERS and scan.unchanged == 0
    shutil.rmtree(store_dir, ignore_errors=True)
    figures = {"todo": streamed.todo, "parts": len(streamed.parts), "seconds": seconds}
    print(json.dumps(figures | {"before": before, "after": after}))


def driver_memory(address: str) -> None:
    env = {**os.environ, **RAY_QUIET}
    run = subprocess.run(
        [sys.executable, "-m", "bench.ray_ingest", "--listing", address],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    f = json.loads(run.stdout.strip().splitlines()[-1])
    before, after = f["before"], f["after"]
    verdict = "met" if after["peak"] <= MEMORY_TARGET_MB else "missed"
    console.print(
        f"  {f['todo']:,} entries listed by {FOLDERS} tasks and merged with the store in {f['seconds']:.1f} s "
        f"({f['todo'] / f['seconds']:,.0f} entries/s) into {f['parts']:,} parts of work"
    )
    console.print(
        f"  driver RSS       {before['rss']:.0f} MB before the listing, peak {after['peak']:.0f} MB (target <= "
        f"{MEMORY_TARGET_MB} MB: {verdict}); after it {after['rss']:.0f} MB: {after['anon']:.0f} MB its own heap "
        f"({before['anon']:.0f} before), {after['shared']:.0f} MB Ray's object store mapped (the parts of work)"
    )


def main() -> None:
    from bench.indexing import load, make_images, vit_b32

    console.print(cpu_line())
    announce(console.print)
    console.print(f"[bold]Ray ingest benchmark[/bold]{' (quick)' if QUICK else ''}; {load()}")
    model_dir = vit_b32()
    paths = make_images(DATA / f"320x240-{IMAGES}", IMAGES, (320, 240))
    settings = Settings(
        model=str(model_dir),
        device="cpu",
        cache_dir=(DATA / "cache").resolve(),  # the stand-in actors write their batches' times there
        ray="default",
        batch_size=32,
        commit_every=64,  # chunks: an actor left alone with the last one idles the other
    )
    os.environ.update(RAY_QUIET)
    import ray

    started = time.perf_counter()
    cpus = os.cpu_count() or 1
    with silenced(2):
        ray.init(num_cpus=cpus, num_gpus=ACTORS, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    console.print(f"Ray cluster: {cpus} CPUs, {ACTORS} stand-in GPUs, started in {time.perf_counter() - started:.1f} s")
    for rate in ACTOR_RATES:
        console.print(f"\n[bold]throughput[/bold]: {IMAGES} JPEGs 320x240, {ACTORS} actors at {rate:.0f} images/s")
        throughput(paths[0].parent, settings, rate)
    console.print(f"\n[bold]driver memory[/bold]: a {MANIFEST:,}-entry listing into an empty store")
    driver_memory(ray.get_runtime_context().gcs_address)
    ray.shutdown()


if __name__ == "__main__":
    if sys.argv[1:2] == ["--listing"]:
        listing(sys.argv[2])
    else:
        main()
