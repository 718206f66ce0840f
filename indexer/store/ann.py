"""Which FAISS index for a collection's size and a memory budget, how to tune it, and how to search it.

The most accurate kind that fits the budget wins (the order autofaiss and clip-retrieval use):
- exact (flat) while the collection is small enough to scan (EXACT_LIMIT) and fits;
- IVF over full float32 vectors while those fit;
- IVF over 8-bit, then 4-bit scalar codes, then over 4-bit product-quantisation codes (fast-scan), re-ranked:
  the top `rerank x wanted` candidates are scored exactly with their vectors from the vector file;
- past all of those, IVF over 8-bit product-quantisation codes in a memory-mapped file (ondisk.py), re-ranked.
Compressed codes rank approximately; the re-ranking puts the exact order back, so hits carry exact cosines.

The on-disk kind, for the largest collections, has more lists (4 sqrt(count), FAISS's advice for tens of millions
and up): a probe then scans fewer codes for the same recall. Past MAX_LISTS, k-means over every list would take
hours on a small machine, so the centroids come from two-level k-means (sqrt(lists) clusters, each split again)
and vectors are assigned to lists through an HNSW graph of the centroids; searches compare the query with every
centroid, which at these counts costs less than walking the graph for the hundreds of lists a search probes.

nprobe and the re-rank depth are calibrated against exact search on two kinds of queries: stored vectors
(image-to-image) and text-like probes (CLIP's modality gap puts text queries away from the images, where
IVF recall is worse), so both reach RECALL_TARGET, at the least cost: the codes scanned and the candidates
re-ranked, each at its measured cost (Kind.scan_ns, Kind.rerank_ns). In dense regions of a large collection product
codes tell neighbours apart too coarsely, and re-ranking deeper is far cheaper than scanning more lists.
"""

import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import faiss
import numpy as np
from faiss.contrib.ivf_tools import add_preassigned

from indexer.quiet import silenced
from indexer.settings import cpu_count
from indexer.store.core_threads import core_threads

EXACT_LIMIT = 20_000  # scanning 20,000 vectors takes under 2 ms; at 100,000 it takes 9 ms on 2 cores
MAX_LISTS = 4096  # k-means and list assignment grow with lists x vectors: 4096 keeps 10M in minutes
MAX_DISK_LISTS = 262_144  # on disk, past MAX_LISTS: two-level k-means and graph assignment (FAISS's advice at 1B)
GRAPH_LINKS = 32  # HNSW neighbours a centroid of the assignment graph
GRAPH_SEARCH = 16  # candidates the graph keeps while assigning: FAISS's default (64 finds the nearest centroid for
# 94% of vectors against 86%, at twice the time, where the missed nearest scores 0.009 above the one found)
RECALL_TARGET = 0.97  # calibrated recall@10, a margin over the 0.95 promised for unseen queries
RERANK_DEPTHS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)  # candidates per wanted hit that calibration tries
# On disk, at 20M, 8-bit PQ codes tell the best 10 from the next 5,000 too coarsely: image-like recall@10 stops at
# 0.955 with x512 however many lists are probed, and reaches 0.975 with x2048 probing 6% of them.
DISK_RERANK_DEPTHS = (*RERANK_DEPTHS, 1024, 2048)
MAX_CANDIDATES = 10 * DISK_RERANK_DEPTHS[-1]
# Single-thread costs, measured with faiss 1.15 on an AMD EPYC (AVX-512), 2026-12-07: scanning one code of a probed
# list by codec (per byte of code for product quantisation), and re-ranking one candidate from the vector file;
# on disk, one compiled read and its score a candidate from a file larger than memory (page cache warm, one thread:
# 20,480 rows of 20M in 22.7 ms), on an Intel Xeon, 2026-12-07 (2,600 ns with the reads in a Python loop).
SCAN_NS = {"Flat": 170.0, "SQ8": 70.0, "SQ4": 65.0, "PQx4fsr": 0.1, "PQ": 0.75}
RERANK_NS = 565.0
# Bytes of codes each part of one query's split list scan has at least: ~0.8 ms of SQ8 and ~1.5 ms of PQ64 on the
# Xeon, far more than a part costs to hand to a thread and merge.
SPLIT_BYTES = 2 * 2**20
DISK_RERANK_NS = 1100.0
RETRAIN_GROWTH = 4  # the quantiser is retrained when the collection has grown (or shrunk) this many times
TRAIN_PER_LIST = 40  # k-means sample per list: faiss's minimum for stable centroids
CODE_TRAINING = 65_536  # vectors codes are trained on: FAISS samples 256 a PQ centroid
KMEANS_ITERATIONS = 10

