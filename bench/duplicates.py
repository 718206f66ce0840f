"""Duplicates: the pHash's false matches and misses on photos, then each kind's precision, recall and time at scale.

First, photo-like images (tests/support/photos.py) as JPEGs: how often two distinct ones have pHashes (and, for
comparison, dHashes) within a distance, and how often a copy of one (half and quarter size re-encoded, brightened,
cropped 2%) is within it of its original. This chose the default distance.

Then CLIP-like synthetic vectors (tests/support/planted.py) in an embedded store, with copies of each kind planted:
0.2% exact (the original's vector and content hash), 0.5% the same picture (cosine ~0.99 and the original's pHash
with up to 4 bits flipped), 1% similar shots (cosine ~0.97, taken 30 s after the original); every other image has
a random pHash. Precision and recall per kind count (keeper, member) pairs against the planted (original, copy)
pairs. `--sizes 100000` for a quick run.
"""

import argparse
import io
import itertools
import resource
import shutil
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import imagehash
import numpy as np
from PIL import Image as PILImage
from PIL import ImageEnhance
from sqlalchemy import update

from bench.indexing import console, load
from bench.smoke import announce, pick
from indexer.models.cpu import cpu_line
from indexer.store import Image
from search.duplicates import DuplicateKind, DuplicateOptions, find_duplicates, phash_distance
from tests.support.photos import photo
from tests.support.planted import ClipLike, plant_vectors, taken_at, unit

TARGET_1M_SECONDS = 600
DISTANCES = (4, 6, 8, 10, 12)


def encoded(img: PILImage.Image, scale: float = 1.0, quality: int = 90) -> PILImage.Image:
    """The image resized by `scale` and through a JPEG of that quality, decoded again."""
    if scale != 1.0:
        img = img.resize((int(img.width * scale), int(img.height * scale)), PILImage.LANCZOS)
    data = io.BytesIO()
    img.save(data, "JPEG", quality=quality)
    return PILImage.open(io.BytesIO(data.getvalue())).convert("RGB")


