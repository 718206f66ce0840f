"""Caption stored images with BLIP or BLIP-2: batched generation, one commit per batch, failures recorded.

Captioning works on images already in the store. Files are read again and decoded at the captioner's own
input size (384 px for BLIP, 224 px for BLIP-2): a few milliseconds next to a generation that takes a
good part of a second on CPU. Every batch is committed, so a killed run loses at most one batch and a
re-run captions only what is missing.
"""

import functools
import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from sqlalchemy import delete, exists, func, select

from indexer.decode import DecodeError, ImagePrep, decode_image, read_and_hash, setup_heif
from indexer.errors import ModelLoadError
from indexer.models import canonical_name, pick_device, read_image_prep
from indexer.pretrained import load_pretrained, resolve_dtype
from indexer.settings import Settings
from indexer.store import INDEXED, Caption, CaptionFailure, Image, Root, Store, utcnow

log = logging.getLogger(__name__)

GPU_CAPTIONER = "Salesforce/blip2-opt-2.7b"
CPU_CAPTIONER = "Salesforce/blip-image-captioning-base"
# BLIP continues a text prefix; BLIP-2 with an OPT language model answers in the form it was tuned on.
BLIP_PROMPT = "a photography of"
BLIP2_PROMPT = "Question: What does this photo show? Answer:"
FAMILIES = ("blip", "blip-2")


def caption_family(name: str) -> str:
    """ "blip" or "blip-2", read from the model's config alone (no weights are loaded)."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(name)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"cannot load captioning model {name!r}: {e}") from None
    if config.model_type not in FAMILIES:
        raise ModelLoadError(
            f"{name} is a {config.model_type!r} model; clipdex captions with BLIP or BLIP-2 models "
            f"(e.g. {CPU_CAPTIONER} or {GPU_CAPTIONER})"
        )
    return config.model_type


def full_prompt(family: str, prompt: str | None) -> str:
    """The prompt as stored and fed to the model: the family's default, and BLIP-2 questions wrapped.

    For BLIP-2 a prompt ending with "?" becomes "Question: ... Answer:"; anything else (BLIP's prefixes
    like "a photography of", or an already wrapped question) is used as given.
    """
    if prompt is None:
        return BLIP2_PROMPT if family == "blip-2" else BLIP_PROMPT
    prompt = prompt.strip()
    if family == "blip-2" and prompt.endswith("?") and not prompt.startswith("Question:"):
        return f"Question: {prompt} Answer:"
    return prompt


@dataclass
class Captioner:
    """A loaded BLIP or BLIP-2 with its processor; `caption` turns decoded images into text."""

    name: str  # as the store records it: a hub id, or an absolute directory path
    family: str
    model: torch.nn.Module
    processor: object
    prep: ImagePrep  # how the decoder sizes images for this model
    device: torch.device
    dtype: torch.dtype

    @torch.inference_mode()
    def caption(self, pixels: list[np.ndarray], prompt: str, max_new_tokens: int, beams: int) -> list[str]:
        """Caption a batch of uint8 (H, W, 3) images, all with the same prompt; the prompt is not repeated."""
        inputs = self.processor(images=pixels, text=[prompt] * len(pixels), return_tensors="pt").to(self.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        out = self.model.generate(**inputs, max_new_tokens=max_new_tokens, num_beams=beams)
        # Both return the prompt tokens before the new ones; BLIP first drops the tokenizer's closing [SEP].
        start = inputs["input_ids"].shape[1] - (self.family == "blip")
        return [text.strip() for text in self.processor.batch_decode(out[:, start:], skip_special_tokens=True)]


def default_captioner(device: torch.device) -> str:
    """BLIP-2 OPT-2.7B where there is a GPU for it, BLIP base (a quarter of a billion weights) on CPU."""
    return GPU_CAPTIONER if device.type == "cuda" else CPU_CAPTIONER


def resolve_captioner(settings: Settings) -> tuple[str, str]:
    """The configured captioner's name as stored and its full prompt, checked from its config (no weights)."""
    name = canonical_name(settings.caption_model or default_captioner(pick_device(settings.device)))
    return name, full_prompt(caption_family(name), settings.caption_prompt)


def load_captioner(name: str, device: str = "auto", quantize: str = "none", attn: str = "auto") -> Captioner:
    """Load a BLIP or BLIP-2 captioner from the hub or a directory; fp16 on CUDA, fp32 on CPU.

    `quantize` and `attn` are those of indexer/pretrained.py: int8 (Quanto), 4bit / 8bit (bitsandbytes, CUDA)
    weights, and the attention kernel.
    """
    from transformers import AutoProcessor, Blip2ForConditionalGeneration, BlipForConditionalGeneration

    torch_device = pick_device(device)
    name = canonical_name(name)
    family = caption_family(name)
    model_class = Blip2ForConditionalGeneration if family == "blip-2" else BlipForConditionalGeneration
    try:
        model = load_pretrained(model_class, name, torch_device, "auto", quantize, attn)
        processor = AutoProcessor.from_pretrained(name)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"cannot load captioning model {name!r}: {e}") from None
    prep = read_image_prep(processor.image_processor)
    return Captioner(name, family, model, processor, prep, torch_device, resolve_dtype(torch_device, "auto"))


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


