"""Near-duplicate groups: copies by content hash, near copies by embedding, each group with a suggested keeper.

Every image's nearest neighbours above a cosine threshold are linked, and so are images with one content hash;
the connected components of those links are the groups (so a burst of twenty shots is one group even though
each image looks at only its few nearest). Neighbours are exact up to EXACT_LIMIT vectors and come from an IVF
index built for the run beyond. clipdex never deletes anything: the groups are a list for the user or another
tool.
"""

import math
from dataclasses import dataclass
from datetime import datetime

import faiss
import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from sqlalchemy import func, select

from indexer.errors import BadInputError
from indexer.store import INDEXED, Image, Root, Store
from indexer.store.filters import Filters, folder_condition

DEFAULT_THRESHOLD = 0.95
NEIGHBOURS = 8  # looked at per image; a larger group still joins up through its members' neighbours
EXACT_LIMIT = 50_000  # vectors up to which neighbours are found exactly (a flat index)
NPROBE = 4  # IVF lists searched per image beyond that: near copies (cosine >= 0.9) share a list or a neighbour
SEARCH_CHUNK = 16_384


@dataclass
class Member:
    id: int
    path: str
    width: int
    height: int
    bytes: int  # the file's size
    taken_at: datetime | None
    similarity: float  # cosine to the group's keeper (1.0 for the keeper)


@dataclass
class DuplicateGroup:
    """Images that are copies or near copies of each other, in order of preference: members[0] is the keeper."""

    members: list[Member]
    exact: bool  # every member has the same content: byte-identical files

    @property
    def keeper(self) -> Member:
        return self.members[0]

    @property
    def reclaimable(self) -> int:
        """Bytes the copies other than the keeper take."""
        return sum(m.bytes for m in self.members[1:])


def check_threshold(threshold: float) -> float:
    if not 0.5 <= threshold <= 1.0:
        raise BadInputError(f"threshold must be a cosine between 0.5 and 1.0, not {threshold}")
    return threshold


def find_duplicates(
    store: Store, threshold: float = DEFAULT_THRESHOLD, folder: str | None = None
) -> list[DuplicateGroup]:
    """Groups of two or more near-identical images (cosine >= threshold, or the same content), largest first."""
    check_threshold(threshold)
    ids, vectors = load_vectors(store, folder)
    if len(ids) < 2:
        return []
    near = neighbour_links(vectors, threshold)
    links = np.concatenate([near, same_content_links(store, ids, folder)])
    graph = coo_matrix((np.ones(len(links), dtype=np.int8), (links[:, 0], links[:, 1])), shape=(len(ids),) * 2)
    _, component = connected_components(graph, directed=False)
    sizes = np.bincount(component)
    grouped = np.flatnonzero(sizes[component] > 1)
    if not len(grouped):
        return []
    order = grouped[np.argsort(component[grouped], kind="stable")]
    rows = member_rows(store, ids[order].tolist())
    groups = []
    for members in np.split(order, np.flatnonzero(np.diff(component[order])) + 1):
        groups.append(make_group(members, ids, vectors, rows))
    groups.sort(key=lambda g: (-len(g.members), g.keeper.id))
    return groups


def load_vectors(store: Store, folder: str | None) -> tuple[np.ndarray, np.ndarray]:
    """(ids, float32 vectors) of the indexed images, under `folder` when given."""
    if folder is not None:
        ids = store.matching_ids(Filters(folder=folder))
        return ids, store.vectors_of(ids) if len(ids) else np.zeros((0, store.dim), dtype=np.float32)
    chunks = list(store.iter_vectors())
    if not chunks:
        return np.zeros(0, dtype=np.int64), np.zeros((0, store.dim), dtype=np.float32)
    return np.concatenate([c[0] for c in chunks]), np.concatenate([c[1] for c in chunks]).astype(np.float32)


def neighbour_links(vectors: np.ndarray, threshold: float) -> np.ndarray:
    """(i, j) position pairs, i < j, where j is among i's nearest neighbours at cosine >= threshold."""
    n, dim = vectors.shape
    if n <= EXACT_LIMIT:
        index = faiss.IndexFlatIP(dim)
    else:
        lists = min(int(4 * math.sqrt(n)), n // 39)  # faiss wants 39 training points a list
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, lists, faiss.METRIC_INNER_PRODUCT)
        sample = np.random.default_rng(0).choice(n, min(n, lists * 39), replace=False)
        index.cp.niter = 10  # coarse lists are enough to find near copies
        index.train(vectors[np.sort(sample)])
        index.nprobe = NPROBE
    index.add(vectors)
    k = min(NEIGHBOURS + 1, n)  # the image itself comes back too
    links = []
    for start in range(0, n, SEARCH_CHUNK):
        scores, found = index.search(vectors[start : start + SEARCH_CHUNK], k)
        rows = np.arange(start, start + len(found))[:, None]
        keep = (scores >= threshold) & (found > rows)  # each pair once, never an image with itself (or -1)
        links.append(np.column_stack([np.broadcast_to(rows, found.shape)[keep], found[keep]]))
    return np.concatenate(links).astype(np.int64)


def same_content_links(store: Store, ids: np.ndarray, folder: str | None) -> np.ndarray:
    """(i, j) position pairs of images with the same content hash: a chain through each set of copies."""
    shared = select(Image.hash).where(Image.status == INDEXED).group_by(Image.hash).having(func.count() > 1)
    query = select(Image.id, Image.hash).where(Image.status == INDEXED, Image.hash.in_(shared))
    if folder is not None:
        query = query.join(Root).where(folder_condition(folder))
    with store.session() as s:
        rows = s.execute(query.order_by(Image.hash, Image.id)).all()
    position = {int(i): p for p, i in enumerate(ids)}
    links = [
        (position[a], position[b])
        for (a, hash_a), (b, hash_b) in zip(rows, rows[1:], strict=False)
        if hash_a == hash_b and a in position and b in position
    ]
    return np.array(links, dtype=np.int64).reshape(-1, 2)


def member_rows(store: Store, ids: list[int]) -> dict[int, tuple]:
    """{id: (path, width, height, size, taken_at, hash)} of the grouped images."""
    paths = store.paths(ids)
    rows = {}
    with store.session() as s:
        for start in range(0, len(ids), 10_000):
            query = select(Image.id, Image.width, Image.height, Image.size, Image.taken_at, Image.hash)
            for i, *rest in s.execute(query.where(Image.id.in_(ids[start : start + 10_000]))):
                rows[i] = (paths[i], *rest)
    return rows


def make_group(positions: np.ndarray, ids: np.ndarray, vectors: np.ndarray, rows: dict[int, tuple]) -> DuplicateGroup:
    """The keeper is the largest picture (pixels), then the oldest (capture time), then the first indexed."""

    def rank(p: int) -> tuple:
        _, width, height, _, taken_at, _ = rows[int(ids[p])]
        return (-(width or 0) * (height or 0), taken_at is None, taken_at or datetime.min, int(ids[p]))

    ordered = sorted(positions.tolist(), key=rank)
    similarity = vectors[ordered] @ vectors[ordered[0]]
    members = []
    for p, score in zip(ordered, similarity.tolist(), strict=True):
        path, width, height, size, taken_at, _ = rows[int(ids[p])]
        members.append(Member(int(ids[p]), path, width or 0, height or 0, size, taken_at, min(score, 1.0)))
    members[0].similarity = 1.0
    hashes = {rows[int(ids[p])][5] for p in ordered}
    return DuplicateGroup(members=members, exact=len(hashes) == 1)
