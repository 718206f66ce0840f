"""Explore a collection by its clusters: k-means over the stored vectors, each cluster named and shown.

CLIP's paper lists clustering among its uses: group the images, then find which keywords belong to which group.
- Grouping: FAISS spherical k-means (cosine, as the vectors are compared everywhere else), trained on a random
  sample of at most TRAIN_PER_CLUSTER vectors a cluster (FAISS's own default cap), then every stored vector is
  assigned to its nearest centroid in one streamed pass, chunk by chunk, as tagging reads the store.
- Choosing k: with --auto, k-means for each candidate k on one sample, keeping the k with the best mean
  simplified silhouette ((b - a) / max(a, b), a and b the cosine distances to the nearest and second-nearest
  centroid), a standard internal criterion that needs no labels. It finds k where the collection has clear
  groups (planted ones in the tests) but prefers k = 2 where it has none (CLIP-like vectors, bench/clusters.py),
  so without --k or --auto k follows the collection's size instead (default_k): groups to browse.
- Naming: each label (a given set, or the default vocabulary in vocabulary.txt) is embedded through the tagging
  templates; a cluster's names are the labels its centroid matches best *compared with the other clusters*
  (the cosine minus that label's mean cosine over all centroids). Raw cosines would name every cluster after the
  same generic labels, since every image vector leans the same way (the modality gap).
- Showing: the images nearest each centroid are its most typical.
"""

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from indexer.enrich.batches import CHUNK, read_ahead
from indexer.enrich.labels import DEFAULT_TEMPLATES, check_labels, read_labels_file
from indexer.errors import BadInputError
from indexer.models.embedder import Embedder, embed_prompts
from indexer.store import Store

VOCABULARY_FILE = Path(__file__).with_name("vocabulary.txt")
MAX_K = 1000
TRAIN_PER_CLUSTER = 256  # FAISS's max_points_per_centroid: more points per centroid barely move it
ITERATIONS = 20
RESTARTS = 5  # k-means from this many random starts, keeping the best: one start often splits a big cluster
AUTO_SAMPLE = 20_000  # vectors the candidate k are compared on
AUTO_CANDIDATES = (2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)
NAMES = 3  # labels shown per cluster
DEFAULT_MAX_K = 100


@dataclass
class Cluster:
    number: int
    size: int
    labels: list[tuple[str, float]]  # (label, how much better it fits this cluster than the others), best first
    members: np.ndarray  # image ids, most typical (nearest the centroid) first
    similarity: np.ndarray  # their cosine to the centroid

    def typical(self, count: int) -> list[tuple[int, float]]:
        return list(zip(self.members[:count].tolist(), self.similarity[:count].tolist(), strict=True))


@dataclass
class Clustering:
    k: int
    images: int
    chosen: str  # "given", or "auto (silhouette 0.12)"
    seconds: float = 0.0
    clusters: list[Cluster] = field(default_factory=list)


def default_vocabulary() -> list[str]:
    return read_labels_file(VOCABULARY_FILE)


def sample_rows(store: Store, count: int) -> np.ndarray:
    """`count` stored vectors at random (all of them in a smaller store), contiguous float32 for FAISS."""
    return np.ascontiguousarray(store.sample_vectors(count)[0], dtype=np.float32)


