"""Read the text in images (OCR) with RapidOCR: PP-OCRv4 detection and recognition on ONNX Runtime, CPU.

The models ship inside the `rapidocr-onnxruntime` wheel, so reading works offline. Another language's
recognition model (a PP-OCR rec .onnx and its character list) is given by path (`--ocr-model`, `--ocr-keys`).

What is read is stored twice: the lines, each with its box and confidence (table text_lines), and the image's
whole text as a caption by the reader (model READ_TEXT + name), so full-text search, incremental runs, recorded
failures and a changed file losing its text all come from the captioning machinery (indexer/enrich/batches.py,
captions.py).

Most photos hold no text, and with the wheel's defaults the detector alone costs most of a read (it upsizes
the image to 736 px on its short side: 0.5 s for a 640x360 photo here). So the detector looks at a copy at most
DETECT_EDGE px on its long side, never upsized, and only the boxes it finds are recognised, from the
full-resolution image: a text-free photo costs one small detection. Measured in bench/ocr.py against the
wheel's pipeline: 3x faster, the same search recall from 20 px text up, a little less on 12-16 px text.
"""

import functools
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image as PILImage
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from sqlalchemy import delete

from indexer.decode import ImagePrep
from indexer.enrich.batches import decoded_batches, images_to_do, read_pixels
from indexer.errors import ModelLoadError
from indexer.settings import Settings
from indexer.store import READ_TEXT, Caption, CaptionFailure, Root, Store, TextLine, utcnow

log = logging.getLogger(__name__)

DEFAULT_READER = f"{READ_TEXT}rapidocr-ppocrv4"
MAX_EDGE = 2000  # the wheel's own max_side_len: larger images are read at this size
DETECT_EDGE = 640  # the long side of the copy the detector looks at (measured: 480 loses 12 px text, 960 is slower)
# Lines recognised with less confidence are dropped: on photos without text the recogniser reads shapes as
# single letters at 0.5-0.7 (the wheel's own cut is 0.5); real words score above 0.8 down to 12 px text.
MIN_CONFIDENCE = 0.75
BATCH = 8  # images a batch: decoded while the one before is read, then committed together
# The recognizer often drops the space between a word and a number ("TOTAL42.50"): the searchable text gets one
# back at every letter-digit boundary, so both "total" and "42.50" find the line.
LETTER_DIGIT = re.compile(r"(?<=[^\W\d_])(?=\d)|(?<=\d)(?=[^\W\d_])")


def searchable(text: str) -> str:
    """Read text (or a query for it) with a space at every letter-digit boundary: "TOTAL42.50" -> "TOTAL 42.50"."""
    return LETTER_DIGIT.sub(" ", text)


@dataclass
class ReadLine:
    text: str
    confidence: float
    box: list[list[float]]  # four [x, y] corners, as fractions of the image's width and height (as displayed)


def reader_name(rec_model: str | None) -> str:
    """The name the reader's text is stored under: one per recognition model."""
    return f"{READ_TEXT}rapidocr:{Path(rec_model).name}" if rec_model else DEFAULT_READER


class Reader:
    """The OCR pipeline: detection on a small copy, then direction and recognition of each box at full size."""

    def __init__(self, rec_model: str | None = None, rec_keys: str | None = None):
        try:
            from rapidocr_onnxruntime import RapidOCR
        except ImportError:
            raise ModelLoadError("reading text needs rapidocr-onnxruntime: pip install 'clipdex[ocr]'") from None
        options = {}
        if rec_model:
            options["rec_model_path"] = str(Path(rec_model).expanduser().resolve())
            if rec_keys:
                options["rec_keys_path"] = str(Path(rec_keys).expanduser().resolve())
        for path in options.values():
            if not Path(path).is_file():
                raise ModelLoadError(f"no OCR model file {path}")
        self.name = reader_name(rec_model)
        try:
            self.ocr = RapidOCR(det_limit_type="max", **options)  # "max": the detector never upsizes
            self.detect = self.ocr.text_det
        except Exception as e:  # onnxruntime refuses a file that is not a model
            raise ModelLoadError(f"cannot load the OCR models: {e}") from None

    def read(self, pixels: np.ndarray) -> list[ReadLine]:
        """The lines of text in RGB uint8 pixels, top to bottom: boxes found on a copy at most DETECT_EDGE px
        long, each recognised from the full-resolution image."""
        image = np.ascontiguousarray(pixels[:, :, ::-1])  # the models take BGR, as OpenCV reads
        h, w = image.shape[:2]
        scale = min(1.0, DETECT_EDGE / max(h, w))
        small = (
            image if scale == 1 else np.asarray(PILImage.fromarray(image).resize((round(w * scale), round(h * scale))))
        )
        boxes, _ = self.detect(np.ascontiguousarray(small))
        if boxes is None or not len(boxes):
            return []  # most photos end here, after the detector alone
        boxes = (np.asarray(self.ocr.sorted_boxes(boxes), dtype=np.float32) / scale).astype(np.float32)
        crops, _, _ = self.ocr.text_cls(self.ocr.get_crop_img_list(image, boxes))
        recognised, _ = self.ocr.text_rec(crops)
        return [
            ReadLine(str(text), float(confidence), [[round(float(x) / w, 5), round(float(y) / h, 5)] for x, y in box])
            for box, (text, confidence) in zip(boxes, recognised, strict=True)
            if confidence >= MIN_CONFIDENCE and str(text).strip()
        ]


