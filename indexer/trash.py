"""Acting on duplicates without deleting anything: files move into a trash folder inside their root, and back.

An image's file moves to `<root>/.clipdex-trash/<its path in the root>` (a free name beside it if one is there
already: nothing is ever replaced), the move is recorded in the store (TrashedFile) and the image leaves the
store. The trash folder starts with a dot, so the scanner never lists it (indexer/scan.py). Restoring moves a
file back to where it was, refusing when something is there now; the next `clipdex index` of its root indexes
it again.
"""

import os
import shutil
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import delete, select

from indexer.errors import BadInputError, NotFoundError
from indexer.store import INDEXED, Image, Root, Store, utcnow
from indexer.store.schema import TrashedFile

TRASH_DIR = ".clipdex-trash"


@dataclass
class Trashed:
    """A file in a trash folder: `id` names it for restoring."""

    id: int
    root: str  # the indexed folder it was in
    path: str  # where it was, and goes back to
    trash_path: str  # where it is now
    size: int
    moved_at: datetime


def move_to_trash(store: Store, image_ids: list[int], lock_timeout: float) -> list[Trashed]:
    """Move the files of these indexed images into their roots' trash folders; the images leave the store.

    Every id is checked before anything moves: an unknown one, or a file that is gone, moves none.
    """
    with store.session() as s:
        rows = s.execute(
            select(Image.id, Image.root_id, Root.path, Image.relpath, Image.size)
            .join(Root)
            .where(Image.id.in_(image_ids), Image.status == INDEXED)
        ).all()
    unknown = sorted(set(image_ids) - {row.id for row in rows})
    if unknown:
        raise NotFoundError(f"no indexed image with id {', '.join(map(str, unknown))}; nothing was moved")
    gone = [str(Path(row.path, row.relpath)) for row in rows if not Path(row.path, row.relpath).is_file()]
    if gone:
        raise NotFoundError(f"these files are gone: {', '.join(gone)}; index their folder again. Nothing was moved")
    moved = []
    for root in sorted({row.path for row in rows}):
        with store.writing(Path(root), lock_timeout):
            records = []
            try:
                for row in (r for r in rows if r.path == root):
                    trash_relpath = move_file(Path(root), row.relpath, Path(TRASH_DIR, row.relpath).as_posix())
                    records.append((row.id, TrashedFile(root_id=row.root_id, relpath=row.relpath,
                                                        trash_relpath=trash_relpath, size=row.size,
                                                        moved_at=utcnow())))  # fmt: skip
            finally:  # what moved is recorded, and leaves the store, even when a later move failed
                with store.session() as s:
                    s.add_all(record for _, record in records)
                    s.commit()
                store.delete_images([image_id for image_id, _ in records])
            moved += [trashed(record, root) for _, record in records]
    return moved


def trash_list(store: Store) -> list[Trashed]:
    """What the trash folders hold, oldest move first."""
    with store.session() as s:
        rows = s.execute(select(TrashedFile, Root.path).join(Root).order_by(TrashedFile.id)).all()
    return [trashed(record, root) for record, root in rows]


def restore(store: Store, which: list[str] | None, lock_timeout: float) -> list[Trashed]:
    """Move trashed files back where they were: those named (a trash id, or where a file was or is now), or all.

    Every one is checked before anything moves: an unknown name, a trashed file that is gone, or a file that
    now stands where one was, moves none.
    """
    held = trash_list(store)
    chosen = held if which is None else list({t.id: t for t in (find_trashed(held, name) for name in which)}.values())
    problems = [f"{t.trash_path} is gone" for t in chosen if not Path(t.trash_path).is_file()]
    problems += [f"{t.path} is taken by another file" for t in chosen if os.path.lexists(t.path)]
    if problems:
        raise BadInputError(f"{'; '.join(problems)}. Nothing was restored")
    for t in chosen:
        root = Path(t.root)
        with store.writing(root, lock_timeout):
            move_file(root, Path(t.trash_path).relative_to(root).as_posix(), Path(t.path).relative_to(root).as_posix())
            with store.session() as s:
                s.execute(delete(TrashedFile).where(TrashedFile.id == t.id))
                s.commit()
    return chosen


def find_trashed(held: list[Trashed], name: str) -> Trashed:
    """The trashed file a name means: its trash id, or its path (where it was, or where it is now)."""
    path = str(Path(name).expanduser().resolve()) if not name.isdigit() else None
    for t in held:
        if str(t.id) == name or path in (t.path, t.trash_path):
            return t
    raise NotFoundError(f"nothing in the trash is {name}: see clipdex trash list")


def trashed(record: TrashedFile, root: str) -> Trashed:
    return Trashed(record.id, root, str(Path(root, record.relpath)), str(Path(root, record.trash_relpath)),
                   record.size, record.moved_at)  # fmt: skip


def move_file(root: Path, relpath: str, wanted: str) -> str:
    """Move root/relpath to root/wanted, or to a free name beside it ("name (2).jpg"); the relpath it got.

    A hard link then an unlink never replaces a file (a link to a taken name fails); where links cannot be made
    (another filesystem), the file is copied into a new file made exclusively, then the original unlinked.
    """
    source, target = root / relpath, root / wanted
    target.parent.mkdir(parents=True, exist_ok=True)
    for n in range(1, 10_000):
        candidate = target if n == 1 else target.with_name(f"{target.stem} ({n}){target.suffix}")
        try:
            link_or_copy(source, candidate)
        except FileExistsError:
            continue
        source.unlink()
        return candidate.relative_to(root).as_posix()
    raise BadInputError(f"no free name for {target} in its trash folder; empty it first")


def link_or_copy(source: Path, target: Path) -> None:
    """Make `target` a second name of `source` (a copy where links cannot be made); FileExistsError if it exists."""
    try:
        os.link(source, target, follow_symlinks=False)
    except FileExistsError:
        raise
    except OSError:  # no hard links across filesystems: copy into a file made exclusively
        with source.open("rb") as src, target.open("xb") as dst:
            shutil.copyfileobj(src, dst)
        shutil.copystat(source, target)
