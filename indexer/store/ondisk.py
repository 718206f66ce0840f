"""The embedded store's search index past its memory budget: IVF codes in one memory-mapped file per generation,
new vectors in a small in-memory delta over the same quantiser, removed ones as tombstones, searched as one.

FAISS maps an IVF's lists from disk (OnDiskInvertedLists) but cannot add to mapped lists, and fast-scan (x4fs)
lists cannot be mapped at all; 8-bit PQ codes can. So a generation is built once, like faiss's contrib/ondisk.py
and autofaiss: train on a sample, encode the vectors shard by shard (each shard's lists written to a file, so the
build's memory holds one shard), merge the shards' lists into `index-<build>.ivfdata`. Until the next generation,
vectors written since go to the delta (an in-memory IVF cloned from the trained, empty index: the same centroids
and codebooks, so its scores compare with the generation's) and the generation's rows removed or rewritten since
are tombstones, left out of its search by an id selector. A generation records which ids it holds as a bitmap
(a bit an id: 2.5 MB at 20M), so a tombstone is only ever an id it holds and counts stay exact.

The store writes the delta and tombstones at each save under names of their data version (the meta names them,
and is renamed into place last), and a new generation once they outgrow MERGE_SHARE of it; searches go on from
the old generation until the new one is renamed into place.
"""

import ctypes
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import faiss
import numpy as np
from faiss.contrib.ondisk import merge_ondisk

from indexer.quiet import silenced
from indexer.store import ann
from indexer.store.base import READ_CHUNK
from indexer.store.vectors import VectorFile

SHARD_VECTORS = 1_000_000  # vectors encoded into one shard at a time: ~100 MB of codes and ids with PQ64
MERGE_SHARE = 0.1  # a new generation once the delta and tombstones reach this share of the current one
READ_FLAGS = faiss.IO_FLAG_ONDISK_SAME_DIR  # the lists file is the one beside the index file, mapped
MAPPED_BUDGET = 256 * 2**20  # bytes of lists searches may have touched before their pages are unmapped
MADV_DONTNEED = 4


if sys.platform == "linux":
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]


def generation_files(build: str) -> tuple[str, str, str]:
    """(index, inverted lists, held ids bitmap) file names of a generation."""
    return f"index-{build}.faiss", f"index-{build}.ivfdata", f"index-{build}.ids.npy"


