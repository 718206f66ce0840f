"""Every file Pillow decodes is indexed whatever its name; every image-named file that does not is skipped
with the right reason. Real files from Pillow's own test suite (tests/data/formats/README.md)."""

import shutil
from pathlib import Path

from PIL import Image

from indexer.decode import setup_heif
from indexer.indexing import index_folder
from indexer.scan import IMAGE_SUFFIXES, PILLOW_EXTENSIONS_LEFT_OUT
from indexer.store import open_store
from tests.support.stores import stored

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


def write_dng(path: Path, width: int = 384, height: int = 256) -> None:
    """A real DNG (12-bit RGGB Bayer data, no embedded preview) made with pidng."""
    import numpy as np
    from pidng.core import RAW2DNG, DNGTags, Tag
    from pidng.defs import CalibrationIlluminant, CFAPattern, DNGVersion, Orientation, PhotometricInterpretation

    identity = [[1, 1], [0, 1], [0, 1], [0, 1], [1, 1], [0, 1], [0, 1], [0, 1], [1, 1]]  # as rationals
    y, x = np.mgrid[0:height, 0:width]
    bayer = ((x * 10 + y * 5) % 4096).astype(np.uint16)
    tags = DNGTags()
    for tag, value in [
        (Tag.ImageWidth, width), (Tag.ImageLength, height), (Tag.TileWidth, width), (Tag.TileLength, height),
        (Tag.Orientation, Orientation.Horizontal), (Tag.SamplesPerPixel, 1), (Tag.BitsPerSample, 12),
        (Tag.PhotometricInterpretation, PhotometricInterpretation.Color_Filter_Array),
        (Tag.CFARepeatPatternDim, [2, 2]), (Tag.CFAPattern, CFAPattern.RGGB), (Tag.BlackLevel, 0),
        (Tag.WhiteLevel, 4095), (Tag.ColorMatrix1, identity),
        (Tag.CalibrationIlluminant1, CalibrationIlluminant.D65), (Tag.AsShotNeutral, [[1, 1], [1, 1], [1, 1]]),
        (Tag.BaselineExposure, [[0, 1]]), (Tag.Make, "clipdex"), (Tag.Model, "test"),
        (Tag.DNGVersion, DNGVersion.V1_4), (Tag.DNGBackwardVersion, DNGVersion.V1_2),
    ]:  # fmt: skip
        tags.set(tag, value)
    writer = RAW2DNG()
    writer.options(tags, path="", compress=False)
    writer.convert(bayer, filename=str(path.with_suffix("")))


def test_camera_raw_is_indexed_through_libraw(tmp_path, settings):
    folder = tmp_path / "raw"
    folder.mkdir()
    write_dng(folder / "shot.dng")
    (folder / "broken.nef").write_bytes(b"II*\x00" + bytes(2000))  # starts like a NEF, holds nothing
    summary = index_folder(folder, settings, show_progress=False)
    assert summary.indexed == 1
    store = open_store(settings.store)
    row = store.image(stored(settings)["shot.dng"][0])
    assert (row.format, row.width, row.height) == ("RAW", 384, 256)
    [(path, reason)] = store.skipped()
    assert Path(path).name == "broken.nef" and reason.split(":")[0] in ("corrupt", "unsupported")