def edits(img: PILImage.Image) -> list[PILImage.Image]:
    """Copies of one picture as collections get them."""
    w, h = img.size
    return [
        encoded(img, 0.5, 70),
        encoded(img, 0.25, 50),
        ImageEnhance.Brightness(encoded(img, 0.8, 85)).enhance(1.1),
        encoded(img.crop((w // 80, h // 80, w - w // 80, h - h // 80)), 1.0, 85),
    ]


def hash_errors(count: int, edited: int) -> None:
    """Print, per distance, the share of distinct pairs within it (false matches) and of copies beyond it (misses)."""
    originals = [encoded(photo(seed, (640, 480))) for seed in range(count)]
    copies = [(n, copy) for n in range(edited) for copy in edits(originals[n])]
    for name, hash_of in (("pHash", imagehash.phash), ("dHash", imagehash.dhash)):
        hashes = [str(hash_of(img)) for img in originals]
        distinct = np.array([phash_distance(a, b) for a, b in itertools.combinations(hashes, 2)])
        to_original = np.array([phash_distance(str(hash_of(copy)), hashes[n]) for n, copy in copies])
        rates = ", ".join(f"<= {d}: {(distinct <= d).mean():.1e} / {(to_original > d).mean():.3f}" for d in DISTANCES)
        console.print(
            f"{name}: {len(distinct):,} distinct pairs (closest {distinct.min()} bits), {len(copies)} copies "
            f"(farthest {to_original.max()} bits); false matches / misses at {rates}"
        )


def planted_store(folder: Path, size: int) -> tuple[str, dict[DuplicateKind, set[tuple[int, int]]]]:
    """A store of `size` CLIP-like vectors whose last 1.7% are copies of earlier ones; the planted (original, copy)
    ids of each kind."""
    rng = np.random.default_rng(size)
    vectors = ClipLike().images(size)
    counts = {
        DuplicateKind.exact: size // 500,
        DuplicateKind.same_picture: size // 200,
        DuplicateKind.similar: size // 100,
    }
    copies = np.arange(size - sum(counts.values()), size)
    originals = rng.choice(copies[0], len(copies), replace=False)
    phashes = rng.integers(0, 2**64, size, dtype=np.uint64)
    planted, start = {}, 0
    for kind, n in counts.items():
        original, copy = originals[start : start + n], copies[start : start + n]
        start += n
        noise = {DuplicateKind.exact: 0.0, DuplicateKind.same_picture: 0.0035, DuplicateKind.similar: 0.0078}[kind]
        vectors[copy] = unit(vectors[original] + noise * rng.standard_normal((n, vectors.shape[1]), dtype=np.float32))
        if kind is DuplicateKind.exact:
            phashes[copy] = phashes[original]
        elif kind is DuplicateKind.same_picture:  # re-encoded: up to 4 bits flipped
            flips = np.uint64(1) << rng.integers(0, 64, (4, n)).astype(np.uint64)
            phashes[copy] = phashes[original] ^ np.bitwise_or.reduce(flips, axis=0)
        planted[kind] = {(int(a) + 1, int(b) + 1) for a, b in zip(original, copy, strict=True)}
    location = str(folder / f"store-{size}")
    store = plant_vectors(location, vectors)
    exact, similar = planted[DuplicateKind.exact], planted[DuplicateKind.similar]
    with store.session() as s:  # bulk updates by id
        s.execute(update(Image), [{"id": i + 1, "phash": f"{int(h):016x}"} for i, h in enumerate(phashes)])
        s.execute(update(Image), [{"id": i, "hash": f"copy-{a}"} for a, b in exact for i in (a, b)])
        s.execute(update(Image), [{"id": b, "taken_at": taken_at(a) + timedelta(seconds=30)} for a, b in similar])
        s.commit()
    store.engine.dispose()
    return location, planted


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default=pick("100000,1000000", "2000"))
    parser.add_argument("--photos", type=int, default=pick(1000, 40), help="distinct photos for the pHash errors")
    args = parser.parse_args()
    console.print(cpu_line())
    announce(console.print)
    console.print(f"[bold]duplicates benchmark[/bold]: {args.photos} distinct 640x480 photos, copies of the first 200")
    hash_errors(args.photos, min(200, args.photos))
    defaults = DuplicateOptions()
    console.print(
        f"kinds at the defaults (pHash distance {defaults.distance}, similarity {defaults.similarity}, "
        f"window {defaults.window:g} s), CLIP-like vectors, planted copies of each kind"
    )
    from indexer.store import open_store

    with tempfile.TemporaryDirectory(dir="data") as tmp:
        for size in (int(s) for s in args.sizes.split(",")):
            location, planted = planted_store(Path(tmp), size)
            store = open_store(location)
            started = time.perf_counter()
            groups = find_duplicates(store, defaults)
            seconds = time.perf_counter() - started
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            scores = []
            for kind, truth in planted.items():
                found = {tuple(sorted((g.keeper.id, m.id))) for g in groups if g.kind is kind for m in g.members[1:]}
                hits = len(truth & found)
                scores.append(f"{kind} {hits / max(1, len(found)):.3f} / {hits / len(truth):.3f}")
            verdict = f"; target at 1M <= {TARGET_1M_SECONDS} s: {'met' if seconds <= TARGET_1M_SECONDS else 'missed'}"
            console.print(
                f"{size:>9,} images: {seconds:6.1f} s, {len(groups):,} groups; precision / recall: "
                f"{', '.join(scores)}; peak RSS {peak:,.0f} MB{verdict if size == 1_000_000 else ''} ({load()})"
            )
            store.engine.dispose()
            shutil.rmtree(location, ignore_errors=True)


if __name__ == "__main__":
    main()
