"""Duplicate groups in three kinds, each with a suggested keeper: exact copies, the same picture, similar shots.

Exact copies share a content hash; the same picture (resized, re-encoded, lightly edited) has a perceptual hash
(pHash, computed at indexing; a video's is its first kept frame's, and its copy also lasts as long) at most
`distance` bits from the keeper's; similar shots have embeddings at cosine
>= `similarity` to the keeper's and capture times within `window` of it when both have one. Nothing chains: keepers
are chosen greedily, the best picture first (most pixels, then the oldest capture, then the file written first: a
copy is written after its original), and each takes the images still free that are within its kind's threshold of
it (the same picture's embeddings must agree too: SAME_PICTURE_COSINE). Kinds run strongest first (exact, same
picture, similar), so an image is in at most one group, of the strongest kind that links it to a keeper: an image
whose keeper went to a stronger group waits for the next run (after the ones to drop are moved to the trash).

Candidates for the last two kinds come from each image's NEIGHBOURS nearest embeddings (a larger set of copies
becomes several groups): exact up to EXACT_LIMIT vectors, from an IVF index built for the run beyond; the same
picture's candidates are those at cosine >= SAME_PICTURE_COSINE, and their pHashes decide (comparing every pHash
with every other took 3 minutes at 100k images). An image indexed before clipdex computed pHashes has none and is
no candidate for the same picture until re-indexed.
"""

import math
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

import faiss
import numpy as np
from sqlalchemy import func, select

from indexer.errors import BadInputError
from indexer.store import INDEXED, Image, Root, Store
from indexer.store.filters import Filters, folder_condition

# A same picture's embeddings agree too (a resized or re-encoded copy scores 0.99 and more): pHash alone matches
# different pictures of plain shapes on plain grounds, as graphics and the tests' toy world have them.
SAME_PICTURE_COSINE = 0.85
NEIGHBOURS = 16  # looked at per image: the most members a keeper can take of one kind
EXACT_LIMIT = 50_000  # vectors up to which neighbours are found exactly (a flat index)
NPROBE = 4  # IVF lists searched per image beyond that: near copies (cosine >= 0.9) share a list or a neighbour
SEARCH_CHUNK = 16_384
MAX_DISTANCE = 32  # pHash bits: past half of 64, unrelated pictures match
MAX_WINDOW = 10 * 365 * 86_400.0
# A re-encoded video keeps its length to a frame or two; containers round it differently (edit lists, audio).
VIDEO_LENGTH_SLACK_MS = 1000


class DuplicateKind(StrEnum):
    """How alike a duplicate group's members are to its keeper, strongest first."""

    exact = "exact"  # the same bytes: one content hash
    same_picture = "same-picture"  # the picture resized, re-encoded or lightly edited: close perceptual hashes
    similar = "similar"  # similar shots: close embeddings, taken close together in time when both say when


@dataclass(frozen=True)
class DuplicateOptions:
    """Which duplicate kinds to find and how alike each must be.

    `distance`: the pHash bits (of 64) a same picture may differ by; at 8, 2 of 499,500 pairs of distinct photos
    matched and 2 of 800 resized, re-encoded, brightened or cropped copies did not (bench/duplicates.py).
    `similarity`: the cosine similar shots reach; `window`: the seconds between their capture times when both
    have one.
    """

    kinds: tuple[DuplicateKind, ...] = tuple(DuplicateKind)
    distance: int = 8
    similarity: float = 0.95
    window: float = 300.0
    folder: str | None = None

    def __post_init__(self):
        if not self.kinds:
            raise BadInputError(f"give at least one duplicate kind: {', '.join(DuplicateKind)}")
        if not 0 <= self.distance <= MAX_DISTANCE:
            raise BadInputError(f"distance must be pHash bits from 0 to {MAX_DISTANCE}, not {self.distance}")
        if not 0.5 <= self.similarity <= 1.0:
            raise BadInputError(f"similarity must be a cosine between 0.5 and 1.0, not {self.similarity}")
        if not 0 <= self.window <= MAX_WINDOW:
            raise BadInputError(f"window must be from 0 to {MAX_WINDOW:g} seconds, not {self.window:g}")


