"""Decoding: formats become proper RGB, orientation is applied, and every bad file gets the right reason."""

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from indexer import worker
from indexer.decode import (
    DecodeError,
    ImagePrep,
    decode_image,
    looks_like_image,
    setup_heif,
)
from indexer.worker import WorkerConfig, load_file
from tests.support.photos import photo

CLIP_PREP = ImagePrep(
    resize_to=(224, 0), crop=(224, 224), resample=3, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), rescale=1 / 255
)


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def decode(data: bytes, max_pixels: int = 10**9):
    setup_heif()
    return decode_image(data, CLIP_PREP, max_pixels)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF", "HEIF"])
def test_formats_decode_to_model_sized_rgb(fmt):
    setup_heif()
    d = decode(encode(photo(1, (300, 200)), fmt))
    assert d.pixels.shape == (224, 224, 3) and d.pixels.dtype == np.uint8
    assert (d.width, d.height) == (300, 200)
    assert d.format == fmt


def test_content_detection_by_magic_bytes():
    assert looks_like_image(encode(photo(1), "JPEG")[:16])
    assert looks_like_image(encode(photo(1), "PNG")[:16])
    assert looks_like_image(encode(photo(1), "WEBP")[:16])
    assert not looks_like_image(b"hello world, not an image")


def test_exif_orientation_is_applied():
    # A landscape pixel block stored with "rotate 90" must come out portrait, with portrait dimensions.
    img = Image.new("RGB", (400, 200), (255, 0, 0))
    img.paste((0, 0, 255), (0, 0, 200, 200))  # left half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display: the blue left half ends up on top
    d = decode(encode(img, "JPEG", exif=exif.tobytes(), quality=95))
    assert (d.width, d.height) == (200, 400)
    top, bottom = d.pixels[10, 112], d.pixels[-10, 112]
    assert top[2] > 200 and top[0] < 60  # blue
    assert bottom[0] > 200 and bottom[2] < 60  # red


def test_capture_time_from_exif():
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9003] = "2024:06:01 14:30:05"
    d = decode(encode(photo(2), "JPEG", exif=exif.tobytes()))
    assert d.taken_at.isoformat() == "2024-06-01T14:30:05"


def test_alpha_is_composited_over_white():
    img = Image.new("RGBA", (300, 300), (255, 0, 0, 0))  # fully transparent red
    d = decode(encode(img, "PNG"))
    assert d.pixels.min() == 255


def test_palette_with_transparency_and_cmyk_and_16_bit():
    pal = Image.new("P", (300, 300), 0)
    pal.putpalette([10, 20, 30] * 256)
    pal.info["transparency"] = 0
    assert decode(encode(pal, "PNG")).pixels.min() == 255  # transparent palette index -> white
    cmyk = Image.new("CMYK", (300, 300), (0, 255, 255, 0))  # pure red in CMYK
    px = decode(encode(cmyk, "JPEG")).pixels[112, 112]
    assert px[0] > 200 and px[1] < 50 and px[2] < 50
    deep = Image.fromarray(np.full((300, 300), 32768, dtype=np.uint16))  # mid-grey in 16 bits
    px = decode(encode(deep, "PNG")).pixels[112, 112]
    assert 120 <= px[0] <= 135  # scaled, not clipped to white


def test_gif_first_frame():
    frames = [Image.new("RGB", (300, 300), c) for c in [(255, 0, 0), (0, 255, 0)]]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    px = decode(buf.getvalue()).pixels[112, 112]
    assert px[0] > 200 and px[1] < 50


def test_jpeg_draft_downscales_in_dct_domain():
    """A 12 MP JPEG is decoded at 1/8 scale: the result is still the right model input."""
    big = photo(3, (4000, 3000))
    d = decode(encode(big, "JPEG", quality=85))
    assert d.pixels.shape == (224, 224, 3)
    assert (d.width, d.height) == (4000, 3000)  # the original size is recorded


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"", "empty file"),
        (b"this is text pretending to be a jpeg", "not an image"),
        (encode(photo(4), "JPEG")[:600], "truncated"),
        (encode(photo(4), "PNG")[:200], "truncated"),
    ],
)
def test_bad_bytes_get_reasons(data, code):
    with pytest.raises(DecodeError) as info:
        decode(data)
    assert info.value.reason.split(":")[0] == code


def test_corrupt_files():
    jpeg = bytearray(encode(photo(5), "JPEG"))
    tables = jpeg.find(b"\xff\xc4")
    jpeg[tables + 4 : tables + 40] = b"\xff" * 36  # Huffman tables destroyed
    png = bytearray(encode(photo(5), "PNG"))
    png[100:140] = bytes(40)  # compressed pixel data destroyed
    for data in (jpeg, png):
        with pytest.raises(DecodeError) as info:
            decode(bytes(data))
        assert info.value.reason.startswith("corrupt: ")


def test_decompression_bomb_is_refused_from_the_header():
    big = Image.new("L", (5000, 5000))
    with pytest.raises(DecodeError) as info:
        decode(encode(big, "PNG"), max_pixels=10_000_000)
    assert info.value.reason.startswith("too large: 5000x5000")


def configure_worker(monkeypatch, known_hashes: frozenset[str] = frozenset()) -> None:
    """The decode worker's configuration, set in this process without setup_worker, which would bind the test
    process to its parent (die_with_parent) and limit its memory, as a worker's."""
    monkeypatch.setattr(worker, "_config", WorkerConfig(prep=CLIP_PREP, max_pixels=10**9, known_hashes=known_hashes))


def test_permission_denied_is_a_reason(tmp_path, monkeypatch):
    path = tmp_path / "locked.jpg"
    photo(6).save(path)
    configure_worker(monkeypatch)

    def denied(self):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "read_bytes", denied)  # root ignores chmod, so simulate the OS answer
    result = load_file(path)
    assert result.skip_reason == "permission denied: Permission denied"


def test_known_content_is_hashed_not_decoded(tmp_path, monkeypatch):
    path = tmp_path / "a.jpg"
    photo(7).save(path)
    configure_worker(monkeypatch)
    first = load_file(path)
    assert first.decoded is not None
    configure_worker(monkeypatch, frozenset({first.hash}))
    again = load_file(path)
    assert again.hash == first.hash and again.decoded is None and again.skip_reason is None
