"""What each catalogued embedding model costs on this machine: parameters, memory, images/s, text query time.

Each architecture in indexer/models/catalog.py is built with random weights (the real vocabulary and shapes, so the
same compute and memory as the real checkpoint), saved with save_pretrained, exported to ONNX Runtime as
`clipdex index` does on a CPU, and measured in a fresh process: peak resident memory with both towers open
and a batch embedded, images/s of the image tower on decoded photos (batch 16, as the indexer runs), and the
median time of one text query. `make bench-models` writes the figures to indexer/models/catalog_measured.json, which
`clipdex models` prints; BENCH_QUICK=1 measures the first model only and writes nothing.

    python -m bench.models [--only ID ...] [--write]
"""

import argparse
import io
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from datetime import date
from pathlib import Path

from rich.console import Console

from bench.smoke import SMOKE, announce, pick
from indexer.models.catalog import CATALOG, MEASURED_FILE, CatalogModel, model_config
from indexer.models.cpu import cpu_line

QUICK = os.environ.get("BENCH_QUICK", "") not in ("", "0")
BATCH = 16
console = Console(highlight=False, soft_wrap=True)


def build(entry: CatalogModel, out: Path) -> int:
    """Save `entry`'s architecture with random weights, a small tokenizer and its image processor to `out`; its
    parameter count. The tokenizer's few ids stand in for the real vocabulary, whose embedding table is full size."""
    import torch
    from transformers import AutoModel, CLIPImageProcessor, Siglip2ImageProcessorPil, SiglipImageProcessor

    from tests.support.model_factory import make_gemma_tokenizer, make_tokenizer

    torch.manual_seed(0)
    model = AutoModel.from_config(model_config(entry))
    if entry.kind == "clip":
        tokenizer, processor = make_tokenizer(), CLIPImageProcessor()
    elif entry.kind == "siglip":
        tokenizer = make_gemma_tokenizer() if entry.family.startswith("SigLIP 2") else make_tokenizer(add_bos=False)
        processor = SiglipImageProcessor(size={"height": entry.image_size, "width": entry.image_size})
    else:
        tokenizer = make_gemma_tokenizer()
        processor = Siglip2ImageProcessorPil(patch_size=entry.patch_size, max_num_patches=entry.max_patches)
    model.eval().save_pretrained(out)
    tokenizer.save_pretrained(out)
    processor.save_pretrained(out)
    return sum(p.numel() for p in model.parameters())


def measure(folder: Path) -> dict:
    """In this (fresh) process: open the export's towers, embed photos and queries; the figures."""
    import numpy as np

    from indexer.decode import decode_image
    from indexer.models.onnx_runtime import OnnxEmbedder
    from tests.support.photos import photo

    embedder = OnnxEmbedder(folder, BATCH)
    images = []
    for seed, size in enumerate([(1024, 768), (768, 1024), (1280, 720), (900, 900)] * (BATCH // 4)):
        jpeg = io.BytesIO()
        photo(seed, size).save(jpeg, "JPEG", quality=90)
        images.append(decode_image(jpeg.getvalue(), embedder.prep, 10**8).pixels)
    embedder.embed_pixels(images)  # warm-up: kernel selection, first allocations
    batches, started = 0, time.perf_counter()
    while batches < 2 or time.perf_counter() - started < pick(3 if QUICK else 10, 0):
        embedder.embed_pixels(images)
        batches += 1
    per_second = batches * len(images) / (time.perf_counter() - started)
    query_ms = []
    for query in ["a dog on a beach", "wedding couple dancing at sunset", "a receipt"] * 3:
        t = time.perf_counter()
        embedder.embed_texts([query])
        query_ms.append((time.perf_counter() - t) * 1000)
    assert np.isfinite(embedder.embed_texts(["x"])).all()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {
        "memory_mb": round(peak / 2**20),
        "images_per_s": round(per_second, 2),
        "query_ms": statistics.median(query_ms),
    }


def tiny(entry: CatalogModel) -> CatalogModel:
    """`entry` at the tests' tiny widths and depths (a smoke run): the same kind, vocabulary and image shapes."""
    from tests.support.model_factory import TINY_TEXT, TINY_VISION

    return replace(entry, vision=TINY_VISION, text=TINY_TEXT)


def run(entry: CatalogModel, root: Path) -> dict:
    """Build, export (in its own process, as clipdex does) and measure (in another) one model."""
    from indexer.models.onnx_runtime import find_or_export

    model_dir, cache = root / "model", root / "cache"
    params = build(entry, model_dir)
    started = time.perf_counter()
    folder = find_or_export(str(model_dir), cache)
    export_s = time.perf_counter() - started
    done = subprocess.run(
        [sys.executable, "-m", "bench.models", "--measure", str(folder)], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"measuring {entry.id} failed: {done.stderr.strip().splitlines()[-1:]}")
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    return {"params_m": round(params / 1e6), "export_s": round(export_s), **figures}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", help="catalogue ids to measure (default: all)")
    parser.add_argument("--write", action="store_true", help=f"write the figures to {MEASURED_FILE.name}")
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)  # the child process's job
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure)))
        return
    console.print(cpu_line())
    announce(console.print)
    entries = [e for e in CATALOG if not args.only or e.id in args.only][: 1 if QUICK else None]
    if SMOKE:  # a tiny copy of the last, a NaFlex SigLIP 2: every other bench exports a fixed-size CLIP
        entries = [tiny(CATALOG[-1])]
    results = {}
    for entry in entries:
        with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
            figures = run(entry, Path(tmp))
        results[entry.id] = figures
        console.print(
            f"{entry.id}: {figures['params_m']}M parameters, {figures['memory_mb'] / 1024:.1f} GB resident, "
            f"{figures['images_per_s']:.1f} images/s (image tower, batch {BATCH}), text query "
            f"{figures['query_ms']:.0f} ms, export {figures['export_s']} s"
        )
    if args.write and not QUICK and not SMOKE:
        old = json.loads(MEASURED_FILE.read_text()) if MEASURED_FILE.exists() else {"models": {}}
        record = {
            "cpu": cpu_line().removeprefix("CPU: "),
            "date": date.today().isoformat(),
            "runtime": "ONNX Runtime, fp32",
            "models": {**old["models"], **results},
        }
        MEASURED_FILE.write_text(json.dumps(record, indent=1) + "\n")
        console.print(f"wrote {MEASURED_FILE}")


if __name__ == "__main__":
    main()