@dataclass
class Member:
    id: int
    path: str
    width: int
    height: int
    bytes: int  # the file's size
    taken_at: datetime | None
    similarity: float  # cosine to the group's keeper (1.0 for the keeper)
    distance: int | None  # pHash bits that differ from the keeper's (None when either has no pHash)


@dataclass
class DuplicateGroup:
    """Images alike in one way (`kind`), in order of preference: members[0] is the keeper."""

    kind: DuplicateKind
    members: list[Member]

    @property
    def keeper(self) -> Member:
        return self.members[0]

    @property
    def reclaimable(self) -> int:
        """Bytes the copies other than the keeper take."""
        return sum(m.bytes for m in self.members[1:])


@dataclass
class Row:
    path: str
    width: int
    height: int
    bytes: int
    taken_at: datetime | None
    phash: str | None
    video: bool  # a video, judged by its first kept frame
    duration_ms: int | None
    mtime_ns: int  # a copy is written after its original


def find_duplicates(store: Store, options: DuplicateOptions) -> list[DuplicateGroup]:
    """The groups of the kinds asked for, strongest kind first, then largest first."""
    ids, vectors = load_vectors(store, options.folder)
    if len(ids) < 2:
        return []
    free = np.ones(len(ids), dtype=bool)
    groups: list[DuplicateGroup] = []
    rows: dict[int, Row] = {}
    pairs = None  # the nearest neighbours of the images that are not exact copies: for the other two kinds

    def rank(p: int) -> tuple:
        row = rows[int(ids[p])]
        return (-row.width * row.height, row.taken_at is None, row.taken_at or datetime.min, row.mtime_ns, int(ids[p]))

    for kind in DuplicateKind:  # strongest first
        if kind not in options.kinds:
            continue
        if kind is DuplicateKind.exact:
            neighbours = same_content(store, ids, options.folder)
            rows |= member_rows(store, [int(ids[p]) for p in neighbours])
        else:
            if pairs is None:
                floor = options.similarity
                if DuplicateKind.same_picture in options.kinds:
                    floor = min(floor, SAME_PICTURE_COSINE)
                pairs = near_pairs(vectors, free, floor)
                rows |= member_rows(store, [int(i) for i in ids[np.unique(pairs)] if int(i) not in rows])
            if kind is DuplicateKind.same_picture:
                neighbours = adjacency(same_pictures(pairs, ids, vectors, rows, options.distance))
            else:
                neighbours = adjacency(similar_shots(pairs, ids, vectors, rows, options))
        for keeper in sorted(neighbours, key=rank):
            if not free[keeper]:
                continue
            members = sorted((p for p in neighbours[keeper] if p != keeper and free[p]), key=rank)
            if members:
                free[[keeper, *members]] = False
                groups.append(make_group(kind, [keeper, *members], ids, vectors, rows))
    strength = {kind: n for n, kind in enumerate(DuplicateKind)}
    groups.sort(key=lambda g: (strength[g.kind], -len(g.members), g.keeper.id))
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


def same_content(store: Store, ids: np.ndarray, folder: str | None) -> dict[int, list[int]]:
    """{position: the positions of every image with its content hash} for hashes that several images share."""
    shared = select(Image.hash).where(Image.status == INDEXED).group_by(Image.hash).having(func.count() > 1)
    query = select(Image.id, Image.hash).where(Image.hash.in_(shared), Image.status == INDEXED)
    if folder is not None:
        query = query.join(Root).where(folder_condition(folder))
    position = {int(i): p for p, i in enumerate(ids)}
    copies = defaultdict(list)
    with store.session() as s:
        for image_id, digest in s.execute(query):
            if image_id in position:
                copies[digest].append(position[image_id])
    return {p: same for same in copies.values() if len(same) > 1 for p in same}


def near_pairs(vectors: np.ndarray, free: np.ndarray, threshold: float) -> np.ndarray:
    """(i, j) position pairs of free images, j among i's nearest neighbours at cosine >= threshold."""
    where = np.flatnonzero(free)
    return where[neighbour_links(vectors[where], threshold)] if len(where) > 1 else np.zeros((0, 2), np.int64)


