"""Serving an indexed image's or video's file and its thumbnail, safely: only files that are still what was indexed,
decoded within a pixel budget, thumbnails cached by content hash (and a video's second) and written whole.

indexer.video (PyAV, FFmpeg) is imported by the functions that serve videos: a cold `clipdex search` stays fast.
"""

import os
import stat
import threading
from pathlib import Path, PurePosixPath

from PIL import Image as PILImage
from PIL import ImageOps
from sqlalchemy import Row, select
from sqlalchemy.orm import aliased

from indexer.decode import DecodeError, setup_heif
from indexer.errors import BadInputError, NotFoundError, StorageFullError, is_disk_full
from indexer.store import FRAME, INDEXED, Image, Root, Store

THUMB_DIR = "thumbs"
THUMB_EDGE = 384  # pixels on the long side: sharp in a ~190 px grid cell on a 2x screen
# What one request may decode (an upload, a thumbnail), far below the indexer's limit: a 24 KB 1-bit PNG can
# be 14,000 x 14,000 pixels, 590 MB as RGB. JPEGs decode at reduced size (draft) before this is counted.
REQUEST_MAX_PIXELS = 40_000_000


def image_file(store: Store, image_id: int) -> Path:
    """The file of an indexed image or video, if it is still the file that was indexed (only ids are accepted).

    A file swapped since (for a symlink to /etc/passwd, or a 400 MP picture) is not served: it must be a
    regular file with the size and mtime the store recorded, and open as an image (a video: carry a video's
    suffix; it is served as it is, never decoded). The row stays for the next index run to fix.
    """
    with store.engine.connect() as conn:
        row = conn.execute(
            select(Root.path, Image.relpath, Image.size, Image.mtime_ns, Image.timestamp_ms)
            .join(Root)
            .where(Image.id == image_id, Image.status == INDEXED)
        ).first()
    if row is None:
        raise NotFoundError(f"no indexed image with id {image_id}")
    path = unchanged(image_id, Path(row.path) / row.relpath, row.size, row.mtime_ns)
    if row.timestamp_ms is not None:  # a video's row: only videos carry the second they show
        return named_as_video(image_id, path)
    setup_heif()
    try:
        with PILImage.open(path):  # reads the header only
            pass
    except (OSError, ValueError, PILImage.DecompressionBombError):
        raise NotFoundError(f"image {image_id}'s file {path} is no longer an image; re-index its folder") from None
    return path


def motion_file(store: Store, image_id: int) -> Path:
    """The movie of a Live Photo (an indexed still whose motion_relpath names it): a regular file under the still's
    root, never a path that climbs out of it."""
    with store.engine.connect() as conn:
        row = conn.execute(
            select(Root.path, Image.motion_relpath).join(Root).where(Image.id == image_id, Image.status == INDEXED)
        ).first()
    if row is None or not row.motion_relpath:
        raise NotFoundError(f"no indexed Live Photo with id {image_id}")
    relpath = PurePosixPath(row.motion_relpath)
    if relpath.is_absolute() or ".." in relpath.parts:
        raise NotFoundError(f"image {image_id}'s movie {relpath} lies outside its folder")
    path = Path(row.path) / relpath
    try:
        st = path.stat()
    except OSError:
        raise NotFoundError(f"image {image_id}'s movie {path} is gone; re-index its folder") from None
    if not stat.S_ISREG(st.st_mode) or not path.resolve().is_relative_to(Path(row.path).resolve()):
        raise NotFoundError(f"image {image_id}'s movie {path} is not a file in its folder")
    return named_as_video(image_id, path)


def named_as_video(image_id: int, path: Path) -> Path:
    """`path` when its suffix is a video's (so it is served with a video media type), else NotFoundError."""
    from indexer.video import VIDEO_SUFFIXES

    if path.suffix.lower() not in VIDEO_SUFFIXES:
        raise NotFoundError(f"image {image_id}'s video {path} is not named as a video; re-index its folder")
    return path


def unchanged(image_id: int, path: Path, size: int, mtime_ns: int) -> Path:
    """`path` when it is a regular file of the size and mtime the store recorded, else NotFoundError."""
    try:
        st = path.stat()
    except OSError:
        raise NotFoundError(f"image {image_id}'s file {path} is gone; re-index its folder") from None
    if not stat.S_ISREG(st.st_mode) or (st.st_size, st.st_mtime_ns) != (size, mtime_ns):
        raise NotFoundError(f"image {image_id}'s file {path} changed since it was indexed; re-index its folder")
    return path


