"""Bytes to model-ready pixels, in worker processes: guard, draft-decode, orient, convert, resize, crop.

Everything here is plain Pillow + NumPy so worker processes start fast and never import torch.
Each failure becomes a `DecodeError` whose reason is recorded in the store as "code: detail".
"""

import hashlib
import io
import math
import warnings
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

import imagehash
import numpy as np
from PIL import Image, ImageOps, TiffImagePlugin, UnidentifiedImageError

# The first bytes of the formats we read, for finding images whose name does not say so.
MAGIC = (
    b"\xff\xd8\xff",  # JPEG
    b"\x89PNG\r\n\x1a\n",
    b"GIF87a",
    b"GIF89a",
    b"BM",
    b"II*\x00",  # TIFF little-endian
    b"MM\x00*",  # TIFF big-endian
)
# Camera RAW files, read through LibRaw (rawpy) rather than Pillow.
RAW_SUFFIXES = {
    ".dng", ".cr2", ".cr3", ".crw", ".nef", ".nrw", ".arw", ".srf", ".sr2", ".raf", ".orf", ".rw2", ".rwl",
    ".pef", ".srw", ".x3f", ".3fr", ".iiq", ".erf", ".mef", ".mos", ".kdc", ".dcr",
}  # fmt: skip
# Skip reasons that can heal without the file changing (a chmod, a remount, a less busy machine): retried every run.
HEALABLE_REASONS = ("permission denied", "unreadable", "timeout")
# What Pillow says when a file needs something this build lacks (a library, a helper program).
UNSUPPORTED_MESSAGES = ("ghostscript", "cannot find loader", "not configured", "not supported", "not implemented")
BMP_EMBEDDED = {4: "JPEG", 5: "PNG"}  # BITMAPINFOHEADER compression values that wrap another format
# TIFF compressions every libtiff build decodes: none, CCITT (RLE, G3, G4), LZW, JPEG, deflate, PackBits.
BASIC_TIFF_COMPRESSIONS = {1, 2, 3, 4, 5, 6, 7, 8, 32773, 32946}
HEIF_BRANDS = (b"heic", b"heix", b"hevc", b"heim", b"heis", b"mif1", b"msf1", b"avif")


def looks_like_image(head: bytes) -> bool:
    """True when the first 16 bytes of a file carry a known image signature."""
    if head.startswith(MAGIC):
        return True
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return True
    return head[4:8] == b"ftyp" and head[8:12] in HEIF_BRANDS


@dataclass(frozen=True)
class ImagePrep:
    """How an image becomes the model's input, read from its transformers image processor.

    resize_to is (height, width) for an exact resize (SigLIP) or (edge, 0) for "shortest edge"
    (CLIP); crop is (height, width) or None. A NaFlex model (SigLIP 2) has `max_patches` > 0 instead: each
    image keeps its aspect ratio, resized to the most whole `patch_size` patches that fit in `max_patches`
    (resize_to then only sizes the check inputs). Normalisation happens later on whole batches.
    """

    resize_to: tuple[int, int]
    crop: tuple[int, int] | None
    resample: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    rescale: float
    max_patches: int = 0
    patch_size: int = 0

    @property
    def out_size(self) -> tuple[int, int]:
        """(height, width) of the pixels handed to a fixed-size model (a square one for NaFlex's check inputs)."""
        return self.crop or self.resize_to

    def target_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) an image of this size is resized to, before any crop."""
        edge_h, edge_w = self.resize_to
        if self.max_patches:
            return naflex_size(width, height, self.patch_size, self.max_patches)
        if edge_w == 0:
            short, long = (width, height) if width <= height else (height, width)
            new_short, new_long = edge_h, int(edge_h * long / short)
            return (new_short, new_long) if width <= height else (new_long, new_short)
        return (edge_w, edge_h)


def naflex_size(width: int, height: int, patch_size: int, max_patches: int) -> tuple[int, int]:
    """(width, height), each a multiple of patch_size, with at most max_patches patches, keeping the aspect.

    The same bisection over the scale as `Siglip2ImageProcessor` (get_image_size_for_max_num_patches), so the
    sizes agree to the pixel (tests/test_parity.py checks it over thousands of sizes).
    """

    def scaled(scale: float, size: int) -> int:
        return max(patch_size, math.ceil(size * scale / patch_size) * patch_size)

    low, high = 1e-6, 100.0
    while high - low >= 1e-5:
        scale = (low + high) / 2
        if (scaled(scale, height) / patch_size) * (scaled(scale, width) / patch_size) <= max_patches:
            low = scale
        else:
            high = scale
    return scaled(low, width), scaled(low, height)


@dataclass
class Decoded:
    """One decoded image: model-ready uint8 pixels (H, W, 3) plus what the store records.

    H x W is the model's input size, or for a NaFlex model this image's own multiple of the patch size.
    """

    pixels: np.ndarray
    width: int
    height: int
    format: str
    taken_at: datetime | None
    phash: str  # perceptual_hash of the picture


class DecodeError(Exception):
    """A file that cannot become an image; `reason` is "code: detail"."""

    def __init__(self, code: str, detail: str):
        super().__init__(f"{code}: {detail}")
        self.reason = f"{code}: {detail}"


def setup_heif() -> None:
    """Teach Pillow HEIF/HEIC/AVIF and hand the pixel guard to decode_image (a clear reason, not a warning)."""
    from pillow_heif import register_heif_opener

    register_heif_opener()
    Image.MAX_IMAGE_PIXELS = None
    warnings.simplefilter("ignore", Image.DecompressionBombWarning)


def raise_timeout(_signum, _frame) -> None:
    raise DecodeTimeout()


class DecodeTimeout(Exception):  # noqa: N818 - raised by the alarm, turned into the `timeout` reason
    """One file took longer than the worker's timeout."""