def cosines(pairs: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", vectors[pairs[:, 0]], vectors[pairs[:, 1]])


def same_pictures(
    pairs: np.ndarray, ids: np.ndarray, vectors: np.ndarray, rows: dict[int, Row], distance: int
) -> np.ndarray:
    """The neighbour pairs whose embeddings agree (SAME_PICTURE_COSINE) and whose pHashes are at most `distance`
    bits apart (images without a pHash are no candidates)."""

    def close(a: int, b: int) -> bool:
        ra, rb = rows[int(ids[a])], rows[int(ids[b])]
        alike = ra.phash is not None and rb.phash is not None and phash_distance(ra.phash, rb.phash) <= distance
        return alike and same_length(ra, rb)

    agree = pairs[cosines(pairs, vectors) >= SAME_PICTURE_COSINE]
    return agree[[close(a, b) for a, b in agree.tolist()]].reshape(-1, 2)


def same_length(a: Row, b: Row) -> bool:
    """Whether two rows can be one picture by their kind and length: a still is never a copy of a video, and a
    video's copy (re-encoded, resized) lasts as long, where both containers say. Many videos open alike (a black
    fade-in, a title): their first frames alone would make them copies."""
    if a.video != b.video:
        return False
    if a.duration_ms is None or b.duration_ms is None:
        return True
    return abs(a.duration_ms - b.duration_ms) <= max(VIDEO_LENGTH_SLACK_MS, 0.02 * max(a.duration_ms, b.duration_ms))


def similar_shots(
    pairs: np.ndarray, ids: np.ndarray, vectors: np.ndarray, rows: dict[int, Row], options: DuplicateOptions
) -> np.ndarray:
    """The neighbour pairs at cosine >= `similarity` whose capture times are at most `window` seconds apart (or
    unknown for either image)."""

    def close(a: int, b: int) -> bool:
        ta, tb = rows[int(ids[a])].taken_at, rows[int(ids[b])].taken_at
        return ta is None or tb is None or abs((ta - tb).total_seconds()) <= options.window

    alike = pairs[cosines(pairs, vectors) >= options.similarity]
    return alike[[close(a, b) for a, b in alike.tolist()]].reshape(-1, 2)


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


def adjacency(pairs: np.ndarray) -> dict[int, set[int]]:
    """{position: its linked positions}, both ways, from (i, j) pairs."""
    linked = defaultdict(set)
    for a, b in pairs.tolist():
        linked[a].add(b)
        linked[b].add(a)
    return linked


def member_rows(store: Store, ids: list[int]) -> dict[int, Row]:
    """{id: Row} of the given images, 10,000 at a time (a query's parameters are limited)."""
    rows = {}
    query = select(
        Image.id, Image.width, Image.height, Image.size, Image.taken_at, Image.phash, Image.timestamp_ms,
        Image.duration_ms, Image.mtime_ns,
    )  # fmt: skip
    with store.session() as s:
        for start in range(0, len(ids), 10_000):
            chunk = ids[start : start + 10_000]
            paths = store.paths(chunk)
            for i, width, height, size, taken_at, phash, at, duration, mtime in s.execute(
                query.where(Image.id.in_(chunk))
            ):
                rows[i] = Row(paths[i], width or 0, height or 0, size, taken_at, phash, at is not None, duration, mtime)
    return rows


def make_group(
    kind: DuplicateKind, positions: list[int], ids: np.ndarray, vectors: np.ndarray, rows: dict[int, Row]
) -> DuplicateGroup:
    """A group of these positions, the keeper first, each member's similarity and distance to the keeper."""
    similarity = vectors[positions] @ vectors[positions[0]]
    keeper_hash = rows[int(ids[positions[0]])].phash
    members = []
    for p, score in zip(positions, similarity.tolist(), strict=True):
        row = rows[int(ids[p])]
        distance = phash_distance(keeper_hash, row.phash) if keeper_hash and row.phash else None
        members.append(
            Member(int(ids[p]), row.path, row.width, row.height, row.bytes, row.taken_at, min(score, 1.0), distance)
        )
    members[0].similarity = 1.0
    return DuplicateGroup(kind=kind, members=members)


def phash_distance(a: str, b: str) -> int:
    return (int(a, 16) ^ int(b, 16)).bit_count()
