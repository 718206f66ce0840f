"""Keywords in: what other photo programs wrote about the images (indexer/xmp.py: keywords, title, description,
embedded or in sidecars) stored for search (a caption of METADATA_TEXT), the keyword filter (keywords) and the
photo view (metadata_reads).

An image is read when it is new or changed (its rows went with its captions) or when its sidecars changed since
its last read, which the folder scan tells by their sizes and times: a re-run reads nothing new, and a keyword
added in another program is picked up without re-embedding the image.
"""

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from sqlalchemy import delete, select

from indexer.store import INDEXED, METADATA_TEXT, Caption, Image, Keyword, MetadataRead, Store, utcnow
from indexer.xmp import PhotoMetadata, read_metadata, sidecar_paths

CHUNK = 500  # images read, then written in one transaction


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
        return read_metadata([root / relpath] + [root / name for name in sidecar_paths(relpath) if name in sidecars])

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
