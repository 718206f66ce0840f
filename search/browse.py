"""The collection without a query: its photos newest first, and its folders with their counts.

A photo's date is its capture time, else its file's modification time (UTC). Both backends answer from the
(status, taken_at, mtime_ns) index: dated images in capture-time order, undated ones (taken_at NULL) in file-time order,
one page of each merged here. Pages are keyset pages: each starts after the last photo of the one before, so
deep pages cost what the first does, and images added meanwhile shift nothing.
"""

from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import Row, func, or_, select, tuple_

from indexer.errors import BadInputError, NotFoundError
from indexer.store import INDEXED, Filters, Image, Root, Store
from indexer.store.filters import matching_ids

EPOCH = datetime(1970, 1, 1)
MICROSECOND = timedelta(microseconds=1)


@dataclass
class Folder:
    """An indexed root, or a folder under one, with the indexed images under it (its subfolders' included)."""

    path: str  # absolute
    root: str
    relpath: str  # within its root; "" for the root itself
    images: int


def file_date(mtime_ns: int) -> datetime:
    """A file time as a date like taken_at's (naive, to the microsecond)."""
    return EPOCH + timedelta(microseconds=mtime_ns // 1000)


def photo_date(taken_at: datetime | None, mtime_ns: int) -> datetime:
    return taken_at if taken_at is not None else file_date(mtime_ns)


def timeline(store: Store, filters: Filters, before: int | None, k: int) -> list[tuple[int, datetime]]:
    """(id, date) of up to k indexed images meeting the row filters, newest first, after the image `before`.

    The order is (date, mtime_ns, id), descending: ties between a capture time and a file time go by file time.
    """
    if filters.min_score is not None:
        raise BadInputError("min_score cuts a ranking by similarity: browsing has no query to rank by")
    base = matching_ids(filters).add_columns(Image.taken_at, Image.mtime_ns)
    dated = base.where(Image.taken_at.is_not(None))
    undated = base.where(Image.taken_at.is_(None))
    with store.session() as s:
        if before is not None:
            cursor = s.execute(
                select(Image.taken_at, Image.mtime_ns, Image.id).where(Image.id == before, Image.status == INDEXED)
            ).first()
            if cursor is None:
                raise NotFoundError(f"no indexed image with id {before} to page on from: start from the newest")
            dated = dated.where(tuple_(Image.taken_at, Image.mtime_ns, Image.id) < tuple(after_dated(cursor)))
            undated = undated.where(*after_undated(cursor))
        # taken_at leads the undated order too, though it is NULL there: so PostgreSQL walks the index instead of
        # sorting every undated row (it does not take IS NULL as fixing the column's order, SQLite does).
        order = (Image.taken_at.desc(), Image.mtime_ns.desc(), Image.id.desc())
        rows = [*s.execute(dated.order_by(*order).limit(k)), *s.execute(undated.order_by(*order).limit(k))]
    keyed = sorted(((photo_date(taken, ns), ns, i) for i, taken, ns in rows), reverse=True)[:k]
    return [(i, date) for date, _, i in keyed]


def after_dated(cursor: Row) -> tuple:
    """The key a dated image must be below to come after the cursor image."""
    taken_at, mtime_ns, image_id = cursor
    return photo_date(taken_at, mtime_ns), mtime_ns, image_id


def after_undated(cursor: Row) -> list:
    """Conditions for an undated image to come after the cursor image: its file date (mtime_ns to the
    microsecond) below the cursor's date, or equal to it with (mtime_ns, id) below the cursor's. The first is a
    range on the index; the second a check of the rows at its edge."""
    date, mtime_ns, image_id = after_dated(cursor)
    edge = (date - EPOCH) // MICROSECOND * 1000  # the first mtime_ns whose file date is the cursor's date
    return [
        Image.mtime_ns < edge + 1000,
        or_(Image.mtime_ns < edge, tuple_(Image.mtime_ns, Image.id) < (mtime_ns, image_id)),
    ]


def count_folders(store: Store) -> list[Folder]:
    """Every indexed root and every folder under one holding indexed images, parents before their subfolders."""
    # The folder part of a relpath, in SQL both backends run: rtrim strips the trailing characters found in the
    # path once its slashes are removed, which is the file name ("a/b/c.jpg" -> "a/b/", "c.jpg" -> "").
    folder = func.rtrim(Image.relpath, func.replace(Image.relpath, "/", ""))
    with store.session() as s:
        rows = s.execute(
            select(Root.path, folder, func.count())
            .join(Root)
            .where(Image.status == INDEXED)
            .group_by(Root.path, folder)
        ).all()
    counts: Counter[tuple[str, str]] = Counter()
    for root, relfolder, images in rows:
        parts = relfolder.rstrip("/").split("/") if relfolder else []
        for depth in range(len(parts) + 1):
            counts[root, "/".join(parts[:depth])] += images
    ordered = sorted(counts.items(), key=lambda item: (item[0][0], item[0][1].split("/")))
    return [
        Folder(path=str(Path(root) / rel), root=root, relpath=rel, images=images) for (root, rel), images in ordered
    ]
