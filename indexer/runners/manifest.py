"""A folder's listing as a stream no process holds whole: the tree is cut into folders that tasks walk, each
walk comes back as one table sorted by relpath, and the driver reads the tables one at a time in relpath order
through the scan's merge with the store's rows (scan.changes). What the merge finds to do is written out in parts
as it goes; the driver keeps counts and the ids of deleted rows (8 bytes each).

The cut: the driver lists the top of the tree breadth-first until it has UNITS folders to hand out; the files it
met on the way are units of their own. Every path under a folder starts with the folder's path and a "/", so
sorting the units by key (a file's relpath, a folder's relpath + "/") and reading each folder's sorted table in its
turn gives the whole listing in relpath order.
"""

from array import array
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from indexer.scan import FileStat, StoredFile, by_relpath, changes, walk_images

UNITS = 256  # folders handed to listing tasks: a few per CPU of a large cluster, one table each for the driver
MAX_TOP_FOLDERS = 2_000  # folders the driver lists itself at most while looking for them
TODO_COLUMNS = ("relpath", "size", "mtime_ns", "image_id")  # a part of the work: -1 for a new file's image_id


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

    files: list[FileStat]
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
    return Plan(files, list(queue), frozenset(seen), found)


def walk_folder(root: Path, folder: Path, seen: frozenset[tuple[int, int]]) -> tuple[pa.Table, Found]:
    """A listing task: every file under `folder`, sorted by relpath, as a table; and what else it found."""
    found = Found()
    stats = sorted(
        walk_images(root, found.unreadable, found.sidecars, found.motions, top=folder, seen=set(seen)), key=by_relpath
    )
    found.count = len(stats)
    table = pa.table(
        {
            "relpath": pa.array([s.relpath for s in stats], pa.string()),
            "size": pa.array([s.size for s in stats], pa.int64()),
            "mtime_ns": pa.array([s.mtime_ns for s in stats], pa.int64()),
        }
    )
    return table, found


def in_order(root: Path, plan: Plan, table_of: Callable[[int], pa.Table]) -> Iterator[FileStat]:
    """Every file of the plan in relpath order; `table_of(n)` fetches the n-th folder's table when it is reached."""
    units: list[tuple[str, Any]] = [(stat.relpath, stat) for stat in plan.files]
    units += [(folder.relative_to(root).as_posix() + "/", n) for n, folder in enumerate(plan.folders)]
    for _, unit in sorted(units, key=lambda u: u[0]):
        if isinstance(unit, FileStat):
            yield unit
            continue
        table = table_of(unit)
        for batch in table.to_batches(max_chunksize=50_000):
            relpaths, sizes, mtimes = (batch.column(c).to_pylist() for c in ("relpath", "size", "mtime_ns"))
            yield from map(FileStat, relpaths, sizes, mtimes)
        del table


@dataclass
class StreamedScan:
    """The merge's outcome with the work in parts (what `put` returned for each table of TODO_COLUMNS)."""

    parts: list = field(default_factory=list)
    todo: int = 0
    unchanged: int = 0
    deleted: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))


def stream_changes(
    files: Iterable[FileStat],
    stored: Iterable[StoredFile],
    hidden: tuple[str, ...],
    put: Callable[[pa.Table], Any],
    part_rows: int,
) -> StreamedScan:
    """Merge the listing with the store's rows; new and changed files go out `part_rows` at a time through `put`."""
    scan, rows, deleted = StreamedScan(), [], array("q")  # 8 bytes an id, not a Python int's 36

    def flush() -> None:
        if rows:
            columns = list(zip(*rows, strict=True))
            types = (pa.string(), pa.int64(), pa.int64(), pa.int64())
            arrays = [pa.array(c, t) for c, t in zip(columns, types, strict=True)]
            scan.parts.append(put(pa.table(dict(zip(TODO_COLUMNS, arrays, strict=True)))))
            rows.clear()

    for kind, stat, image_id in changes(files, stored, hidden):
        if kind == "unchanged":
            scan.unchanged += 1
        elif kind == "deleted":
            deleted.append(image_id)
        else:
            rows.append((stat.relpath, stat.size, stat.mtime_ns, -1 if image_id is None else image_id))
            scan.todo += 1
            if len(rows) >= part_rows:
                flush()
    flush()
    scan.deleted = np.frombuffer(deleted, dtype=np.int64)
    return scan