log = logging.getLogger(__name__)

# (ids, query, k) -> (scores, ids) of the k best by exact inner product, from the vector file
Best = Callable[[np.ndarray, np.ndarray, int], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class Kind:
    """One kind of index: its FAISS factory string and what it costs per vector and in all."""

    spec: str  # "Flat", "IVF{n},Flat", "IVF{n},SQ8", "IVF{n},SQ4", "IVF{n},PQ{m}x4fsr"; on disk "IVF{n},PQ{m}"
    bytes_per_vector: float  # in memory; on disk for an on-disk kind
    fixed_bytes: int  # the coarse quantiser's centroids
    on_disk: bool = False  # 8-bit PQ codes in a memory-mapped file (ondisk.py): memory holds centroids and a bitmap

    @classmethod
    def parse(cls, spec: str, dim: int) -> "Kind":
        if spec == "Flat":
            return cls(spec, 4 * dim + 16, 0)  # vectors, ids and the id map's reverse map
        lists, codes = spec.split(",", 1)
        centroids = lists_of(spec) * dim * 4
        if codes == "Flat":
            return cls(spec, 4 * dim + 8, centroids)
        if codes.startswith("SQ"):  # SQ8, SQ4: a byte or half a byte a dimension
            return cls(spec, dim * int(codes[2:]) / 8 + 8, centroids)
        if "x" not in codes:  # PQ{m}: m bytes, the codes FAISS can map from disk; codebooks of 256 x dim floats
            return cls(spec, int(codes[2:]) + 8, centroids + 256 * dim * 4, on_disk=True)
        return cls(spec, int(codes[2:].split("x")[0]) / 2 + 8, centroids)  # PQ{m}x4: m 4-bit codes

    @property
    def compressed(self) -> bool:
        """Codes rank approximately: search re-ranks candidates with the full vectors."""
        return "SQ" in self.spec or "PQ" in self.spec

    @property
    def scan_ns(self) -> float:
        """Nanoseconds a search takes to compare one code of a probed list (SCAN_NS)."""
        codes = self.family
        if codes.startswith("PQ"):
            m = int(codes[2:].split("x")[0])
            return m * SCAN_NS["PQx4fsr" if "x4fs" in codes else "PQ"]
        return SCAN_NS[codes]

    @property
    def rerank_ns(self) -> float:
        """Nanoseconds re-ranking one candidate takes (RERANK_NS, DISK_RERANK_NS)."""
        return DISK_RERANK_NS if self.on_disk else RERANK_NS

    @property
    def rerank_depths(self) -> tuple[int, ...]:
        """Re-rank depths calibration tries: none for exact codes, deeper on disk."""
        if not self.compressed:
            return (1,)
        return DISK_RERANK_DEPTHS if self.on_disk else RERANK_DEPTHS

    @property
    def family(self) -> str:
        """The spec without its list count: two indexes of one family differ only in size."""
        return self.spec.split(",", 1)[-1] if self.spec.startswith("IVF") else self.spec

    def memory(self, count: int) -> int:
        """Bytes of RAM the index takes for `count` vectors (on disk: its bitmap of held ids besides)."""
        return int(self.fixed_bytes + (count / 8 if self.on_disk else self.bytes_per_vector * count))


def lists_of(spec: str) -> int:
    """The IVF list count of a spec (0 for the flat index)."""
    return int(spec.split(",")[0][3:]) if spec.startswith("IVF") else 0


def ivf_lists(count: int) -> int:
    """IVF list count for `count` vectors in memory: about 2 sqrt(count), at most MAX_LISTS."""
    return max(1, min(MAX_LISTS, int(2 * math.sqrt(count))))


def disk_lists(count: int) -> int:
    """IVF list count for `count` vectors on disk: about 4 sqrt(count), at most MAX_DISK_LISTS."""
    return max(1, min(MAX_DISK_LISTS, int(4 * math.sqrt(count))))


def kinds(count: int, dim: int) -> list[Kind]:
    """Every kind for `count` vectors of `dim`, most accurate first."""
    ivf = f"IVF{ivf_lists(count)}"
    specs = ["Flat"] if count <= EXACT_LIMIT else []
    specs += [f"{ivf},Flat", f"{ivf},SQ8", f"{ivf},SQ4"]
    specs += [f"{ivf},PQ{m}x4fsr" for m in (dim // 4, dim // 8, dim // 16) if m >= 2 and dim % m == 0]
    if count > EXACT_LIMIT and dim % 8 == 0:  # past every in-memory kind: codes on disk, a byte per 8 dimensions
        specs.append(f"IVF{disk_lists(count)},PQ{dim // 8}")
    return [Kind.parse(spec, dim) for spec in specs]


def choose(count: int, dim: int, budget: int) -> Kind:
    """The most accurate kind whose memory for `count` vectors fits `budget` bytes (else the smallest)."""
    options = kinds(count, dim)
    return next((kind for kind in options if kind.memory(count) <= budget), options[-1])


def outgrown(spec: str, trained: int, count: int, dim: int, budget: int) -> bool:
    """Whether an index made as `spec` on `trained` vectors should be rebuilt now that it holds `count`.

    Margins keep a collection near a boundary from rebuilding every run: a flat index is kept up to twice
    EXACT_LIMIT, a quantiser until the collection has grown or shrunk RETRAIN_GROWTH times, and a more
    accurate kind replaces a fitting one only when it fits in half the budget.
    """
    current = Kind.parse(spec, dim)
    if current.memory(count) > budget:  # unless it is the smallest there is already
        return choose(count, dim, budget).family != current.family
    if spec == "Flat":
        return count > 2 * EXACT_LIMIT
    if not trained / RETRAIN_GROWTH <= count <= trained * RETRAIN_GROWTH:
        return True
    options = [kind.family for kind in kinds(count, dim)]
    best = choose(count, dim, budget // 2)
    return current.family not in options or options.index(best.family) < options.index(current.family)


def new_index(kind: Kind, dim: int) -> faiss.Index:
    """An empty index of the kind, inner product (cosine, as vectors are unit length), taking image ids."""
    if kind.spec == "Flat":
        return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    index = faiss.index_factory(dim, kind.spec, faiss.METRIC_INNER_PRODUCT)
    index.cp.niter = KMEANS_ITERATIONS
    if kind.on_disk:  # polysemous training (IndexIVFPQ's default) costs most of the build and serves no search here
        index.do_polysemous_training = False
    return index


@dataclass
class Tuning:
    """How to search an index: lists probed and candidates re-ranked per wanted hit (1: no re-ranking)."""

    nprobe: int = 1
    rerank: int = 1


def search(
    index: faiss.Index,
    tuning: Tuning,
    compressed: bool,
    queries: np.ndarray,
    want: int,
    best: Best,
    selector: faiss.IDSelector | None = None,
    fraction: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """(scores, ids) of the `want` best stored vectors per query, exact scores, -1 ids past the last hit.

    With a selector that admits `fraction` of the index, an IVF index probes proportionally more lists, so
    about as many admitted vectors are compared as without it and recall holds.
    """
    candidates = min(MAX_CANDIDATES, want * tuning.rerank) if compressed else want
    candidates = max(want, min(candidates, index.ntotal))
    params = None
    if is_ivf(index):
        nprobe = min(index.nlist, math.ceil(tuning.nprobe / max(fraction, 1e-9)))
        params = faiss.SearchParametersIVF(sel=selector, nprobe=nprobe)
    elif selector is not None:
        params = faiss.SearchParameters(sel=selector)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if isinstance(index, faiss.IndexIVF):
        scores, ids = scan_lists(index, queries, candidates, params.nprobe, selector)
    else:
        scores, ids = index.search(queries, candidates, params=params)
    if not compressed:
        return scores, ids
    return rerank(queries, ids, want, best)


def scan_lists(index: faiss.Index, queries: np.ndarray, k: int, nprobe: int, selector: faiss.IDSelector | None):
    """(scores, ids) of the k best by the codes of each query's `nprobe` nearest lists of an IVF index.

    One query's lists are split among the cores, in parts of at least SPLIT_BYTES of codes: the service gives a
    search one thread (OpenMP's barriers spin on a busy machine), yet one query is worth splitting. On the Xeon:
    1M vectors in SQ8, 16,000 codes, 3.3-3.7 ms in one thread, 2.2-2.3 ms in two; 20M on disk, 1.1M PQ64 codes,
    70-110 ms and 48-55 ms. A batch of queries is left to FAISS, which spreads the queries over its threads.
    """
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    ivf = faiss.extract_index_ivf(index)
    scanned = nprobe * index.ntotal / max(1, ivf.nlist) * ivf.code_size
    parts = min(cpu_count(), nprobe, int(scanned // SPLIT_BYTES))
    if len(queries) != 1 or parts < 2:
        return index.search(queries, k, params=faiss.SearchParametersIVF(sel=selector, nprobe=nprobe))
    centroid_scores, lists = ivf.quantizer.search(queries, nprobe)

    def part(n: int) -> tuple[np.ndarray, np.ndarray]:  # lists dealt out in turn: each part has near and far ones
        return search_lists(ivf, queries, k, lists[:, n::parts], centroid_scores[:, n::parts], selector)

    found = list(core_threads().map(part, range(parts)))
    scores, ids = np.hstack([f[0] for f in found]), np.hstack([f[1] for f in found])
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]  # the parts' k best each, then the k best of all
    scores, ids = np.take_along_axis(scores, top, 1), np.take_along_axis(ids, top, 1)
    best = np.argsort(-scores, axis=1, kind="stable")
    return np.take_along_axis(scores, best, 1), np.take_along_axis(ids, best, 1)


def search_lists(ivf: faiss.IndexIVF, queries, k: int, lists: np.ndarray, centroid_scores: np.ndarray, selector):
    """(scores, ids) of the k best by the codes of the given lists of each query (IndexIVF.search_preassigned, with
    its parameters: the Python wrapper takes none, and would search ivf.nprobe lists)."""
    lists, centroid_scores = np.ascontiguousarray(lists), np.ascontiguousarray(centroid_scores)
    scores = np.empty((len(queries), k), dtype=np.float32)
    ids = np.empty((len(queries), k), dtype=np.int64)
    params = faiss.SearchParametersIVF(sel=selector, nprobe=lists.shape[1])
    ivf.search_preassigned_c(
        len(queries), faiss.swig_ptr(queries), k, faiss.swig_ptr(lists), faiss.swig_ptr(centroid_scores),
        faiss.swig_ptr(scores), faiss.swig_ptr(ids), False, params,
    )  # fmt: skip
    return scores, ids


def rerank(queries: np.ndarray, candidates: np.ndarray, want: int, best: Best) -> tuple[np.ndarray, np.ndarray]:
    """The `want` best of each row's candidate ids by exact inner product with their stored vectors."""
    out_scores = np.full((len(queries), want), -np.inf, dtype=np.float32)
    out_ids = np.full((len(queries), want), -1, dtype=np.int64)
    for row, (query, ids) in enumerate(zip(queries, candidates, strict=True)):
        scores, ids = best(ids[ids != -1], query, want)
        out_scores[row, : len(ids)], out_ids[row, : len(ids)] = scores, ids
    return out_scores, out_ids


class ExactTop:
    """The exact top-k ids of some queries over vectors streamed in batches (ground truth for calibration)."""

    def __init__(self, queries: np.ndarray, k: int):
        self.queries, self.k = queries, k
        self.scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        self.ids = np.full((len(queries), k), -1, dtype=np.int64)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        self.merge(self.queries @ vectors.T, np.broadcast_to(ids, (len(self.queries), len(ids))))

    def merge(self, scores: np.ndarray, ids: np.ndarray) -> None:
        """Fold candidates, (queries, n) scores and ids (new vectors', or a top-k found elsewhere), into the top-k."""
        scores = np.concatenate([self.scores, scores], axis=1)
        all_ids = np.concatenate([self.ids, ids], axis=1)
        keep = np.argpartition(-scores, self.k - 1, axis=1)[:, : self.k] if scores.shape[1] > self.k else None
        if keep is not None:
            scores, all_ids = np.take_along_axis(scores, keep, 1), np.take_along_axis(all_ids, keep, 1)
        order = np.argsort(-scores, axis=1, kind="stable")
        self.scores, self.ids = np.take_along_axis(scores, order, 1), np.take_along_axis(all_ids, order, 1)


def train(index: faiss.Index, sample: np.ndarray) -> None:
    """Train an IVF index on `sample`; past MAX_LISTS lists, its centroids by two-level k-means (costing sample x
    2 sqrt(lists) distances where k-means costs sample x lists), its codes on a share of the sample as large as
    FAISS uses."""
    sample = np.ascontiguousarray(sample, dtype=np.float32)
    ivf = faiss.extract_index_ivf(index)
    if ivf.nlist > MAX_LISTS:
        # Imported here: faiss.contrib.clustering imports scipy (0.4 s), which no query should pay for.
        from faiss.contrib.clustering import two_level_clustering

        with silenced(2):  # FAISS warns of sub-clusters with fewer than 39 points a centroid
            centroids, _ = two_level_clustering(
                sample, int(math.sqrt(ivf.nlist)), ivf.nlist, clustering_niter=KMEANS_ITERATIONS, spherical=True
            )
        ivf.quantizer.add(centroids)
        sample = sample[:: max(1, len(sample) // CODE_TRAINING)]  # the codes' training assigns it to every list
    index.train(sample)


def assigner(index: faiss.Index) -> Callable[[np.ndarray], np.ndarray] | None:
    """For an IVF index with more lists than MAX_LISTS: a function giving vectors' lists through an HNSW graph of
    the centroids (comparing each vector with every centroid would take hours at tens of millions); else None."""
    ivf = faiss.extract_index_ivf(index)
    if ivf.nlist <= MAX_LISTS:
        return None
    graph = faiss.IndexHNSWFlat(ivf.d, GRAPH_LINKS, faiss.METRIC_INNER_PRODUCT)
    graph.hnsw.efSearch = GRAPH_SEARCH
    graph.add(ivf.quantizer.reconstruct_n(0, ivf.nlist))
    return lambda vectors: graph.search(vectors, 1)[1][:, 0].copy()


def add(
    index: faiss.Index,
    vectors: np.ndarray,
    ids: np.ndarray,
    assign: Callable[[np.ndarray], np.ndarray] | None = None,
) -> None:
    """Add vectors under their ids, to the lists `assign` (an `assigner`) gives if any."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    if assign is None:
        index.add_with_ids(vectors, ids)
    else:
        add_preassigned(faiss.extract_index_ivf(index), vectors, assign(vectors).astype(np.int64), ids)


def build(
    kind: Kind, dim: int, sample: np.ndarray, batches: Iterable[tuple[np.ndarray, np.ndarray]], truths: list[ExactTop]
) -> faiss.Index:
    """An index of `kind` trained on `sample`, holding every batch of (ids, vectors); `truths` see them too."""
    index = new_index(kind, dim)
    if not index.is_trained:
        train(index, sample)
    for ids, vectors in batches:
        index.add_with_ids(vectors, ids)
        for truth in truths:
            truth.add(ids, vectors)
    return index


def calibrate(
    index: faiss.Index, kind: Kind, query_sets: list[tuple[ExactTop, np.ndarray | None]], best: Best
) -> Tuning:
    """The cheapest nprobe and re-rank depth whose recall@10 reaches RECALL_TARGET on every query set.

    Each set is (queries with their exact top-k, and for stored vectors their own ids, left out of both lists).
    One search per nprobe serves every depth: the top d x k candidates are a prefix of the deepest list. A
    search costs the codes its probed lists hold and the candidates it re-ranks; nprobe doubles until scanning
    alone costs more than the cheapest choice found.
    """
    if not is_ivf(index):
        return Tuning()
    depths = kind.rerank_depths
    k = max(truth.k for truth, _ in query_sets)
    chosen, cheapest, nprobe = None, math.inf, 1
    while True:
        nprobe = min(nprobe, index.nlist)
        scan_ns = nprobe * index.ntotal / index.nlist * kind.scan_ns
        recalls = [recall_by_depth(index, kind, nprobe, depths, truth, own, best) for truth, own in query_sets]
        for j, depth in enumerate(depths):
            if all(by_depth[j] >= RECALL_TARGET for by_depth in recalls):
                cost = scan_ns + (depth * k * kind.rerank_ns if kind.compressed else 0)
                if cost < cheapest:
                    chosen, cheapest = Tuning(nprobe, depth), cost
                break  # deeper costs more for no recall needed
        if nprobe == index.nlist or scan_ns >= cheapest:
            break
        nprobe *= 2
    if chosen is None:
        log.warning("recall@10 reaches only %.3f at every list probed", min(min(r) for r in recalls))
        return Tuning(nprobe, depths[-1])
    return chosen


def recall_by_depth(
    index: faiss.IndexIVF, kind: Kind, nprobe: int, depths, truth: ExactTop, own: np.ndarray | None, best: Best
) -> list[float]:
    """recall@k (k - 1 for stored queries, which find themselves) at each re-rank depth, probing nprobe lists."""
    k = truth.k
    params = faiss.SearchParametersIVF(nprobe=nprobe)
    _, candidates = index.search(truth.queries, min(index.ntotal, depths[-1] * k), params=params)
    exact = truth.ids
    if own is not None:
        exact = [row[row != i][: k - 1] for row, i in zip(exact, own, strict=True)]
    rows = [row[row != -1] for row in candidates]
    if kind.compressed:  # exact scores of every candidate, computed once, in the candidates' order
        exact_scores = []
        for query, row in zip(truth.queries, rows, strict=True):
            found, ids = best(row, query, len(row))  # best first, ids a subset of the (distinct) candidates
            order = np.argsort(row)
            scores = np.full(len(row), -np.inf, dtype=np.float32)
            scores[order[np.searchsorted(row[order], ids)]] = found
            exact_scores.append(scores)
    out = []
    for depth in depths:
        found = []
        for n, row in enumerate(rows):
            row = row[: depth * k]
            if kind.compressed:
                row = row[np.argsort(-exact_scores[n][: depth * k], kind="stable")]
            row = row[:k] if own is None else row[row != own[n]][: k - 1]
            found.append(row)
        out.append(recall_at(found, exact))
    return out


def recall_at(found, exact) -> float:
    """Mean fraction of each row of `exact` ids that the same row of `found` holds."""
    hits = sum(
        len(set(np.asarray(f).tolist()) & set(np.asarray(e).tolist()) - {-1}) for f, e in zip(found, exact, strict=True)
    )
    return hits / max(1, sum(int((np.asarray(e) != -1).sum()) for e in exact))


def is_ivf(index) -> bool:
    """An IVF index, in memory or on disk (ondisk.DiskIVF): searched by lists, `nprobe` of them."""
    return hasattr(index, "nlist")


def index_ids(index: faiss.Index) -> np.ndarray:
    """Every id an IDMap, IVF or on-disk index holds."""
    if hasattr(index, "held"):  # ondisk.DiskIVF
        return index.ids()
    if isinstance(index, faiss.IndexIVF):
        lists = index.invlists
        chunks = [
            faiss.rev_swig_ptr(lists.get_ids(i), lists.list_size(i)).copy()
            for i in range(index.nlist)
            if lists.list_size(i)
        ]
        return np.concatenate(chunks) if chunks else np.empty(0, dtype=np.int64)
    return faiss.vector_to_array(index.id_map)
