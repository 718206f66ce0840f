"""Caption stored images with BLIP or BLIP-2: batched generation, one commit per batch, failures recorded.

Captioning works on images already in the store. Files are read again and decoded at the captioner's own
input size (384 px for BLIP, 224 px for BLIP-2): a few milliseconds next to a generation that takes a
good part of a second on CPU. Every batch is committed, so a killed run loses at most one batch and a
re-run captions only what is missing.
"""

import functools
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from sqlalchemy import delete

from indexer.enrich.batches import decoded_batches, images_to_do, read_pixels
from indexer.enrich.captioner import Captioner, caption_decoded, load_captioner, resolve_captioner
from indexer.enrich.ray_captions import caption_on_ray
from indexer.settings import Settings
from indexer.store import Caption, CaptionFailure, Root, Store, utcnow

log = logging.getLogger(__name__)


@dataclass
class CaptionSummary:
    """What one captioning run did; `line()` is the closing summary users see."""

    model: str
    prompt: str
    captioned: int = 0
    failed: int = 0  # recorded with the reason; a re-run skips them unless asked to redo
    done_before: int = 0  # already captioned (or failed) with this model and prompt
    seconds: float = 0.0

    @property
    def captions_per_second(self) -> float:
        return self.captioned / self.seconds if self.seconds else 0.0

    def line(self) -> str:
        return (
            f"captioned {self.captioned}, failed {self.failed}, already done {self.done_before} "
            f"with {self.model} in {self.seconds:.1f} s ({self.captions_per_second:.2f} captions/s)"
        )


def write_batch(store: Store, model: str, prompt: str, captions: dict[int, str], failures: dict[int, str]) -> None:
    """Replace this model + prompt's captions and failures of a batch of images, in one transaction."""
    ids = [*captions, *failures]
    now = utcnow()
    with store.session() as s:
        for table in (Caption, CaptionFailure):
            s.execute(delete(table).where(table.image_id.in_(ids), table.model == model, table.prompt == prompt))
        s.add_all(Caption(image_id=i, model=model, prompt=prompt, text=t, created_at=now) for i, t in captions.items())
        s.add_all(
            CaptionFailure(image_id=i, model=model, prompt=prompt, reason=r, created_at=now)
            for i, r in failures.items()
        )
        s.commit()


def caption_store(
    store: Store, settings: Settings, redo: bool = False, root_id: int | None = None, show_progress: bool = True
) -> CaptionSummary:
    """Caption the store's images that lack a caption from this model and prompt (every image with redo).

    `root_id` limits the work to one indexed folder. The model is loaded only when there is work.
    """
    with store.session() as s:
        root = Path(s.get(Root, root_id).path) if root_id is not None else None
    with store.writing(root, settings.lock_timeout):  # re-entrant: `index --caption` holds it already
        started = time.perf_counter()
        name, prompt = resolve_captioner(settings)
        todo, total = images_to_do(store, name, prompt, redo, root_id)
        summary = CaptionSummary(model=name, prompt=prompt, done_before=total - len(todo))
        if todo:
            if settings.ray:
                batches = caption_on_ray(store, todo, name, prompt, settings)
            else:
                captioner = load_captioner(name, settings.device, settings.caption_quantize, settings.caption_attn)
                batches = caption_here(store, todo, captioner, prompt, settings)
            progress = Progress(
                TextColumn("captioning"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]:.2f} captions/s"),
                TimeRemainingColumn(),
                disable=not show_progress,
            )
            loaded = time.perf_counter()
            with progress:
                task = progress.add_task("caption", total=len(todo), rate=0.0)
                for captions, failures in batches:
                    write_batch(store, name, prompt, captions, failures)
                    paths = store.paths(list(failures)) if failures else {}
                    for image_id, reason in failures.items():
                        log.warning("not captioning %s: %s", paths.get(image_id, f"image {image_id}"), reason)
                    summary.captioned += len(captions)
                    summary.failed += len(failures)
                    done = summary.captioned + summary.failed
                    progress.update(task, completed=done, rate=summary.captioned / (time.perf_counter() - loaded))
        summary.seconds = time.perf_counter() - started
        return summary


def caption_here(
    store: Store, ids: list[int], captioner: Captioner, prompt: str, settings: Settings
) -> Iterator[tuple[dict[int, str], dict[int, str]]]:
    """(captions, failures) of each batch of `ids`, captioned in this process."""
    batch_size = settings.caption_batch_size or (16 if captioner.device.type == "cuda" else 4)
    read = functools.partial(read_pixels, max_pixels=settings.max_pixels, prep=captioner.prep)
    for images in decoded_batches(store, ids, batch_size, read):
        yield caption_decoded(captioner, images, prompt, settings)
