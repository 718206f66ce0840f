"""Clustering a collection (clipdex clusters) at 100k and 1M images: time, peak memory, the k it chose.

CLIP-like synthetic vectors (tests/support/planted.py) in an embedded store, clustered as `clipdex clusters` does, with
the default k (by size) and with --auto (by silhouette): trained on a sample, every vector assigned in one
streamed pass, named by the default vocabulary through a full-size ViT-B/32 text tower (random weights: the
same compute).
"""

import argparse
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

from bench.indexing import console, load, vit_b32
from bench.smoke import CLIP_DIM, DATA, announce, pick
from indexer.models.cpu import cpu_line
from indexer.models.loading import canonical_name
from indexer.settings import Settings
from search.service import Service
from tests.support.planted import ClipLike, plant_vectors

TARGET_1M_SECONDS = 300


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    quick = os.environ.get("BENCH_QUICK") == "1"
    parser.add_argument("--sizes", default=pick("100000" if quick else "100000,1000000", "2000"))
    parser.add_argument("--k", type=int, default=None, help="clusters (default: chosen, as clipdex clusters does)")
    args = parser.parse_args()
    console.print(cpu_line())
    announce(console.print)
    model = canonical_name(str(vit_b32()))
    with tempfile.TemporaryDirectory(dir="data") as tmp:
        for size in (int(s) for s in args.sizes.split(",")):
            location = str(Path(tmp) / f"store-{size}")
            plant_vectors(location, ClipLike(CLIP_DIM).image_chunks(size), model=model)
            engine = Service(Settings(store=location, cache_dir=DATA / "cache"))  # the model's export, made once
            engine.text_tower.embed_texts(["warm-up"])  # the model loads before the clock starts
            for auto in (False, True):
                started = time.perf_counter()
                result = engine.clusters(args.k, auto=auto)
                seconds = time.perf_counter() - started
                peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
                sizes = [c.size for c in result.clusters]
                met = "met" if seconds <= TARGET_1M_SECONDS else "missed"
                console.print(
                    f"{size:>9,} images, {'--auto' if auto else 'default'}: {seconds:5.1f} s, k {result.k}, "
                    f"clusters of {min(sizes):,} to {max(sizes):,}, peak RSS {peak:,.0f} MB"
                    f"{f'; target at 1M <= {TARGET_1M_SECONDS} s: {met}' if size == 1_000_000 else ''} ({load()})"
                )
                console.print(f"  k: {result.chosen}; largest: " + "; ".join(
                    f"{c.size:,} {', '.join(label for label, _ in c.labels)}" for c in result.clusters[:2]
                ))  # fmt: skip
            engine.store.engine.dispose()
            shutil.rmtree(location, ignore_errors=True)


if __name__ == "__main__":
    main()
