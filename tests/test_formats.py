"""Every file Pillow decodes is indexed whatever its name; every image-named file that does not is skipped
with the right reason. Real files from Pillow's own test suite (tests/data/formats/README.md)."""

import shutil
from pathlib import Path

from PIL import Image

from indexer.decode import setup_heif
from indexer.pipeline import index_folder
from indexer.scan import IMAGE_SUFFIXES, PILLOW_EXTENSIONS_LEFT_OUT
from indexer.store import open_store
from tests.test_index import stored

FORMATS = Path(__file__).parent / "data" / "formats"
INDEXED = {
    "16_bit_binary.pgm", "1x1_l_bl_raw.tga", "black_and_white.ico", "blp1_jpeg2.blp", "comment.jp2",
    "five_channels.psd", "hopper.bw", "hopper.qoi", "hopper_underscore.xbm", "ignore_frame_size.mpo",
    "issue_6194.j2k", "pil184.pcx", "zero_mask_totals.dds",
}  # fmt: skip
SKIPPED = {
    "01r_00.pcx": "truncated",
    "ossfuzz-5730089102868480.sgi": "corrupt",
    "p_8.tga": "not an image",
    "hopper_webp.tif": "unsupported: TIFF compression webp",
    "rgb24jpeg.bmp": "unsupported: BMP holding a JPEG image",
    "unimplemented_pixel_format.dds": "unsupported: Unimplemented pixel format 0",
}


def test_every_extension_pillow_opens_is_a_candidate():
    """So a Pillow upgrade that adds a format shows up here instead of silently ignoring its files."""
    setup_heif()
    Image.init()
    opened = {ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}
    assert opened - PILLOW_EXTENSIONS_LEFT_OUT <= IMAGE_SUFFIXES


def test_formats_by_content_and_reasons(tmp_path, settings):
    folder = tmp_path / "formats"
    shutil.copytree(FORMATS, folder, ignore=shutil.ignore_patterns("*.md"))
    summary = index_folder(folder, settings, show_progress=False)
    assert set(stored(settings)) == INDEXED
    reasons = {Path(path).name: reason for path, reason in open_store(settings.store).skipped()}
    assert {name: reason.split(":")[0] for name, reason in reasons.items()} == {
        name: reason.split(":")[0] for name, reason in SKIPPED.items()
    }
    for name, reason in SKIPPED.items():
        if reason.startswith("unsupported"):
            assert reasons[name] == reason
    assert summary.indexed == len(INDEXED)
