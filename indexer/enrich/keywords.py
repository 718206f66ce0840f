"""Keywords in and out.

In: what other photo programs wrote about the images (indexer/xmp.py: keywords, title, description, embedded or
in sidecars) stored for search (a caption of METADATA_TEXT), the keyword filter (keywords) and the photo view
(metadata_reads).

An image is read when it is new or changed (its rows went with its captions) or when its sidecars changed since
its last read, which the folder scan tells by their sizes and times: a re-run reads nothing new, and a keyword
added in another program is picked up without re-embedding the image.

Out: `write_sidecars` merges clipdex's tags and captions into the images' sidecars (`clipdex xmp write`).
"""

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import exiv2
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from sqlalchemy import delete, select

from indexer.store import INDEXED, METADATA_TEXT, Caption, Filters, Image, Keyword, MetadataRead, Store, Tag, utcnow
from indexer.store.base import caption_source
from indexer.store.filters import matching_ids
from indexer.xmp import PhotoMetadata, merge_sidecar, read_metadata, sidecar_paths

log = logging.getLogger(__name__)

CHUNK = 500  # images read, then written in one transaction
# Sidecars are a few KB; one far bigger is not one (or is hostile), and exiv2 would read it whole into memory.
MAX_SIDECAR_BYTES = 4 * 2**20


@dataclass
class KeywordSummary:
    read: int = 0  # images whose metadata was read (again)
    with_metadata: int = 0  # of those, images with keywords, a title or a description
    seconds: float = 0.0

    def line(self) -> str:
        return f"metadata read from {self.read} images ({self.with_metadata} with keywords, titles or descriptions)"


