"""Every CPU runtime of the embedding model on the machine at hand: images/s and agreement with ONNX Runtime fp32.

The image tower of a full-size ViT-B/32 (random weights: the same compute as trained ones), batch 16 photo-like
images, every core. Each runtime runs one warm-up batch (which opens it: its load time is printed) and then
BATCHES timed ones; its agreement is the lowest cosine between its vectors and ONNX Runtime fp32's over the batch.
- onnx: ONNX Runtime fp32, the reference;
- openvino, openvino-bf16: OpenVINO on the same export (bf16 only on a CPU with AVX512-BF16 or AMX);
- onnx-int8: ONNX Runtime dynamic int8, opt-in, with its own 0.99 bar;
- torch: the transformers model in torch fp32 (the fallback).
Then the choice clipdex makes on a model's first use on this CPU (indexer/models/runtime_choice.py), for each
tower, with what measuring it cost.

    python -m bench.runtimes        # BENCH_QUICK=1: 2 timed batches; BENCH_SMOKE=1: tiny CLIP, 1 batch
"""

import os
import time
from pathlib import Path

from indexer.models.cpu import cpu_line
from indexer.models.loading import canonical_name
from indexer.models.onnx_runtime import check_images, find_or_export
from indexer.models.runtime_choice import AGREEMENT, measure_tower, skip_reason
from indexer.models.runtimes import export_embedder

SMOKE = os.environ.get("BENCH_SMOKE", "") not in ("", "0")
QUICK = os.environ.get("BENCH_QUICK", "") not in ("", "0")
DATA = Path(os.environ.get("BENCH_DATA", "data/bench-smoke" if SMOKE else "data/bench"))
BATCH = 16
BATCHES = 1 if SMOKE else 2 if QUICK else 5
RUNTIMES = ("onnx", "openvino", "openvino-bf16", "onnx-int8", "torch")


def model_dir() -> Path:
    """The benches' full-size ViT-B/32 (a smoke run's tiny CLIP), saved once under DATA."""
    from tests.support.model_factory import save_clip

    size = "tiny" if SMOKE else "vit-b-32"
    folder = DATA / ("tiny-clip" if SMOKE else size)
    if not (folder / "config.json").exists():
        save_clip(folder, size=size)
    return folder


def build(runtime: str, model: Path, folder: Path):
    if runtime == "torch":
        from indexer.models.loading import load_model
        from indexer.models.torch_runtime import TorchEmbedder

        return TorchEmbedder(load_model(str(model), "cpu"), BATCH)
    return export_embedder(folder, runtime, BATCH)


def main() -> None:
    print(cpu_line())
    if SMOKE:
        print("smoke run (BENCH_SMOKE=1): tiny model, one batch; the figures below mean nothing")
    model = model_dir()
    folder = find_or_export(canonical_name(str(model)), DATA / "cache")  # the key make_embedder uses
    reference = export_embedder(folder, "onnx", BATCH)
    images = (check_images(reference.prep) * 2)[:BATCH]
    name = "tiny CLIP" if SMOKE else "ViT-B/32 (random weights)"
    threads = len(os.sched_getaffinity(0))
    print(f"{name} image tower, batch {BATCH}, {BATCHES} timed batches after one warm-up, {threads} threads")
    print(f"agreement: the lowest cosine to onnx fp32 over the batch (the bar for --runtime auto: {AGREEMENT})")
    print(f"  {'runtime':14} {'images/s':>9} {'agreement':>10} {'load + first batch':>19}")
    expected = None
    for runtime in RUNTIMES:
        reason = skip_reason(runtime)
        if reason:
            print(f"  {runtime:14} skipped: {reason}")
            continue
        clock = time.perf_counter()
        embedder = reference if runtime == "onnx" else build(runtime, model, folder)
        vectors = embedder.embed_pixels(images)
        load = time.perf_counter() - clock
        clock = time.perf_counter()
        for _ in range(BATCHES):
            embedder.embed_pixels(images)
        rate = BATCH * BATCHES / (time.perf_counter() - clock)
        expected = vectors if expected is None else expected
        agreement = float((vectors * expected).sum(axis=1).min())
        print(f"  {runtime:14} {rate:9.1f} {agreement:10.5f} {load:17.1f} s")
        del embedder

    print("the choice clipdex makes on first use here (--runtime auto; not recorded by this bench):")
    for tower in ("image", "text"):
        clock = time.perf_counter()
        choice = measure_tower(tower, lambda runtime: export_embedder(folder, runtime, BATCH))
        print(f"  {choice.summary()}; measuring took {time.perf_counter() - clock:.1f} s")


if __name__ == "__main__":
    main()
