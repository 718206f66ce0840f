"""Indexing speed on this machine: decode and encode cost, end-to-end rate, pipeline efficiency, memory, re-runs.

Full-size ViT-B/32 with random weights (same compute as the real one), 300 photo-sized JPEGs (4000x3000)
and 300 web-sized ones (1024x768), all generated once under data/bench/. Run with `make bench`;
BENCH_QUICK=1 uses 30 images per size and 2,000 files for the re-run, for development.

Figures in core-milliseconds are CPU time (all threads) per image, so they hold up on a loaded machine
better than wall-clock rates; the load average is printed with every figure because other work on the
machine still slows everything down.
"""

import functools
import os
import resource
import shutil
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image
from rich.console import Console

from bench.smoke import DATA, SMOKE, announce, pick
from indexer.models.cpu import cpu_line
from indexer.models.onnx_runtime import AGREEMENT_BAR
from indexer.settings import Settings, cpu_count
from indexer.worker import WorkerConfig, load_file, setup_worker

if TYPE_CHECKING:
    from indexer.models.embedder import Embedder

# torch-importing modules are imported inside functions: the spawned decode workers import this module again.

QUICK = os.environ.get("BENCH_QUICK", "") not in ("", "0")
COUNT = pick(30 if QUICK else 300, 4)
RERUN_FILES = pick(2_000 if QUICK else 10_000, 20)
# Per image: 12 layers x 50 tokens x 2 x (4 x 768^2 + 2 x 768 x 3072) multiply-adds, plus patch embedding.
VIT_B32_GFLOP = 8.8
SIZES = {"photo 4000x3000": (4000, 3000), "web 1024x768": (1024, 768)}
console = Console(highlight=False)


def vit_b32() -> Path:
    """The benches' full-size ViT-B/32 with random weights (a smoke run's tiny CLIP), saved once under DATA."""
    return saved_clip("tiny" if SMOKE else "vit-b-32")


def tiny_clip() -> Path:
    """The tests' tiny CLIP, saved once under DATA: for figures where the model is beside the point."""
    return saved_clip("tiny")


def saved_clip(size: str) -> Path:
    """A random-weight CLIP of save_clip's `size`, saved once under DATA."""
    from tests.support.model_factory import save_clip

    model_dir = DATA / ("tiny-clip" if size == "tiny" else size)
    if not (model_dir / "config.json").exists():
        save_clip(model_dir, size=size)
    return model_dir


def load() -> str:
    return "load avg " + " ".join(f"{x:.1f}" for x in os.getloadavg())