def train(vectors: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """Unit centroids of spherical k-means."""
    kmeans = faiss.Kmeans(vectors.shape[1], k, niter=ITERATIONS, nredo=RESTARTS, seed=seed, spherical=True,
                          max_points_per_centroid=TRAIN_PER_CLUSTER, min_points_per_centroid=1)  # fmt: skip
    kmeans.train(vectors)
    return kmeans.centroids / np.linalg.norm(kmeans.centroids, axis=1, keepdims=True)


def silhouette(vectors: np.ndarray, centroids: np.ndarray) -> float:
    """Mean simplified silhouette of vectors against centroids."""
    index = faiss.IndexFlatIP(centroids.shape[1])
    index.add(centroids)
    scores, _ = index.search(vectors, 2)
    a, b = 1 - scores[:, 0], 1 - scores[:, 1]
    return float(np.mean((b - a) / np.maximum(np.maximum(a, b), 1e-9)))


def default_k(images: int) -> int:
    """sqrt(images / 50), 2 to DEFAULT_MAX_K: 14 clusters of 10k images, 45 of 100k, 100 of 1M."""
    return min(DEFAULT_MAX_K, max(2, round(math.sqrt(images / 50))))


def choose_k(store: Store, images: int) -> tuple[int, str]:
    """The candidate k with the best silhouette on a sample (at most one cluster per ten images)."""
    sample = sample_rows(store, AUTO_SAMPLE)
    candidates = [k for k in AUTO_CANDIDATES if k <= max(2, images // 10)] or [2]
    scored = {k: silhouette(sample, train(sample, k)) for k in candidates}
    best = max(scored, key=scored.get)
    return best, f"auto (silhouette {scored[best]:.3f}, best of k = {', '.join(map(str, candidates))})"


def name_clusters(centroids: np.ndarray, label_vectors: np.ndarray, labels: list[str]) -> list[list[tuple[str, float]]]:
    """Each centroid's NAMES best labels by cosine above that label's mean over all centroids."""
    fit = centroids @ label_vectors.T
    if len(centroids) > 1:
        fit = fit - fit.mean(axis=0, keepdims=True)
    order = np.argsort(-fit, axis=1, kind="stable")[:, :NAMES]
    return [[(labels[j], float(fit[c, j])) for j in row] for c, row in enumerate(order)]


def cluster_store(
    store: Store,
    text_tower: Embedder,
    k: int | None = None,
    labels: list[str] | None = None,
    auto: bool = False,
    show_progress: bool = False,
) -> Clustering:
    """Cluster the store into k clusters (None: by silhouette if `auto`, else default_k), named by `labels`
    (None: the default vocabulary) embedded with `text_tower`."""
    started = time.perf_counter()
    images = store.count_vectors()
    if images < 2:
        raise BadInputError("the store has fewer than two indexed images: nothing to cluster")
    if k is not None and not 2 <= k <= min(MAX_K, images):
        raise BadInputError(f"k must be between 2 and {min(MAX_K, images)} (the number of images, at most {MAX_K})")
    labels = check_labels(labels) if labels is not None else default_vocabulary()
    label_vectors = embed_prompts(text_tower, labels, DEFAULT_TEMPLATES)
    chosen = "given"
    if k is None and auto:
        k, chosen = choose_k(store, images)
    elif k is None:
        k, chosen = min(default_k(images), images), "by the collection's size"
    centroids = train(sample_rows(store, k * TRAIN_PER_CLUSTER), k)
    ids, assigned, similarity = assign(store, centroids, images, show_progress)
    result = Clustering(k=k, images=images, chosen=chosen)
    names = name_clusters(centroids, label_vectors, labels)
    order = np.lexsort((-similarity, assigned))  # by cluster, then most typical first
    bounds = np.searchsorted(assigned[order], np.arange(k + 1))
    for c in range(k):
        members = order[bounds[c] : bounds[c + 1]]
        if len(members):
            result.clusters.append(Cluster(c, len(members), names[c], ids[members], similarity[members]))
    result.clusters.sort(key=lambda cluster: -cluster.size)
    for number, cluster in enumerate(result.clusters, 1):  # numbered largest first, as listed
        cluster.number = number
    result.seconds = time.perf_counter() - started
    return result


def assign(
    store: Store, centroids: np.ndarray, images: int, show_progress: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids, nearest centroid, cosine to it) of every stored vector, in one streamed pass."""
    index = faiss.IndexFlatIP(centroids.shape[1])
    index.add(centroids)
    ids, assigned, similarity = [], [], []
    progress = Progress(TextColumn("clustering"), BarColumn(), MofNCompleteColumn(), disable=not show_progress,
                        transient=True)  # fmt: skip
    with progress:
        task = progress.add_task("assign", total=images)
        for chunk_ids, vectors in read_ahead(store.iter_vectors(CHUNK)):
            scores, nearest = index.search(np.ascontiguousarray(vectors, dtype=np.float32), 1)
            ids.append(chunk_ids)
            assigned.append(nearest[:, 0])
            similarity.append(scores[:, 0])
            progress.update(task, advance=len(chunk_ids))
    return np.concatenate(ids), np.concatenate(assigned), np.concatenate(similarity)
