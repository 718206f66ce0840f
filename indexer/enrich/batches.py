"""What the passes over stored images share (captions, read text): which images a model has still to do, and
their files read and decoded in batches, the next batch in threads while the caller works on one; and for the
passes over stored vectors (tags, clusters), their chunks read ahead."""

import io
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image as PILImage
from sqlalchemy import exists, func, select

from indexer.decode import DecodeError, ImagePrep, decode_image, read_and_hash, resize_and_crop, setup_heif
from indexer.store import INDEXED, SEARCHED, Caption, CaptionFailure, Image, Store
from indexer.video import VIDEO_SUFFIXES, frame_at

CHUNK = 16_384  # stored vectors read (and scored, by the passes over vectors) at a time
VIDEO_FRAME_SIDE = 1920  # a video frame is read at most this long on its longer side (text stays legible)


def images_to_do(
    store: Store, model: str, prompt: str, redo: bool, root_id: int | None, frames: bool = False
) -> tuple[list[int], int]:
    """Ids of indexed images (with `frames`, and of videos' kept frames) not yet done by model + prompt (all of them
    with redo), and how many there are."""
    query = select(Image.id).where(Image.status.in_(SEARCHED) if frames else Image.status == INDEXED)
    if root_id is not None:
        query = query.where(Image.root_id == root_id)
    with store.session() as s:
        total = s.scalar(select(func.count()).select_from(query.subquery()))
        if not redo:
            for table in (Caption, CaptionFailure):
                done = exists().where(table.image_id == Image.id, table.model == model, table.prompt == prompt)
                query = query.where(~done)
        return list(s.scalars(query.order_by(Image.id))), total


def read_pixels(
    path: str, max_pixels: int, prep: ImagePrep | Callable[[int, int], ImagePrep], at: float | None = None
) -> np.ndarray | str:
    """A file decoded with `prep`, or with the prep that `prep(width, height)` picks for its size; or the reason it
    cannot be decoded. A video's picture is its frame `at` that second (its first without one)."""
    try:
        if at is not None or Path(path).suffix.lower() in VIDEO_SUFFIXES:
            frame = frame_at(Path(path), at or 0.0, VIDEO_FRAME_SIDE)
            return resize_and_crop(frame, prep(*frame.size) if callable(prep) else prep)
        data, _ = read_and_hash(Path(path))
        if callable(prep):
            prep = prep(*header_size(data))
        return decode_image(data, prep, max_pixels).pixels
    except DecodeError as e:
        return e.reason


def header_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the file's header; (0, 0) when it has none (decode_image then says what is wrong)."""
    try:
        with PILImage.open(io.BytesIO(data)) as header:
            return header.size
    except Exception:
        return 0, 0


def decoded_batches(
    store: Store, ids: list[int], batch_size: int, read: Callable[..., np.ndarray | str]
) -> Iterator[dict[int, np.ndarray | str]]:
    """Batches of {image id: read(its path, at=the second of a video's frame): pixels or failure reason}; the next
    batch decodes in threads while the caller works on one (captioning, reading text)."""
    setup_heif()
    batches = [ids[start : start + batch_size] for start in range(0, len(ids), batch_size)]
    with ThreadPoolExecutor(2) as pool:

        def submit(batch: list[int]) -> dict[int, Future]:
            pictures = store.pictures(batch)
            return {i: pool.submit(read, pictures[i][0], at=pictures[i][1]) for i in batch if i in pictures}

        pending: dict[int, Future] | None = None
        for batch in batches:
            upcoming = submit(batch)
            if pending is not None:
                yield {i: future.result() for i, future in pending.items()}
            pending = upcoming
        if pending is not None:
            yield {i: future.result() for i, future in pending.items()}


def read_ahead(chunks: Iterator) -> Iterator:
    """Yield the chunks while a thread reads the next one: SQLite reads and the scoring both release the GIL,
    so reading overlaps scoring and writing instead of adding to them."""
    with ThreadPoolExecutor(1, thread_name_prefix="read-ahead") as reader:
        upcoming = reader.submit(next, chunks, None)
        while (chunk := upcoming.result()) is not None:
            upcoming = reader.submit(next, chunks, None)
            yield chunk