def thumbnail(store: Store, cache_dir: Path, image_id: int, decode_slots: threading.Semaphore) -> Path:
    """A JPEG thumbnail of an indexed image, or of the frame a video or a video's kept frame (FRAME row) shows, made
    once (decoding within one of `decode_slots`) and cached under `cache_dir` by content hash (and second)."""
    row = thumbnail_row(store, image_id)
    source = image_file(store, row.item)
    key = row.hash or str(row.item)
    if row.timestamp_ms is not None:
        key += f".{row.timestamp_ms}ms"
    thumb = cache_dir / THUMB_DIR / f"{key}.jpg"
    if not thumb.exists():
        with decode_slots:
            if row.timestamp_ms is None:
                small = decode_thumbnail(image_id, source)
            else:
                small = video_thumbnail(image_id, source, row.timestamp_ms / 1000, row.width, row.height)
        thumb.parent.mkdir(parents=True, exist_ok=True)
        tmp = thumb.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
        try:  # written whole under a temporary name, then renamed: never a truncated thumbnail
            small.save(tmp, "JPEG", quality=82)
            os.replace(tmp, thumb)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            if is_disk_full(e):
                raise StorageFullError(f"no room for thumbnails in {thumb.parent}: {e.strerror}") from None
            raise
    return thumb


def thumbnail_row(store: Store, image_id: int) -> Row:
    """(item, hash, timestamp_ms, width, height) of what a thumbnail shows: the item is the image or video whose
    file is read (a FRAME row's video, whose hash it shares), timestamp_ms the second shown (None for a still)."""
    video = aliased(Image)
    with store.engine.connect() as conn:
        row = conn.execute(
            select(Image.id.label("item"), Image.hash, Image.timestamp_ms, Image.width, Image.height).where(
                Image.id == image_id, Image.status == INDEXED
            )
        ).first()
        if row is None:
            row = conn.execute(
                select(video.id.label("item"), video.hash, Image.timestamp_ms, video.width, video.height)
                .join(video, video.id == Image.video_id)
                .where(Image.id == image_id, Image.status == FRAME, video.status == INDEXED)
            ).first()
    if row is None:
        raise NotFoundError(f"no indexed image or video frame with id {image_id}")
    return row


def video_thumbnail(
    image_id: int, source: Path, timestamp_s: float, width: int | None, height: int | None
) -> PILImage.Image:
    """The frame a video shows at `timestamp_s`, at thumbnail size; a frame over REQUEST_MAX_PIXELS is refused before
    decoding (its size is the stored one: the file is unchanged since)."""
    from indexer.video import frame_at

    if (width or 0) * (height or 0) > REQUEST_MAX_PIXELS:
        raise BadInputError(
            f"video {image_id} is {width}x{height} pixels, too large for a thumbnail "
            f"(at most {REQUEST_MAX_PIXELS:,} pixels); open the file itself"
        )
    try:
        return frame_at(source, timestamp_s, THUMB_EDGE)
    except DecodeError as e:
        raise BadInputError(f"video {image_id} can no longer be read at {timestamp_s:g} s ({e.reason})") from None


def decode_thumbnail(image_id: int, source: Path) -> PILImage.Image:
    """The image at thumbnail size, decoded within REQUEST_MAX_PIXELS (JPEGs at reduced size)."""
    try:
        with PILImage.open(source) as img:
            img.draft("RGB", (THUMB_EDGE, THUMB_EDGE))
            if img.width * img.height > REQUEST_MAX_PIXELS:
                raise BadInputError(
                    f"image {image_id} is {img.width}x{img.height} pixels, too large for a thumbnail "
                    f"(at most {REQUEST_MAX_PIXELS:,} pixels); open the file itself"
                )
            small = ImageOps.exif_transpose(img).convert("RGB")
            small.thumbnail((THUMB_EDGE, THUMB_EDGE))
            return small
    except (OSError, PILImage.DecompressionBombError) as e:
        raise BadInputError(f"image {image_id} can no longer be read ({e}); re-index its folder") from None