def read_store_metadata(
    store: Store, root_id: int, root: Path, sidecars: dict[str, str], workers: int, show_progress: bool = True
) -> KeywordSummary:
    """Read the metadata of the folder's indexed images that need it (see the module's docstring); `sidecars`
    are the folder's sidecar files as the scan found them (relpath -> stamp)."""
    started = time.perf_counter()
    with store.session() as s:
        rows = s.execute(
            select(Image.id, Image.relpath, MetadataRead.sidecars)
            .outerjoin(MetadataRead, MetadataRead.image_id == Image.id)
            .where(Image.root_id == root_id, Image.status == INDEXED)
        ).all()
    todo = [(i, relpath, stamp) for i, relpath, old in rows if (stamp := sidecar_stamp(relpath, sidecars)) != old]
    summary = KeywordSummary()
    progress = Progress(
        TextColumn("reading metadata"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        disable=not show_progress or not todo,
    )  # fmt: skip

    def read(item: tuple[int, str, str]) -> PhotoMetadata:
        _, relpath, _ = item
        found = [name for name in sidecar_paths(relpath) if name in sidecars]
        readable = [root / name for name in found if int(sidecars[name].split(":")[0]) <= MAX_SIDECAR_BYTES]
        if len(readable) < len(found):
            log.warning("not reading the sidecars of %s over %d MiB", root / relpath, MAX_SIDECAR_BYTES >> 20)
        return read_metadata([root / relpath, *readable])

    with progress, ThreadPoolExecutor(max(1, workers)) as pool:  # exiv2 reads files without the GIL
        task = progress.add_task("metadata", total=len(todo))
        for start in range(0, len(todo), CHUNK):
            chunk = todo[start : start + CHUNK]
            found = list(pool.map(read, chunk))
            write_metadata(store, [(image_id, stamp) for image_id, _, stamp in chunk], found)
            summary.read += len(chunk)
            summary.with_metadata += sum(1 for metadata in found if metadata.text())
            progress.update(task, completed=summary.read)
    summary.seconds = time.perf_counter() - started
    return summary


def sidecar_stamp(relpath: str, sidecars: dict[str, str]) -> str:
    """The image's sidecars as found: their names, sizes and times ("" for none)."""
    return ";".join(f"{name}={sidecars[name]}" for name in sidecar_paths(relpath) if name in sidecars)


def write_metadata(store: Store, images: list[tuple[int, str]], found: list[PhotoMetadata]) -> None:
    """Replace the metadata rows of (image id, sidecar stamp) pairs with what was found, in one transaction."""
    ids = [image_id for image_id, _ in images]
    now = utcnow()
    with store.session() as s:
        s.execute(delete(Keyword).where(Keyword.image_id.in_(ids)))
        s.execute(delete(MetadataRead).where(MetadataRead.image_id.in_(ids)))
        s.execute(delete(Caption).where(Caption.image_id.in_(ids), Caption.model == METADATA_TEXT))
        for (image_id, stamp), metadata in zip(images, found, strict=True):
            s.add(
                MetadataRead(image_id=image_id, sidecars=stamp, title=metadata.title, description=metadata.description)
            )
            s.add_all(Keyword(image_id=image_id, keyword=k, folded=k.lower()) for k in folded_once(metadata.keywords))
            if metadata.text():
                s.add(Caption(image_id=image_id, model=METADATA_TEXT, text=metadata.text(), created_at=now))
        s.commit()


def folded_once(keywords: list[str]) -> list[str]:
    """The keywords, each kept once whatever its case (the first spelling wins)."""
    first: dict[str, str] = {}
    for keyword in keywords:
        first.setdefault(keyword.lower(), keyword)
    return list(first.values())


@dataclass
class SidecarSummary:
    """What `write_sidecars` did (with dry_run: would do)."""

    written: int = 0  # sidecars made or changed
    unchanged: int = 0  # already holding what clipdex would write
    failed: dict[str, str] = field(default_factory=dict)  # image or folder -> why its sidecar was not written
    dry_run: bool = False

    def line(self) -> str:
        verb = "would write" if self.dry_run else "wrote"
        failed = f", {len(self.failed)} not writable" if self.failed else ""
        return f"{verb} {self.written} sidecars, {self.unchanged} already up to date{failed}"


def write_sidecars(
    store: Store, tags: bool = True, captions: bool = True, dry_run: bool = False, folder: str | None = None
) -> SidecarSummary:
    """Merge the indexed images' tags (as keywords) and newest captions (as descriptions) into their XMP sidecars
    (indexer/xmp.py merge_sidecar). A folder that refuses a write is reported once and skipped."""
    summary = SidecarSummary(dry_run=dry_run)
    wanted = labels_and_captions(store, tags, captions, folder)
    refused: set[Path] = set()
    for path, (labels, caption) in wanted.items():
        if path.parent in refused:
            continue
        if not path.is_file():
            summary.failed[str(path)] = "the image is gone since it was indexed"
            continue
        try:
            changed = merge_sidecar(path, labels, caption, dry_run)
        except PermissionError as e:
            refused.add(path.parent)
            summary.failed[str(path.parent)] = f"the folder cannot be written: {e.strerror}"
            log.warning("not writing sidecars in %s: %s", path.parent, e.strerror)
            continue
        except (OSError, exiv2.Exiv2Error) as e:
            summary.failed[str(path)] = f"its sidecar cannot be written: {e}"
            log.warning("not writing the sidecar of %s: %s", path, e)
            continue
        summary.written += changed
        summary.unchanged += not changed
    return summary


def labels_and_captions(
    store: Store, tags: bool, captions: bool, folder: str | None
) -> dict[Path, tuple[list[tuple[str, str]] | None, str | None]]:
    """{image path: ((label set, label) pairs, newest caption)} of the indexed images that have either; the
    labels are None when tags are not written."""
    among = matching_ids(Filters(folder=folder))
    found: dict[int, tuple[list[tuple[str, str]] | None, str | None]] = {}
    with store.session() as s:
        if tags:
            rows = s.execute(
                select(Tag.image_id, Tag.label_set, Tag.label)
                .where(Tag.image_id.in_(among))
                .order_by(Tag.image_id, Tag.label_set, Tag.score.desc())
            )
            for image_id, label_set, label in rows:
                found.setdefault(image_id, ([], None))[0].append((label_set, label))
        if captions:
            rows = s.execute(
                select(Caption.image_id, Caption.text)
                .where(Caption.image_id.in_(among), caption_source("caption"))
                .order_by(Caption.image_id, Caption.created_at, Caption.id)
            )
            for image_id, caption in rows:  # the newest comes last
                found[image_id] = (found.get(image_id, ([] if tags else None, None))[0], caption)
    paths = store.paths(list(found))
    return {Path(paths[image_id]): value for image_id, value in found.items()}
