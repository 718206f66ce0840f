"""Serving an indexed image's file and its thumbnail, safely: only files that are still what was indexed, decoded
within a pixel budget, thumbnails cached by content hash and written whole."""

import os
import stat
import threading
from pathlib import Path

from PIL import Image as PILImage
from PIL import ImageOps
from sqlalchemy import select

from indexer.decode import setup_heif
from indexer.errors import BadInputError, NotFoundError, StorageFullError, is_disk_full
from indexer.store import INDEXED, Image, Root, Store

THUMB_DIR = "thumbs"
THUMB_EDGE = 384  # pixels on the long side: sharp in a ~190 px grid cell on a 2x screen
# What one request may decode (an upload, a thumbnail), far below the indexer's limit: a 24 KB 1-bit PNG can
# be 14,000 x 14,000 pixels, 590 MB as RGB. JPEGs decode at reduced size (draft) before this is counted.
REQUEST_MAX_PIXELS = 40_000_000


def image_file(store: Store, image_id: int) -> Path:
    """The file of an indexed image, if it is still the file that was indexed (only ids are accepted).

    A file swapped since (for a symlink to /etc/passwd, or a 400 MP picture) is not served: it must be a
    regular file with the size and mtime the store recorded, and open as an image. The row stays for
    the next index run to fix.
    """
    with store.engine.connect() as conn:
        row = conn.execute(
            select(Root.path, Image.relpath, Image.size, Image.mtime_ns)
            .join(Root)
            .where(Image.id == image_id, Image.status == INDEXED)
        ).first()
    if row is None:
        raise NotFoundError(f"no indexed image with id {image_id}")
    path = Path(row.path) / row.relpath
    try:
        st = path.stat()
    except OSError:
        raise NotFoundError(f"image {image_id}'s file {path} is gone; re-index its folder") from None
    if not stat.S_ISREG(st.st_mode) or (st.st_size, st.st_mtime_ns) != (row.size, row.mtime_ns):
        raise NotFoundError(f"image {image_id}'s file {path} changed since it was indexed; re-index its folder")
    setup_heif()
    try:
        with PILImage.open(path):  # reads the header only
            pass
    except (OSError, ValueError, PILImage.DecompressionBombError):
        raise NotFoundError(f"image {image_id}'s file {path} is no longer an image; re-index its folder") from None
    return path


def thumbnail(store: Store, cache_dir: Path, image_id: int, decode_slots: threading.Semaphore) -> Path:
    """A JPEG thumbnail of an indexed image, made once (decoding within one of `decode_slots`) and cached under
    `cache_dir` by content hash."""
    source = image_file(store, image_id)
    with store.session() as s:
        content_hash = s.scalar(select(Image.hash).where(Image.id == image_id))
    thumb = cache_dir / THUMB_DIR / f"{content_hash or image_id}.jpg"
    if not thumb.exists():
        with decode_slots:
            small = decode_thumbnail(image_id, source)
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
