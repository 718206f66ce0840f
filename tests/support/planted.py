"""Stores planted with synthetic vectors, for index tests and the API benchmark (no images, no model runs)."""

import itertools
from collections.abc import Iterator
from datetime import datetime, timedelta
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
        # Within a subject, variation spreads over few directions: a power-law spectrum in a random basis, as
        # real embeddings have (a few dozen principal components carry most of their variance).
        spectrum = 1 / np.sqrt(np.arange(1, dim + 1))
        basis = np.linalg.qr(rng.standard_normal((dim, dim)))[0]
        self.shape = (spectrum[:, None] * basis.T * np.sqrt(dim / (spectrum**2).sum())).astype(np.float32)
        weights = 1 / np.arange(1, clusters + 1) ** 1.1  # Zipf-like cluster sizes
        self.weights = weights / weights.sum()

    def images(self, count: int, seed: int = 1) -> np.ndarray:
        return np.concatenate(list(self.image_chunks(count, seed)))

    def image_chunks(self, count: int, seed: int = 1) -> Iterator[np.ndarray]:
        """`images(count, seed)` in chunks of 100,000, for collections that do not fit in memory."""
        return self._draw(count, seed, self.image_mean, mean_weight=0.7, centre_weight=0.45, noise_weight=0.55)

    def texts(self, count: int, seed: int = 2) -> np.ndarray:
        chunks = self._draw(count, seed, self.text_mean, mean_weight=0.6, centre_weight=0.35, noise_weight=0.7)
        return np.concatenate(list(chunks))

    def _draw(self, count, seed, mean, mean_weight, centre_weight, noise_weight) -> Iterator[np.ndarray]:
        rng = np.random.default_rng(seed)
        for start in range(0, count, 100_000):
            n = min(100_000, count - start)
            centres = self.centres[rng.choice(len(self.centres), n, p=self.weights)]
            noise = rng.standard_normal((n, self.dim), dtype=np.float32) @ self.shape / np.float32(np.sqrt(self.dim))
            yield unit(mean_weight * mean + centre_weight * centres + noise_weight * noise)


def unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def taken_at(i: int) -> datetime:
    """A capture time for planted image i, spread over the ten years 2015-2024."""
    return FIRST_DAY + timedelta(days=(i * 7919) % 3652, seconds=(i * 104_729) % 86_400)


FIRST_DAY = datetime(2015, 1, 1)


def plant_vectors(location, vectors, model: str = "synthetic", root: Path = Path("/planted"), **options) -> Store:
    """A store at `location` (a directory or a database URL) whose images 1..N are rows with these vectors,
    under the root `root` (by default /planted, where no files are).

    `vectors` is an array, or an iterable of arrays for collections that do not fit in memory. Rows carry
    what the indexer records of a photo (path, size, hash, pixel size, format, capture time), so on-disk
    sizes are honest; they go in with Core bulk inserts (the indexer's ORM path is too slow for millions),
    each chunk with its vectors in one transaction, through the store's own write_vectors.
    """
    chunks = iter([vectors] if isinstance(vectors, np.ndarray) else vectors)
    first = next(chunks)
    store = open_store(location, model=model, dim=first.shape[1], create=True, **options)
    now, start = utcnow(), 0
    with store.session() as s:
        root_id = get_root(s, root).id
        s.commit()
    for chunk in itertools.chain([first], chunks):
        for part in range(0, len(chunk), 50_000):  # a transaction each keeps the write-ahead log small
            block = chunk[part : part + 50_000]
            ids = range(start + 1, start + len(block) + 1)
            with store.session() as s:
                if store.engine.dialect.name == "sqlite":  # the timeline index takes random inserts: cache it whole
                    s.connection().exec_driver_sql("PRAGMA cache_size=-4000000")
                rows = [
                    dict(
                        id=i, root_id=root_id, relpath=f"{i // 1000:04d}/IMG_{i:07d}.JPG", size=2_000_000 + i % 999_983,
                        mtime_ns=1_600_000_000_000_000_000 + i, hash=f"{i * 2654435761 % 2**128:032x}", width=4000,
                        height=3000, format="JPEG", taken_at=taken_at(i), status=INDEXED, indexed_at=now,
                    )
                    for i in ids
                ]  # fmt: skip
                s.execute(insert(Image), rows)
                store.write_vectors(s, np.asarray(ids), block)
                s.commit()
            start += len(block)
    if store.engine.dialect.name == "sqlite":  # as a store at rest: its write-ahead log folded into the database
        with store.engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    return store


# A planted query vocabulary: each idea one axis, and the cone every image leans on (CLIP's modality gap).
DIM = 64
BEACH, SUNSET, PEOPLE, DOG, LIGHTHOUSE, UNICORN = (np.eye(DIM, dtype=np.float32)[i] for i in range(6))
CONE = np.eye(DIM, dtype=np.float32)[63]  # the direction every image leans on (the relevance test's cone)
VOCAB = {"beach": BEACH, "sunset": SUNSET, "people": PEOPLE, "dog": DOG}
