"""A folder's listing and its diff against the store, done where no process holds the whole collection: the tree
is cut into folders, and a task walks each one and merges its sorted files with the store's rows under that folder
(scan.changes). What the merge finds to do comes back in parts of work, tables kept in Ray's object store; the
driver holds counts and the ids of deleted rows (8 bytes each).

The cut: the driver lists the top of the tree breadth-first until it has UNITS folders to hand out, and merges the
files it met on the way itself. Every path under a folder starts with the folder's path and a "/", so a folder's
rows are one range of the store's paths in byte order ("F/" up to "F0"), read with an index; the driver merges its
own files with the rows outside every handed-out range.
"""

import math
from array import array
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from indexer.runners.work import stored_files
from indexer.scan import FileStat, StoredFile, by_relpath, changes, hidden_prefixes, walk_images
from indexer.store import open_store

UNITS = 256  # folders handed to listing tasks: a few per CPU of a large cluster
MAX_TOP_FOLDERS = 2_000  # folders the driver lists itself at most while looking for them
TODO_COLUMNS = ("relpath", "size", "mtime_ns", "image_id")  # a part of the work: -1 for a new file's image_id
OBJECT_STORE_BYTES = 128 * 1024  # a task's result this large goes to Ray's object store, not its owner's memory


@dataclass
class Found:
    """What a walk found besides the files (small: the driver keeps every unit's)."""

    count: int = 0
    unreadable: list[str] = field(default_factory=list)
    sidecars: dict[str, str] = field(default_factory=dict)
    motions: dict[str, str] = field(default_factory=dict)

    def add(self, other: "Found") -> None:
        self.count += other.count
        self.unreadable += other.unreadable
        self.sidecars |= other.sidecars
        self.motions |= other.motions


@dataclass
class Plan:
    """The tree cut into units: the files the driver found itself, and the folders tasks walk."""

    files: list[FileStat]  # in relpath order
    folders: list[Path]
    seen: frozenset[tuple[int, int]]  # (device, inode) of the folders the driver listed: not walked again
    found: Found


def plan(root: Path, units: int | None = None) -> Plan:
    """List the top of the tree until there are `units` (UNITS) folders to hand out, or no more."""
    units = units or UNITS
    found, files, seen = Found(), [], set()
    queue: deque[Path] = deque([root])
    listed = 0
    while queue and len(queue) < units and listed < MAX_TOP_FOLDERS:
        folder = queue.popleft()
        try:
            st = folder.stat()
        except OSError:
            st = None
        if st is not None and (st.st_dev, st.st_ino) in seen:  # a second link to a folder already listed
            continue
        if st is not None:
            seen.add((st.st_dev, st.st_ino))
        below: list[Path] = []
        files += walk_images(root, found.unreadable, found.sidecars, found.motions, top=folder, folders=below)
        queue.extend(sorted(below))
        listed += 1
    found.count = len(files)
    return Plan(sorted(files, key=by_relpath), list(queue), frozenset(seen), found)


def folder_range(root: Path, folder: Path) -> tuple[str, str]:
    """[start, end) of the paths under `folder` in byte order: "/" is followed by "0"."""
    prefix = folder.relative_to(root).as_posix()
    return prefix + "/", prefix + "0"


def outside(ranges: list[tuple[str, str]]) -> list[tuple[str | None, str | None]]:
    """The gaps between sorted, disjoint [start, end) ranges, None for no bound."""
    gaps, start = [], None
    for first, end in sorted(ranges):
        gaps.append((start, first))
        start = end
    return gaps + [(start, None)]


@dataclass
class StreamedScan:
    """A merge's outcome: the parts of work (tables of TODO_COLUMNS, or refs to them), counts, deleted ids."""

    parts: list = field(default_factory=list)
    todo: int = 0
    unchanged: int = 0
    deleted: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    found: Found = field(default_factory=Found)

    def add(self, other: "StreamedScan") -> None:
        self.parts += other.parts
        self.todo, self.unchanged = self.todo + other.todo, self.unchanged + other.unchanged
        self.deleted = np.concatenate([self.deleted, other.deleted])
        self.found.add(other.found)


def walk_and_diff(
    root: Path, folder: Path, seen: frozenset[tuple[int, int]], location: str, root_id: int, min_rows: int, parts: int
) -> Iterator:
    """A listing task: walk `folder`, merge its files with the store's rows under it, and yield the work in about
    `parts` tables (min_rows at least each), then the StreamedScan of counts and what else the walk found."""
    scan = StreamedScan()
    stats = sorted(
        walk_images(root, scan.found.unreadable, scan.found.sidecars, scan.found.motions, top=folder, seen=set(seen)),
        key=by_relpath,
    )
    scan.found.count = len(stats)
    rows = stored_files(open_store(location), root_id, *folder_range(root, folder))
    hidden = hidden_prefixes(root, scan.found.unreadable)
    yield from changed_parts(stats, rows, hidden, part_size(stats, min_rows, parts), scan)
    yield scan


def part_size(stats: list[FileStat], min_rows: int, parts: int) -> int:
    """Rows in a part of a folder's work: about `parts` parts, `min_rows` at least. Ray keeps a task's results under
    100 KB in the memory of the process that owns them, the driver: a folder with more work than that makes parts
    large enough for the object store."""
    rows = max(min_rows, math.ceil(len(stats) / parts))
    row_bytes = 24 + sum(len(s.relpath) for s in stats) / max(1, len(stats))
    if len(stats) * row_bytes > 2 * OBJECT_STORE_BYTES:
        rows = max(rows, math.ceil(OBJECT_STORE_BYTES / row_bytes))
    return rows


def changed_parts(
    files: Iterable[FileStat], stored: Iterable[StoredFile], hidden: tuple[str, ...], part_rows: int, scan: StreamedScan
) -> Iterator[pa.Table]:
    """Merge the files with the store's rows; new and changed files come out `part_rows` at a time as tables of
    TODO_COLUMNS, and `scan` counts the rest."""
    rows, deleted = [], array("q")  # 8 bytes an id, not a Python int's 36

    def part() -> pa.Table:
        columns = list(zip(*rows, strict=True))
        types = (pa.string(), pa.int64(), pa.int64(), pa.int64())
        arrays = [pa.array(c, t) for c, t in zip(columns, types, strict=True)]
        rows.clear()
        return pa.table(dict(zip(TODO_COLUMNS, arrays, strict=True)))

    for kind, stat, image_id in changes(files, stored, hidden):
        if kind == "unchanged":
            scan.unchanged += 1
        elif kind == "deleted":
            deleted.append(image_id)
        else:
            rows.append((stat.relpath, stat.size, stat.mtime_ns, -1 if image_id is None else image_id))
            scan.todo += 1
            if len(rows) >= part_rows:
                yield part()
    if rows:
        yield part()
    scan.deleted = np.concatenate([scan.deleted, np.frombuffer(deleted, dtype=np.int64)])