def bench_photo(seed: int, size: tuple[int, int], noise: np.ndarray) -> Image.Image:
    """A photo-like image at full size: a smooth scene drawn small and upscaled, plus sensor-like noise."""
    from tests.support.photos import photo

    w, h = size
    scene = photo(seed, (max(w // 4, 64), max(h // 4, 48))).resize((w, h), Image.Resampling.BICUBIC)
    shifted = np.roll(noise, (seed * 977, seed * 1571), axis=(0, 1))
    return Image.fromarray(np.clip(np.asarray(scene, dtype=np.int16) + shifted, 0, 255).astype(np.uint8))


@functools.cache
def grain(size: tuple[int, int]) -> np.ndarray:
    """One noise field per size and process, shifted per image: drawing fresh noise is most of the cost."""
    return np.random.default_rng(0).normal(0, 7, (size[1], size[0], 3)).astype(np.int16)


def write_image(args: tuple[Path, int, tuple[int, int]]) -> None:
    path, seed, size = args
    tmp = path.with_suffix(".tmp")  # an interrupted run leaves no truncated JPEG behind
    bench_photo(seed, size, grain(size)).save(tmp, "JPEG", quality=93)
    tmp.replace(path)


def make_images(folder: Path, count: int, size: tuple[int, int]) -> list[Path]:
    """`count` JPEGs of `size` in folder, generated once (in parallel) and kept for later runs."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"img{seed:04d}.jpg" for seed in range(count)]
    missing = [(p, seed, size) for seed, p in enumerate(paths) if not p.exists()]
    if missing:
        console.print(f"generating {len(missing)} {size[0]}x{size[1]} JPEGs in {folder} (once)")
        with ProcessPoolExecutor(cpu_count()) as pool:
            list(pool.map(write_image, missing))
    return paths


def make_small_files(folder: Path, count: int) -> None:
    """`count` distinct 32x32 JPEGs for the unchanged re-run figure (file count matters there, not size)."""
    folder.mkdir(parents=True, exist_ok=True)
    if len(list(folder.glob("*.jpg"))) >= count:
        return
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"s{i:05d}.jpg")


def decode_cost(paths: list[Path], config: WorkerConfig) -> tuple[float, list[np.ndarray]]:
    """CPU ms per image of what a decode worker does (read, hash, draft-decode, resize, crop), one process."""
    setup_worker(config)
    start = time.process_time()
    pixels = [load_file(p).decoded.pixels for p in paths]
    return (time.process_time() - start) * 1000 / len(paths), pixels


def encode_cost(embedder: "Embedder", pixels: list[np.ndarray], batches: int) -> tuple[float, float]:
    """(CPU ms per image, wall images/s) of the encoder alone on ready, normalised batches."""
    from indexer.models.embedder import image_inputs

    size = embedder.batch_size
    batch = image_inputs([pixels[i % len(pixels)] for i in range(size)], embedder.prep)
    embedder.image_features(batch)  # warm-up: first-run allocations and kernel selection
    start_cpu, start = time.process_time(), time.perf_counter()
    for _ in range(batches):
        embedder.image_features(batch)
    images = batches * size
    return (time.process_time() - start_cpu) * 1000 / images, images / (time.perf_counter() - start)


def matmul_peak_gflops(threads: int) -> float:
    """fp32 matrix-multiply throughput of this machine right now: one ViT-B/32-sized MatMul in ONNX Runtime."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    m, k, n = 800, 768, 3072  # 16 images x 50 tokens through an MLP's first layer
    weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((k, n), dtype=np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "matmul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    x = {"x": np.random.default_rng(1).standard_normal((m, k), dtype=np.float32)}
    session.run(None, x)
    start, runs = time.perf_counter(), pick(30, 2)
    for _ in range(runs):
        session.run(None, x)
    return 2 * m * k * n * runs / (time.perf_counter() - start) / 1e9


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (decode workers are joined when a run ends)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def vm_hwm_mb(pid: int | str = "self") -> float:
    """Peak resident memory (VmHWM) of a process, in MB; 0 when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class WorkerPeaks(threading.Thread):
    """Polls the peak RSS of this process's children (the decode workers) while a run goes on."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak, self.stop = 0.0, threading.Event()

    def run(self) -> None:
        me = str(os.getpid())
        while not self.stop.wait(0.2):
            for stat in Path("/proc").glob("[0-9]*/stat"):
                try:
                    if stat.read_text().rsplit(")", 1)[1].split()[1] == me:
                        self.peak = max(self.peak, vm_hwm_mb(stat.parent.name))
                except (OSError, IndexError):
                    pass


def main() -> None:
    from indexer.indexing import index_folder
    from indexer.models.loading import load_model
    from indexer.models.onnx_runtime import OnnxEmbedder
    from indexer.models.runtimes import make_embedder
    from indexer.models.torch_runtime import TorchEmbedder

    cores = cpu_count()
    console.print(cpu_line())
    announce(console.print)
    console.print(f"[bold]indexing benchmark[/bold]{' (quick)' if QUICK else ''}; {load()}")
    model_dir = vit_b32()
    settings = Settings(model=str(model_dir), device="cpu", cache_dir=DATA / "cache")

    started = time.perf_counter()
    embedder = make_embedder(str(model_dir), settings)
    console.print(
        f"model ViT-B/32 (random weights), runtime {embedder.runtime}, batch {embedder.batch_size}: "
        f"loaded in {time.perf_counter() - started:.1f} s"
    )
    config = WorkerConfig(prep=embedder.prep, max_pixels=settings.max_pixels, known_hashes=frozenset())
    batches = pick(2 if QUICK else 6, 1)

    folders = {name: make_images(DATA / f"{size[0]}x{size[1]}-{COUNT}", COUNT, size) for name, size in SIZES.items()}

    for name, paths in folders.items():
        mb = sum(p.stat().st_size for p in paths) / len(paths) / 1e6
        console.print(f"\n[bold]{name}[/bold]: {len(paths)} JPEGs, {mb:.1f} MB each")
        decode_ms, pixels = decode_cost(paths[: 12 if QUICK else 60], config)
        console.print(f"  decode           {decode_ms:7.1f} core-ms/image (read + hash + draft decode + resize)")
        encode_ms, _ = encode_cost(embedder, pixels, batches)
        console.print(f"  encode           {encode_ms:7.1f} core-ms/image ({embedder.runtime})")
        store = DATA / "stores" / name.split()[0]
        shutil.rmtree(store, ignore_errors=True)
        Path("/proc/self/clear_refs").write_text("5")  # restart VmHWM: the figure covers this run, not the export
        workers = WorkerPeaks()
        workers.start()
        cpu_before = cpu_seconds()
        summary = index_folder(paths[0].parent, settings.model_copy(update={"store": store}), False, embedder=embedder)
        used_ms = (cpu_seconds() - cpu_before) * 1000 / summary.indexed
        workers.stop.set()
        rate = summary.images_per_second
        ideal = cores / ((decode_ms + encode_ms) / 1000)
        console.print(f"  end to end       {rate:7.1f} images/s through index_folder ({summary.line()})")
        console.print(f"  efficiency       {rate / ideal:7.0%} of the {ideal:.1f} images/s {cores} idle cores allow")
        console.print(
            f"  CPU used         {used_ms:7.1f} core-ms/image by the run (decode + encode alone: "
            f"{decode_ms + encode_ms:.1f}; other work on the machine takes the rest of the cores)"
        )
        console.print(
            f"  peak RSS         {vm_hwm_mb():7.0f} MB main process (ONNX image session, no torch), "
            f"{workers.peak:.0f} MB largest decode worker ({load()})"
        )

    console.print(f"\n[bold]encoder alone[/bold] (ViT-B/32 image tower, batch {embedder.batch_size}, {cores} threads)")
    int8 = OnnxEmbedder(embedder.folder, embedder.batch_size, quantize=True) if embedder.runtime == "onnx" else None
    encoders = [
        ("torch eager fp32", TorchEmbedder(load_model(str(model_dir), "cpu"), embedder.batch_size)),
        ("onnx fp32", embedder if isinstance(embedder, OnnxEmbedder) else None),
        ("onnx int8 (opt-in)", int8),
    ]
    for name, candidate in encoders:
        if candidate is not None:
            ms, rate = encode_cost(candidate, pixels, batches)
            console.print(f"  {name:20} {ms:7.1f} core-ms/image  {rate:6.1f} images/s   ({load()})")
    peak = matmul_peak_gflops(cores)
    ms, rate = encode_cost(embedder, pixels, batches)
    share = rate * VIT_B32_GFLOP / peak
    console.print(
        f"  fp32 matrix peak measured now: {peak:.0f} GFLOP/s on {cores} threads; the default encoder "
        f"({embedder.runtime}) runs {rate:.1f} images/s x {VIT_B32_GFLOP} GFLOP = {share:.0%} of it"
    )
    if int8 is not None:
        cos = (embedder.embed_pixels(np.stack(pixels)) * int8.embed_pixels(np.stack(pixels))).sum(axis=1).min()
        console.print(
            f"  int8 vs fp32 on this CPU: cosine >= {cos:.4f} over {len(pixels)} bench images; "
            f"export-time check {int8.int8_agreement('image'):.4f} (bar {AGREEMENT_BAR})"
        )

    console.print(f"\n[bold]unchanged re-run[/bold] over {RERUN_FILES:,} files")
    small = DATA / f"small-{RERUN_FILES}"
    make_small_files(small, RERUN_FILES)
    store = DATA / "stores" / small.name
    rerun_settings = Settings(model=str(tiny_clip()), device="cpu", cache_dir=DATA / "cache", store=store)
    index_folder(small, rerun_settings, False)  # indexes the files the first time, a no-op later
    summary = index_folder(small, rerun_settings, False)
    console.print(f"  {summary.seconds:.2f} s ({summary.line()}; {load()})")


if __name__ == "__main__":
    main()
