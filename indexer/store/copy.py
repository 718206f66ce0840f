"""`clipdex store copy SRC DST`: a store copied between backends (a directory and a PostgreSQL database, either
way), rows, vectors, captions and tags included, with their ids.

Resumable: every table is copied in id order, a committed chunk at a time, so a re-run continues after
the highest id the destination already has. Verified: the row counts of every table and a checksum of
the ids and vectors (as float16, the embedded store's precision) must agree at the end.
"""

import hashlib
import time
from dataclasses import dataclass, field

import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from sqlalchemy import func, insert, select

from indexer.errors import BadInputError, StoreFormatError
from indexer.store.base import Store
from indexer.store.schema import SEARCHED, Caption, CaptionFailure, Image, LabelSet, Root, Tag

CHUNK = 5_000
TABLES = (Root, Image, Caption, CaptionFailure, Tag, LabelSet)  # parents before children


@dataclass
class CopySummary:
    source: str
    destination: str
    copied: dict[str, int] = field(default_factory=dict)  # table -> rows copied by this run
    present: dict[str, int] = field(default_factory=dict)  # table -> rows the destination had before
    vectors: int = 0
    checksum: str = ""
    seconds: float = 0.0

    def line(self) -> str:
        copied = ", ".join(f"{n} {table}" for table, n in self.copied.items() if n)
        resumed = sum(self.present.values())
        return (
            f"copied {copied or 'nothing new'} from {self.source} to {self.destination} in {self.seconds:.1f} s"
            + (f" (resumed: {resumed} rows were there)" if resumed else "")
            + f"; verified {self.vectors} vectors: counts equal, checksum {self.checksum[:16]}"
        )


def copy_store(source: Store, destination: Store, lock_timeout: float, show_progress: bool = False) -> CopySummary:
    """Copy every row and vector of `source` that `destination` lacks, then verify the two agree."""
    started = time.perf_counter()
    summary = CopySummary(source.location, destination.location)
    with source.writing(None, lock_timeout), destination.writing(None, lock_timeout):  # both hold still
        check_continues(source, destination)
        totals = {table.__tablename__: table_count(source, table) for table in TABLES}
        summary.present = {table.__tablename__: table_count(destination, table) for table in TABLES}
        progress = Progress(
            TextColumn("copying {task.fields[table]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            disable=not show_progress,
        )
        with progress:
            task = progress.add_task(
                "copy", total=sum(totals.values()), table="", completed=sum(summary.present.values())
            )
            for table in TABLES:
                progress.update(task, table=table.__tablename__)
                summary.copied[table.__tablename__] = copy_table(source, destination, table, progress, task)
        destination.finish_copy()
        verify(source, destination, summary)
    summary.seconds = time.perf_counter() - started
    return summary


def copy_table(source: Store, destination: Store, table, progress: Progress, task) -> int:
    """Rows above the destination's highest id, in chunks committed one at a time (images with their vectors)."""
    columns = table.__table__.columns
    with destination.session() as s:
        after = s.scalar(select(func.max(table.id))) or 0
    copied = 0
    while True:
        with source.engine.connect() as conn:
            rows = [
                dict(row._mapping)
                for row in conn.execute(select(*columns).where(table.id > after).order_by(table.id).limit(CHUNK))
            ]
        if not rows:
            return copied
        with destination.session() as s:
            if table is Image:
                for row in rows:
                    row["vector_version"] = 0  # versions are the source's; the destination indexes them anew
            s.execute(insert(table), rows)
            if table is Image:
                ids = np.asarray([row["id"] for row in rows if row["status"] in SEARCHED], dtype=np.int64)
                if len(ids):
                    destination.write_vectors(s, ids, source.vectors_of(ids))
            s.commit()
        after = rows[-1]["id"]
        copied += len(rows)
        progress.advance(task, len(rows))


def check_continues(source: Store, destination: Store) -> None:
    """The destination must be empty or an earlier copy of the source: its folders and last image match."""
    if source.location == destination.location:
        raise BadInputError("the source and destination are the same store")
    with destination.session() as d, source.session() as s:
        for row in d.execute(select(Root.id, Root.path)).all():
            if s.scalar(select(Root.path).where(Root.id == row.id)) != row.path:
                raise BadInputError(
                    f"{destination.location} already holds other folders than {source.location}: copy into a new, "
                    "empty store (an interrupted copy is continued, not another store merged)"
                )
        last = d.execute(select(Image.id, Image.root_id, Image.relpath).order_by(Image.id.desc()).limit(1)).first()
        if last and s.execute(select(Image.root_id, Image.relpath).where(Image.id == last.id)).first() != (
            last.root_id,
            last.relpath,
        ):
            raise BadInputError(
                f"{destination.location} holds images {source.location} does not: copy into a new store"
            )


def table_count(store: Store, table) -> int:
    with store.session() as s:
        return s.scalar(select(func.count()).select_from(table))


def checksum(store: Store) -> tuple[str, int]:
    """SHA-256 of every indexed image's id and vector (float16, little-endian) in id order, and their count."""
    digest, count = hashlib.sha256(), 0
    for ids, vectors in store.iter_vectors():
        digest.update(ids.astype("<i8").tobytes())
        digest.update(vectors.astype("<f2").tobytes())
        count += len(ids)
    return digest.hexdigest(), count


def verify(source: Store, destination: Store, summary: CopySummary) -> None:
    for table in TABLES:
        have, want = table_count(destination, table), table_count(source, table)
        if have != want:
            raise StoreFormatError(
                f"the copy has {have} rows of {table.__tablename__}, the source {want}: run the copy again"
            )
    (want, count), (have, _) = checksum(source), checksum(destination)
    if have != want:
        raise StoreFormatError("the copied vectors differ from the source's: copy into a new, empty store")
    summary.checksum, summary.vectors = want, count