class DiskIVF:
    """A generation's mapped IVF, the delta and the tombstones, with the slice of faiss.IndexIVF's interface the
    store uses (ntotal, nlist, search with SearchParametersIVF, add_with_ids, remove_ids)."""

    def __init__(self, main: faiss.Index, delta: faiss.Index, held: np.ndarray, tombstones: Iterable[int] = ()):
        self.main, self.delta, self.held = main, delta, held
        self.tombstones = set(int(i) for i in tombstones)
        self._alive: tuple[faiss.IDSelector, ...] | None = None  # selector objects kept alive with their use
        self.touched = 0  # bytes of lists searched since their pages were last unmapped

    @cached_property
    def mapping(self) -> tuple[int, int] | None:
        """(address, length) of the generation's mapped lists file, where unmapping its pages is possible."""
        lists = faiss.downcast_InvertedLists(faiss.extract_index_ivf(self.main).invlists)
        if sys.platform != "linux" or not isinstance(lists, faiss.OnDiskInvertedLists) or not lists.totsize:
            return None
        return int(lists.ptr), int(lists.totsize)

    def release_touched(self, nprobe: int, queries: int) -> None:
        """Unmap the lists file's pages once searches may have touched MAPPED_BUDGET bytes of it. The pages stay in
        the page cache (a later search takes a minor fault, not a read); the process stops holding them, so its
        memory is its own, not every list a query ever probed (the whole file, in time: 1.4 GB at 20M)."""
        if self.mapping is None:
            return
        self.touched += queries * nprobe * self.mapping[1] // max(1, self.nlist)
        if self.touched >= MAPPED_BUDGET:
            self.touched = 0
            libc.madvise(*self.mapping, MADV_DONTNEED)  # on a shared file mapping: drops page-table entries only

    @property
    def nlist(self) -> int:
        return faiss.extract_index_ivf(self.main).nlist

    @property
    def ntotal(self) -> int:
        return self.main.ntotal - len(self.tombstones) + self.delta.ntotal

    @property
    def nprobe(self) -> int:
        return faiss.extract_index_ivf(self.main).nprobe

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        for index in (self.main, self.delta):
            faiss.extract_index_ivf(index).nprobe = value

    def holds(self, ids: np.ndarray) -> np.ndarray:
        """Which ids the generation's lists hold."""
        ids = np.asarray(ids, dtype=np.int64)
        inside = (ids >= 0) & (ids < 8 * len(self.held))
        found = np.zeros(len(ids), dtype=bool)
        kept = ids[inside]
        found[inside] = (self.held[kept >> 3] >> (kept & 7)) & 1 == 1
        return found

    @cached_property
    def assign(self) -> Callable[[np.ndarray], np.ndarray] | None:
        """The delta's list assignment (ann.assigner), built at the first add: a reader that adds nothing never pays
        for the graph."""
        return ann.assigner(self.delta)

    def add_with_ids(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        ann.add(self.delta, vectors, ids, self.assign)

    def remove_ids(self, ids: np.ndarray) -> None:
        """Drop ids from the delta, and tombstone those the generation holds (a rewritten row comes back in the
        delta)."""
        ids = np.asarray(ids, dtype=np.int64)
        self.delta.remove_ids(ids)
        before = len(self.tombstones)
        self.tombstones.update(ids[self.holds(ids)].tolist())
        if len(self.tombstones) != before:
            self._alive = None

    def main_selector(self, selector: faiss.IDSelector | None) -> faiss.IDSelector | None:
        """`selector` without the tombstones, for the generation's search."""
        if not self.tombstones:
            return selector
        if self._alive is None:
            batch = faiss.IDSelectorBatch(np.fromiter(self.tombstones, dtype=np.int64))
            self._alive = (batch, faiss.IDSelectorNot(batch))
        if selector is None:
            return self._alive[1]
        both = faiss.IDSelectorAnd(selector, self._alive[1])
        both.referenced = (selector, self._alive)  # SWIG keeps no reference of its own
        return both

    def search(self, queries: np.ndarray, k: int, params: faiss.SearchParametersIVF | None = None):
        """(scores, ids) of the k best by the codes over the generation and the delta, -1 ids past the last."""
        nprobe = params.nprobe if params is not None and params.nprobe else self.nprobe
        selector = params.sel if params is not None else None
        scores, ids = self.scan(queries, k, nprobe, self.main_selector(selector))
        self.release_touched(nprobe, len(queries))
        if self.delta.ntotal == 0:
            return scores, ids
        delta_params = faiss.SearchParametersIVF(sel=selector, nprobe=nprobe)
        more_scores, more_ids = self.delta.search(queries, k, params=delta_params)
        scores, ids = np.hstack([scores, more_scores]), np.hstack([ids, more_ids])
        scores = np.where(ids == -1, -np.inf, scores)
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)

    def scan(self, queries: np.ndarray, k: int, nprobe: int, selector: faiss.IDSelector | None):
        """(scores, ids) of the k best by the codes of the generation's `nprobe` nearest lists (split among the
        cores for one query: ann.scan_lists)."""
        return ann.scan_lists(self.main, queries, k, nprobe, selector)

    def ids(self) -> np.ndarray:
        """Every id searched: the generation's but its tombstones, and the delta's."""
        held = np.flatnonzero(np.unpackbits(self.held, bitorder="little"))
        if self.tombstones:
            held = np.setdiff1d(held, np.fromiter(self.tombstones, dtype=np.int64))
        return np.union1d(held, ann.index_ids(self.delta))


@dataclass
class ShardWork:
    """A generation's vectors to encode, for an `Encode`: each shard's ids into a clone of `trained`, its file in
    `scratch`; `truths` must see every vector on the way."""

    trained: faiss.Index
    vector_file: Path
    dim: int
    shards: list[np.ndarray]  # ascending ids, SHARD_VECTORS a shard
    truths: list[ann.ExactTop]
    scratch: Path


Encode = Callable[[ShardWork], list[str]]  # the shards' files, in the shards' order