def read_and_hash(path: Path) -> tuple[bytes, str]:
    """Read a whole file and return its bytes with their content hash."""
    try:
        data = path.read_bytes()
    except PermissionError as e:
        raise DecodeError("permission denied", str(e.strerror or e)) from None
    except OSError as e:
        raise DecodeError("unreadable", str(e.strerror or e)) from None
    return data, hashlib.blake2b(data, digest_size=16).hexdigest()


def decode_image(data: bytes, prep: ImagePrep, max_pixels: int) -> Decoded:
    """Decode bytes into model-ready pixels, downscaling in the DCT domain where the format allows."""

    if not data:
        raise DecodeError("empty file", "0 bytes")
    try:
        img = Image.open(io.BytesIO(data))
        width, height = img.size
        refuse_too_large(width, height, max_pixels)
        fmt = img.format or "unknown"
        taken_at = read_capture_time(img)
        if img.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # rotated 90 degrees: stored dims are swapped
            width, height = height, width
        if fmt == "JPEG":
            # Decode at 1/2, 1/4 or 1/8 scale directly from DCT coefficients, never below the model's input.
            img.draft("RGB", draft_request(img.size, prep))
        img = to_rgb(ImageOps.exif_transpose(img))
        phash = perceptual_hash(img)
        pixels = resize_and_crop(img, prep, (width, height))
    except (DecodeError, DecodeTimeout, MemoryError):
        raise
    except UnidentifiedImageError:
        if looks_like_image(data[:16]):
            raise DecodeError("corrupt", "starts like an image but its header cannot be read") from None
        raise DecodeError("not an image", "no known image format in the file's content") from None
    except Exception as e:  # Pillow raises many types on hostile input
        message = str(e) or type(e).__name__
        missing = unsupported_feature(data, e)
        if missing:
            raise DecodeError("unsupported", missing) from None
        code = "truncated" if "truncated" in message.lower() or "broken data stream" in message else "corrupt"
        raise DecodeError(code, message) from None
    return Decoded(pixels=pixels, width=width, height=height, format=fmt, taken_at=taken_at, phash=phash)


def refuse_too_large(width: int, height: int, max_pixels: int) -> None:
    """The decompression-bomb guard, checked on the header's size before anything is decoded."""
    if width * height > max_pixels:
        raise DecodeError("too large", f"{width}x{height} pixels exceeds the limit of {max_pixels}")


def decode_raw(data: bytes, prep: ImagePrep, max_pixels: int) -> Decoded:
    """A camera RAW file through LibRaw: its embedded preview when it has one (the camera's own rendering, and a
    JPEG that decodes at reduced size), else a half-size demosaic with the camera's white balance."""
    import rawpy  # only workers that meet a RAW file pay for it

    try:
        with rawpy.imread(io.BytesIO(data)) as raw:
            width, height = raw.sizes.width, raw.sizes.height
            refuse_too_large(width, height, max_pixels)
            if raw.sizes.flip in (5, 6):  # LibRaw's codes for a 90-degree turn: the picture is upright after it
                width, height = height, width
            try:
                thumb = raw.extract_thumb()
            except (rawpy.LibRawNoThumbnailError, rawpy.LibRawUnsupportedThumbnailError):
                thumb = None
            if thumb is not None and thumb.format == rawpy.ThumbFormat.JPEG:
                preview = decode_image(thumb.data, prep, max_pixels)
                return replace(preview, width=width, height=height, format="RAW")
            if thumb is not None:  # an uncompressed preview bitmap
                img = Image.fromarray(thumb.data)
            else:
                img = Image.fromarray(raw.postprocess(half_size=True, use_camera_wb=True, output_bps=8))
    except rawpy.LibRawError as e:
        code = "unsupported" if isinstance(e, rawpy.LibRawFileUnsupportedError) else "corrupt"
        raise DecodeError(code, f"{type(e).__name__}: {e}" if str(e) else type(e).__name__) from None
    img = to_rgb(img)
    pixels = resize_and_crop(img, prep)
    return Decoded(pixels=pixels, width=width, height=height, format="RAW", taken_at=None, phash=perceptual_hash(img))


