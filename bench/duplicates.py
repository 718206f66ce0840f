"""Near-duplicate search at 100k and 1M images: time, peak memory, and how many planted near copies it finds.

CLIP-like synthetic vectors (tests/support/planted.py) in an embedded store, with 1% of the images given a near copy
(cosine about 0.97, like two shots of a burst) and 0.2% an exact one. `--sizes 100000` for a quick run.
"""

import argparse
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from sqlalchemy import update

from bench.indexing import console, load
from bench.smoke import announce, pick
from indexer.models.cpu import cpu_line
from indexer.store import Image
from search.duplicates import find_duplicates
from tests.support.planted import ClipLike, plant_vectors, unit

TARGET_1M_SECONDS = 600


def planted_store(folder: Path, size: int) -> tuple[str, set[tuple[int, int]]]:
    """A store of `size` CLIP-like vectors where the last 1.2% copy earlier ones; the planted (original, copy) ids."""
    rng = np.random.default_rng(size)
    vectors = ClipLike().images(size)
    near, exact = size // 100, size // 500
    originals = rng.choice(size - near - exact, near + exact, replace=False)
    copies = np.arange(size - near - exact, size)
    noise = rng.standard_normal((near, vectors.shape[1])).astype(np.float32)
    vectors[copies[:near]] = unit(vectors[originals[:near]] + 0.0078 * noise)
    vectors[copies[near:]] = vectors[originals[near:]]
    location = str(folder / f"store-{size}")
    store = plant_vectors(location, vectors)
    with store.session() as s:  # the exact copies share their original's content hash
        for original, copy in zip(originals[near:] + 1, copies[near:] + 1, strict=True):
            s.execute(update(Image).where(Image.id.in_([int(original), int(copy)])).values(hash=f"copy-{original}"))
        s.commit()
    return location, {(int(a) + 1, int(b) + 1) for a, b in zip(originals, copies, strict=True)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default=pick("100000,1000000", "2000"))
    args = parser.parse_args()
    console.print(cpu_line())
    announce(console.print)
    console.print("[bold]duplicates benchmark[/bold]: threshold 0.95, CLIP-like vectors, planted copies")
    from indexer.store import open_store

    with tempfile.TemporaryDirectory(dir="data") as tmp:
        for size in (int(s) for s in args.sizes.split(",")):
            location, planted = planted_store(Path(tmp), size)
            store = open_store(location)
            started = time.perf_counter()
            groups = find_duplicates(store, 0.95)
            seconds = time.perf_counter() - started
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            found = {(m.id, n.id) for g in groups for m in g.members for n in g.members if m.id < n.id}
            recall = len(planted & found) / len(planted)
            extra = len(found - planted)
            verdict = f"; target at 1M <= {TARGET_1M_SECONDS} s: {'met' if seconds <= TARGET_1M_SECONDS else 'missed'}"
            console.print(
                f"{size:>9,} images: {seconds:6.1f} s, {len(groups):,} groups, planted copies found {recall:.3f}, "
                f"{extra:,} other pairs, peak RSS {peak:,.0f} MB{verdict if size == 1_000_000 else ''} ({load()})"
            )
            store.engine.dispose()
            shutil.rmtree(location, ignore_errors=True)


if __name__ == "__main__":
    main()
