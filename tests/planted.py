"""Stores planted with synthetic vectors, for index tests and the API benchmark (no images, no model runs)."""

from pathlib import Path

import numpy as np
from sqlalchemy import insert

from indexer.store import INDEXED, Image, Store, get_root, open_store, utcnow


class ClipLike:
    """Synthetic embeddings shaped like CLIP's, for index tests and the scale benchmark.

    Image vectors sit in a narrow cone around a shared mean direction (random CLIP image pairs have cosine
    ~0.5), clustered by subject with heavy-tailed cluster sizes (a few subjects fill most of a collection).
    Text-like queries come from a shifted cone (the modality gap): a mean of their own, leaning on one
    subject, so their best matches score ~0.3 and lie close together, which is what makes IVF miss them.
    """

    def __init__(self, dim: int = 512, clusters: int = 1000, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.dim = dim
        self.image_mean = unit(rng.standard_normal(dim))
        self.text_mean = unit(0.3 * self.image_mean + unit(rng.standard_normal(dim)))
        self.centres = unit(rng.standard_normal((clusters, dim)))
        weights = 1 / np.arange(1, clusters + 1) ** 1.1  # Zipf-like cluster sizes
        self.weights = weights / weights.sum()

    def images(self, count: int, seed: int = 1) -> np.ndarray:
        return self._draw(count, seed, self.image_mean, mean_weight=0.7, centre_weight=0.45, noise_weight=0.55)

    def texts(self, count: int, seed: int = 2) -> np.ndarray:
        return self._draw(count, seed, self.text_mean, mean_weight=0.6, centre_weight=0.35, noise_weight=0.7)

    def _draw(self, count, seed, mean, mean_weight, centre_weight, noise_weight) -> np.ndarray:
        rng = np.random.default_rng(seed)
        out = np.empty((count, self.dim), dtype=np.float32)
        for start in range(0, count, 100_000):
            n = min(100_000, count - start)
            centres = self.centres[rng.choice(len(self.centres), n, p=self.weights)]
            noise = rng.standard_normal((n, self.dim), dtype=np.float32) / np.float32(np.sqrt(self.dim))
            out[start : start + n] = unit(mean_weight * mean + centre_weight * centres + noise_weight * noise)
        return out


def unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def plant_vectors(path: Path, vectors: np.ndarray, model: str = "synthetic", **options) -> Store:
    """A store at `path` whose images 1..N are rows with these vectors, under a fake root /planted.

    Rows go in with Core bulk inserts (the indexer's ORM path is too slow for millions), vectors first, as
    Store.commit_images orders them.
    """
    store = open_store(path, model=model, dim=vectors.shape[1], create=True, **options)
    now = utcnow()
    with store.session() as s:
        root_id = get_root(s, Path("/planted")).id
        version = store.bump_version(s)
        writable = store.writable_vectors()
        for start in range(0, len(vectors), 20_000):
            writable.write(np.arange(start + 1, min(start + 20_000, len(vectors)) + 1), vectors[start : start + 20_000])
            rows = [
                dict(
                    id=i + 1,
                    root_id=root_id,
                    relpath=f"{i // 1000:04d}/{i:07d}.jpg",
                    size=100_000,
                    mtime_ns=0,
                    hash=f"{i:032x}",
                    status=INDEXED,
                    vector_version=version,
                    indexed_at=now,
                )
                for i in range(start, min(start + 20_000, len(vectors)))
            ]
            s.execute(insert(Image), rows)
        writable.sync()
        s.commit()
    return store
