"""Benchmark zero-shot tagging: 1,000 labels x 5 templates over 100,000 and 1,000,000 stored vectors.

What is timed: `tag_store` on a real store: reading the vectors from the vector file in chunks, one matrix product
and a softmax per chunk, top-1 selection, and writing every tag row in one transaction. The stores hold
synthetic unit vectors (512-d, as ViT-B/32) written straight into the store beforehand (not timed); the
classifier is 1,000 random unit label vectors, as label embeddings are to the scoring.

Embedding the 5,000 prompts with a full-size (ViT-B/32, random weights) text tower is timed separately:
it is paid once per label set, whatever the collection size. Each measurement runs in its own process,
so the peak memory printed (max RSS, with torch loaded) belongs to that step alone.

    python -m bench.tagging                   # 100k and 1M, plus label embedding
    python -m bench.tagging --sizes 20000 --no-embed-labels   # quick
"""

import argparse
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console

from bench.smoke import DATA, announce, pick

DIM, LABELS, TEMPLATES = 512, pick(1000, 50), 5
TARGET_SECONDS = {100_000: 2.0, 1_000_000: 20.0}
TARGET_PEAK_GB = 2.0
out = Console(highlight=False, soft_wrap=True)


def peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def machine() -> str:
    import torch

    load = os.getloadavg()
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), load average {load[0]:.1f}"
    )


def write_store(path: Path, count: int) -> None:
    """A store with `count` random unit vectors, written in bulk (tests/support/planted.py)."""
    from tests.support.planted import plant_vectors, unit

    rng = np.random.default_rng(0)
    chunks = (unit(rng.standard_normal((min(50_000, count - start), DIM))) for start in range(0, count, 50_000))
    plant_vectors(path, chunks, model="bench/random-512")


def run_tagging(count: int) -> None:
    """Time tag_store over a fresh store of `count` vectors (store writing is not timed)."""
    from indexer.enrich.tags import Classifier, TagOptions, tag_store
    from indexer.store import open_store

    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        t = time.perf_counter()
        write_store(Path(tmp) / "store", count)
        built = time.perf_counter() - t
        weights = np.random.default_rng(1).standard_normal((LABELS, DIM), dtype=np.float32)
        weights /= np.linalg.norm(weights, axis=1, keepdims=True)
        classifier = Classifier([f"label {i}" for i in range(LABELS)], weights, "softmax", 100.0, 0.0)
        store = open_store(Path(tmp) / "store")
        t = time.perf_counter()
        summary = tag_store(store, classifier, ["a photo of a {}."] * TEMPLATES, TagOptions(), "bench")
        seconds = time.perf_counter() - t
    rest = seconds - summary.read_seconds - summary.score_seconds - summary.write_seconds
    target = TARGET_SECONDS.get(count)
    verdict = f"target < {target:.0f} s: {'met' if seconds < target else 'MISSED'}" if target else ""
    out.print(
        f"tagging {count:>9,} vectors x {LABELS} labels: {seconds:6.2f} s ({count / seconds:,.0f} vectors/s), "
        f"{summary.tags:,} tags written, peak RSS {peak_gb():.2f} GB; {verdict}\n"
        f"    read {summary.read_seconds:.2f} s, score {summary.score_seconds:.2f} s, "
        f"write {summary.write_seconds:.2f} s, rest (deletes, commit) {rest:.2f} s; store built in {built:.0f} s"
    )


def run_label_embedding() -> None:
    """Time embedding 1,000 labels x 5 templates with a ViT-B/32-sized CLIP text tower (random weights)."""
    from bench.indexing import vit_b32
    from indexer.enrich.labels import DEFAULT_TEMPLATES
    from indexer.models.embedder import embed_prompts
    from indexer.models.runtimes import make_embedder
    from indexer.settings import Settings
    from tests.support.model_factory import CORPUS

    embedder = make_embedder(str(vit_b32()), Settings(device="auto", cache_dir=DATA / "cache"))  # exported once
    t = time.perf_counter()
    # Two-word labels from the tokenizer's own vocabulary: about as many tokens as real labels take
    # with CLIP's tokenizer (unknown words would be spelled out letter by letter).
    words = sorted({w.strip(",.:") for line in CORPUS for w in line.split()} - {""})
    labels = [f"{a} {b}" for a in words for b in words if a != b][:LABELS]
    vectors = embed_prompts(embedder, labels, DEFAULT_TEMPLATES)
    seconds = time.perf_counter() - t
    n = LABELS * len(DEFAULT_TEMPLATES)
    out.print(
        f"label embeddings: {n:,} prompts ({LABELS} labels x {len(DEFAULT_TEMPLATES)} templates) on "
        f"{embedder.runtime}: {seconds:6.2f} s ({n / seconds:,.0f} prompts/s) -> {vectors.shape}, "
        f"peak RSS {peak_gb():.2f} GB (paid once per label set)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=pick([100_000, 1_000_000], [2_000]))
    parser.add_argument("--no-embed-labels", action="store_true", help="skip timing the text tower")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # a single measurement, in this process
    parser.add_argument("--labels-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        return run_tagging(args.one)
    if args.labels_only:
        return run_label_embedding()
    out.print(f"machine: {machine()}")
    announce(out.print)
    out.print(f"peak memory target at 1,000,000: < {TARGET_PEAK_GB:.0f} GB")
    for count in args.sizes:
        subprocess.run([sys.executable, "-m", "bench.tagging", "--one", str(count)], check=True)
    if not args.no_embed_labels:
        subprocess.run([sys.executable, "-m", "bench.tagging", "--labels-only"], check=True)


if __name__ == "__main__":
    main()
