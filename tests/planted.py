"""Stores planted with synthetic vectors, for index tests and the API benchmark (no images, no model runs)."""

from pathlib import Path

import numpy as np
from sqlalchemy import insert

from indexer.store import INDEXED, Image, Store, get_root, open_store, utcnow


def clustered_vectors(count: int, dim: int = 512, clusters: int = 1000, seed: int = 0) -> np.ndarray:
    """Unit vectors around random cluster centres, like image embeddings (which cluster by subject).

    Each vector's cosine to its centre is about 0.6; uniform random vectors would have no neighbours
    worth finding, which no real collection looks like.
    """
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    out = np.empty((count, dim), dtype=np.float32)
    for start in range(0, count, 100_000):
        n = min(100_000, count - start)
        noise = rng.standard_normal((n, dim), dtype=np.float32) / np.float32(np.sqrt(dim))
        chunk = centres[rng.integers(0, clusters, n)] + np.float32(1.3) * noise
        out[start : start + n] = chunk / np.linalg.norm(chunk, axis=1, keepdims=True)
    return out


def plant_vectors(path: Path, vectors: np.ndarray, model: str = "synthetic") -> Store:
    """A store at `path` whose images 1..N are rows with these vectors, under a fake root /planted."""
    store = open_store(path, model=model, dim=vectors.shape[1], create=True)
    now = utcnow()
    with store.session() as s:
        root_id = get_root(s, Path("/planted")).id
        for start in range(0, len(vectors), 20_000):
            rows = [
                dict(
                    id=i + 1,
                    root_id=root_id,
                    relpath=f"{i // 1000:04d}/{i:07d}.jpg",
                    size=100_000,
                    mtime_ns=0,
                    hash=f"{i:032x}",
                    status=INDEXED,
                    vector=vectors[i].tobytes(),
                    indexed_at=now,
                )
                for i in range(start, min(start + 20_000, len(vectors)))
            ]
            s.execute(insert(Image), rows)
        store.bump_version(s)
        s.commit()
    return store