def reading_prep(width: int, height: int) -> ImagePrep:
    """How a file is decoded for reading: full size, at most MAX_EDGE on its long side."""
    if not width or not height:
        width = height = MAX_EDGE
    short = min(width, height) * min(1.0, MAX_EDGE / max(width, height))
    return ImagePrep((max(1, round(short)), 0), None, PILImage.Resampling.BICUBIC, (0, 0, 0), (1, 1, 1), 1.0)


@dataclass
class OcrSummary:
    """What one reading run did; `line()` is the closing summary users see."""

    reader: str
    read: int = 0  # images with text found
    empty: int = 0  # images read, no text
    failed: int = 0  # recorded with the reason; a re-run skips them unless asked to redo
    done_before: int = 0
    seconds: float = 0.0
    lines: int = 0
    failures: dict[int, str] = field(default_factory=dict)

    @property
    def images_per_second(self) -> float:
        return (self.read + self.empty) / self.seconds if self.seconds else 0.0

    def line(self) -> str:
        return (
            f"read text in {self.read} images ({self.lines} lines), none in {self.empty}, failed {self.failed}, "
            f"already done {self.done_before} in {self.seconds:.1f} s ({self.images_per_second:.2f} images/s)"
        )


def write_reads(store: Store, reader: str, reads: dict[int, list[ReadLine]], failures: dict[int, str]) -> None:
    """Replace this reader's text, lines and failures of a batch of images, in one transaction. An image with
    no text gets an empty caption: read, nothing to find, not read again."""
    ids = [*reads, *failures]
    now = utcnow()
    with store.session() as s:
        for table in (Caption, CaptionFailure, TextLine):
            s.execute(delete(table).where(table.image_id.in_(ids), table.model == reader))
        for image_id, lines in reads.items():
            text = "\n".join(searchable(line.text) for line in lines)
            s.add(Caption(image_id=image_id, model=reader, prompt="", text=text, created_at=now))
            s.add_all(
                TextLine(image_id=image_id, model=reader, text=line.text, confidence=line.confidence, box=line.box)
                for line in lines
            )
        s.add_all(
            CaptionFailure(image_id=i, model=reader, prompt="", reason=r, created_at=now) for i, r in failures.items()
        )
        s.commit()


def ocr_store(
    store: Store,
    settings: Settings,
    redo: bool = False,
    root_id: int | None = None,
    show_progress: bool = True,
    reader: Reader | None = None,
) -> OcrSummary:
    """Read the text of the store's images not yet read by this reader (every image with redo); `root_id`
    limits it to one indexed folder. The models load only when there is work."""
    with store.session() as s:
        root = Path(s.get(Root, root_id).path) if root_id is not None else None
    with store.writing(root, settings.lock_timeout):  # re-entrant: `index --ocr` holds it already
        started = time.perf_counter()
        name = reader.name if reader else reader_name(settings.ocr_model)
        todo, total = images_to_do(store, name, "", redo, root_id, frames=True)  # each kept frame of a video
        summary = OcrSummary(reader=name, done_before=total - len(todo))
        if todo:
            reader = reader or Reader(settings.ocr_model, settings.ocr_keys)
            progress = Progress(
                TextColumn("reading text"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]:.2f} images/s"),
                TimeRemainingColumn(),
                disable=not show_progress,
            )
            with progress:
                task = progress.add_task("ocr", total=len(todo), rate=0.0)
                read_file = functools.partial(read_pixels, max_pixels=settings.max_pixels, prep=reading_prep)
                for images in decoded_batches(store, todo, BATCH, read_file):
                    record(store, name, *read_batch(reader, images), summary)
                    done = summary.read + summary.empty + summary.failed
                    progress.update(task, completed=done, rate=done / (time.perf_counter() - started))
        summary.seconds = time.perf_counter() - started
        return summary


def read_batch(reader: Reader, images: dict[int, np.ndarray | str]) -> tuple[dict, dict[int, str]]:
    """({id: lines read}, {id: failure reason}) of a batch of {id: pixels, or the reason it was not decoded}."""
    reads, failures = {}, {}
    for image_id, pixels in images.items():
        if isinstance(pixels, str):
            failures[image_id] = pixels
            continue
        try:
            reads[image_id] = reader.read(pixels)
        except Exception as e:  # whatever the reader raises fails this image alone
            failures[image_id] = f"reading failed: {type(e).__name__}: {e}"
    return reads, failures


def record(store: Store, name: str, reads: dict, failures: dict[int, str], summary: OcrSummary) -> None:
    """Write a batch of reads and failures, count them, say which files failed."""
    write_reads(store, name, reads, failures)
    paths = store.paths(list(failures)) if failures else {}
    for image_id, reason in failures.items():
        log.warning("not reading text in %s: %s", paths.get(image_id, f"image {image_id}"), reason)
    summary.read += sum(1 for lines in reads.values() if lines)
    summary.empty += sum(1 for lines in reads.values() if not lines)
    summary.lines += sum(len(lines) for lines in reads.values())
    summary.failed += len(failures)
    summary.failures.update(failures)