def images_to_caption(store: Store, model: str, prompt: str, redo: bool, root_id: int | None) -> tuple[list[int], int]:
    """Ids of indexed images still to caption with model + prompt (all of them with redo), and how many there are."""
    query = select(Image.id).where(Image.status == INDEXED)
    if root_id is not None:
        query = query.where(Image.root_id == root_id)
    with store.session() as s:
        total = s.scalar(select(func.count()).select_from(query.subquery()))
        if not redo:
            for table in (Caption, CaptionFailure):
                done = exists().where(table.image_id == Image.id, table.model == model, table.prompt == prompt)
                query = query.where(~done)
        return list(s.scalars(query.order_by(Image.id))), total


def read_pixels(path: str, prep: ImagePrep, max_pixels: int) -> np.ndarray | str:
    """A file decoded to the captioner's input size, or the reason it cannot be."""
    try:
        data, _ = read_and_hash(Path(path))
        return decode_image(data, prep, max_pixels).pixels
    except DecodeError as e:
        return e.reason


def caption_batch(
    captioner: Captioner, images: dict[int, np.ndarray], prompt: str, settings: Settings
) -> tuple[dict[int, str], dict[int, str]]:
    """Captions and failure reasons by id; a failed batch is retried image by image, so one bad image fails alone."""
    try:
        pixels = list(images.values())
        texts = captioner.caption(pixels, prompt, settings.caption_max_new_tokens, settings.caption_beams)
        return dict(zip(images, texts, strict=True)), {}
    except Exception as e:  # whatever generation raises is recorded against the image, never fatal to the run
        if len(images) == 1:
            return {}, {image_id: f"generation failed: {type(e).__name__}: {e}" for image_id in images}
    captions: dict[int, str] = {}
    failures: dict[int, str] = {}
    for image_id, pixels in images.items():
        one_caption, one_failure = caption_batch(captioner, {image_id: pixels}, prompt, settings)
        captions.update(one_caption)
        failures.update(one_failure)
    return captions, failures


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
        todo, total = images_to_caption(store, name, prompt, redo, root_id)
        summary = CaptionSummary(model=name, prompt=prompt, done_before=total - len(todo))
        if todo:
            if settings.ray:
                from indexer.cluster import caption_on_ray

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


def caption_decoded(
    captioner: Captioner, images: dict[int, np.ndarray | str], prompt: str, settings: Settings
) -> tuple[dict[int, str], dict[int, str]]:
    """Captions and failure reasons of a batch of {image id: pixels, or the reason it could not be decoded}."""
    decoded = {i: pixels for i, pixels in images.items() if not isinstance(pixels, str)}
    captions, failures = caption_batch(captioner, decoded, prompt, settings) if decoded else ({}, {})
    failures.update({i: reason for i, reason in images.items() if isinstance(reason, str)})
    return captions, failures


def caption_here(
    store: Store, ids: list[int], captioner: Captioner, prompt: str, settings: Settings
) -> Iterator[tuple[dict[int, str], dict[int, str]]]:
    """(captions, failures) of each batch of `ids`, captioned in this process."""
    batch_size = settings.caption_batch_size or (16 if captioner.device.type == "cuda" else 4)
    read = functools.partial(read_pixels, prep=captioner.prep, max_pixels=settings.max_pixels)
    for images in decoded_batches(store, ids, batch_size, read):
        yield caption_decoded(captioner, images, prompt, settings)


def decoded_batches(
    store: Store, ids: list[int], batch_size: int, read: Callable[[str], np.ndarray | str]
) -> Iterator[dict[int, np.ndarray | str]]:
    """Batches of {image id: read(its path): pixels or failure reason}; the next batch decodes in threads while
    the caller works on one (captioning, reading text)."""
    setup_heif()
    batches = [ids[start : start + batch_size] for start in range(0, len(ids), batch_size)]
    with ThreadPoolExecutor(2) as pool:

        def submit(batch: list[int]) -> dict[int, Future]:
            paths = store.paths(batch)
            return {i: pool.submit(read, paths[i]) for i in batch if i in paths}

        pending: dict[int, Future] | None = None
        for batch in batches:
            upcoming = submit(batch)
            if pending is not None:
                yield {i: future.result() for i, future in pending.items()}
            pending = upcoming
        if pending is not None:
            yield {i: future.result() for i, future in pending.items()}