def build(
    kind: ann.Kind,
    dim: int,
    sample: np.ndarray,
    vector_file: Path,
    ids: np.ndarray,
    truths: list[ann.ExactTop],
    directory: Path,
    build_id: str,
    encode: Encode | None = None,
) -> DiskIVF:
    """A new generation in `directory`: trained on `sample`, the vectors of `ids` (ascending) read from `vector_file`
    and encoded shard by shard by `encode` (in this process unless given: see runners/ray_index_build.py), merged
    into its lists file; `truths` see the vectors on the way."""
    trained = ann.new_index(kind, dim)
    ann.train(trained, sample)
    index_name, lists_name, held_name = generation_files(build_id)
    ids = np.asarray(ids, dtype=np.int64)
    shards = [ids[start : start + SHARD_VECTORS] for start in range(0, len(ids), SHARD_VECTORS)] or [ids]
    scratch = Path(tempfile.mkdtemp(prefix=".index-shards-", dir=directory))
    try:
        shard_files = (encode or encode_here)(ShardWork(trained, Path(vector_file), dim, shards, truths, scratch))
        main = faiss.clone_index(trained)
        with silenced(1):  # FAISS prints each resize of the lists file to stdout
            merge_ondisk(main, shard_files, str(directory / lists_name))
        # Written, then read back mapped: the lists a merge leaves open are for writing, not for searching.
        faiss.write_index(main, str(scratch / index_name))
        os.replace(scratch / index_name, directory / index_name)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    bits = np.zeros(int(ids.max()) + 1 if len(ids) else 1, dtype=bool)
    bits[ids] = True
    held = np.packbits(bits, bitorder="little")
    np.save(directory / held_name, held)
    return DiskIVF(read_generation(directory / index_name), faiss.clone_index(trained), held)


def encode_here(work: ShardWork) -> list[str]:
    """The default `Encode`: every shard in turn in this process, its vectors streamed in chunks."""
    vectors = VectorFile(work.vector_file, work.dim)
    try:
        return [
            encode_shard(work.trained, vectors, ids, work.scratch / f"shard-{n}.faiss", work.truths)
            for n, ids in enumerate(work.shards)
        ]
    finally:
        vectors.close()


def encode_shard(
    trained: faiss.Index, vectors: VectorFile, ids: np.ndarray, path: Path, truths: list[ann.ExactTop]
) -> str:
    """One shard's vectors encoded into a clone of `trained`, written to `path` under a temporary name first (a
    shard file is whole or absent: a retried task never leaves half of one); `truths` see the vectors."""
    shard, assign = faiss.clone_index(trained), ann.assigner(trained)
    for chunk, rows in vectors.stream(ids[start : start + READ_CHUNK] for start in range(0, len(ids), READ_CHUNK)):
        ann.add(shard, rows, chunk, assign)
        for truth in truths:
            truth.add(chunk, rows)
    partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    faiss.write_index(shard, str(partial))
    os.replace(partial, path)
    return str(path)


def read_generation(path: Path) -> faiss.Index:
    """A generation's index with its lists mapped from the file beside it (FAISS says so on stdout: silenced)."""
    with silenced(1):
        return faiss.read_index(str(path), READ_FLAGS)


def save(index: DiskIVF, directory: Path, version: int) -> dict:
    """Write what changed since the generation was built, the delta and the tombstones, under names of `version`;
    returns the meta's entries that name them."""
    delta_name, tombstones_name = f"index-delta-{version}.faiss", f"index-tombstones-{version}.npy"
    faiss.write_index(index.delta, str(directory / (delta_name + ".tmp")))
    os.replace(directory / (delta_name + ".tmp"), directory / delta_name)
    with open(directory / (tombstones_name + ".tmp"), "wb") as f:
        np.save(f, np.fromiter(sorted(index.tombstones), dtype=np.int64))
    os.replace(directory / (tombstones_name + ".tmp"), directory / tombstones_name)
    return {"delta": delta_name, "tombstones": tombstones_name}


def load(directory: Path, meta: dict) -> DiskIVF:
    """The saved generation (its lists mapped, not read), and the delta and tombstones the meta names."""
    index_name, _, held_name = generation_files(meta["build"])
    main = read_generation(directory / index_name)
    delta = faiss.read_index(str(directory / meta["delta"]))
    return DiskIVF(main, delta, np.load(directory / held_name), np.load(directory / meta["tombstones"]).tolist())


def remove_stale(directory: Path, metas: Iterable[dict]) -> None:
    """Delete the files of generations, deltas and tombstones no meta of `metas` names (the new one, and the one
    it replaces, which a reader may be loading now). A reader that maps an older generation keeps it mapped: the
    file lives on until it unmaps."""
    keep = set()
    for meta in metas:
        keep |= {*generation_files(meta.get("build", "")), meta.get("delta"), meta.get("tombstones")}
    for path in directory.glob("index-*"):
        if path.name not in keep and not path.name.endswith(".tmp"):
            path.unlink(missing_ok=True)