def perceptual_hash(img: Image.Image) -> str:
    """The picture's 64-bit pHash as 16 hex digits: a few bits apart for a resized, re-encoded or lightly edited
    copy (pHash beat dHash on both misses and false matches: bench/duplicates.py)."""
    return str(imagehash.phash(img))


def unsupported_feature(data: bytes, e: Exception) -> str | None:
    """What this build cannot read in a valid file (so the file is `unsupported`, not `corrupt`), if that is it.

    Pillow says "decoder error -2" for a TIFF whose compression libtiff lacks (the real cause, "WEBP compression
    support is not configured", goes to stderr) and "Unsupported BMP pixel depth (0)" for a BMP with a JPEG
    or PNG inside, so those two are read from the file's own header.
    """
    if isinstance(e, NotImplementedError):
        return str(e) or "a feature this build of Pillow lacks"
    if any(words in str(e).lower() for words in UNSUPPORTED_MESSAGES):
        return str(e)
    bmp_compression = int.from_bytes(data[30:34], "little") if data[:2] == b"BM" and len(data) >= 34 else None
    if bmp_compression in BMP_EMBEDDED:
        return f"BMP holding a {BMP_EMBEDDED[bmp_compression]} image"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        try:
            with Image.open(io.BytesIO(data)) as img:
                compression = img.tag_v2.get(259, 1)
        except Exception:  # the header itself is damaged: corrupt after all
            return None
        if compression not in BASIC_TIFF_COMPRESSIONS:
            return f"TIFF compression {TiffImagePlugin.COMPRESSION_INFO.get(compression, compression)}"
    return None


def draft_request(size: tuple[int, int], prep: ImagePrep) -> tuple[int, int]:
    """The smallest (width, height) a draft decode may return so the model input is still fully resampled.

    `size` is as stored, before the EXIF turn: the request must hold in either orientation.
    """
    if prep.max_patches:  # the NaFlex size of a turned image is the turned size: ask for it as stored
        return prep.target_size(*size)
    edge_h, edge_w = prep.resize_to
    if edge_w == 0:  # shortest edge: the short side must stay >= edge whatever the orientation
        return (edge_h, edge_h)
    need = max(edge_h, edge_w)
    return (need, need)


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any mode to 8-bit RGB: alpha over white, 16-bit scaled (not clipped), palettes expanded."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        img = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    elif img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        span = max(float(arr.max() - arr.min()), 1e-12)
        img = Image.fromarray(((arr - arr.min()) / span * 255.0 + 0.5).astype(np.uint8), "L")
    if img.mode == "P" and "transparency" in img.info or img.mode in ("LA", "PA"):
        img = img.convert("RGBA")
    if img.mode == "RGBA":
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, img).convert("RGB")
    return img.convert("RGB")


def resize_and_crop(img: Image.Image, prep: ImagePrep, full_size: tuple[int, int] | None = None) -> np.ndarray:
    """Resize and centre-crop exactly as the transformers PIL image processors do; uint8 (H, W, 3).

    full_size: the (width, height) of the whole image when `img` is a reduced draft decode of it, so a NaFlex
    patch grid is the one the whole image gets.
    """
    size = prep.target_size(*(full_size or img.size))
    if img.size != size:
        img = img.resize(size, resample=prep.resample)
    if prep.crop is not None:
        ch, cw = prep.crop
        w, h = img.size
        top, left = int((h - ch) / 2.0), int((w - cw) / 2.0)
        img = img.crop((left, top, left + cw, top + ch))
    return np.asarray(img, dtype=np.uint8)


def read_capture_time(img: Image.Image) -> datetime | None:
    """EXIF DateTimeOriginal, else DateTime; None when absent or malformed."""
    exif = img.getexif()
    raw = exif.get_ifd(0x8769).get(0x9003) or exif.get(0x0132)
    if not raw:
        return None
    try:
        return datetime.strptime(str(raw).strip("\x00 "), "%Y:%m:%d %H:%M:%S")
    except ValueError:
        return None
