"""The captioning model: BLIP or BLIP-2 with its processor, loaded by hub id or directory, turning decoded
images into text in batches; a failed batch is retried image by image."""

from dataclasses import dataclass

import numpy as np
import torch

from indexer.decode import ImagePrep
from indexer.errors import ModelLoadError
from indexer.models.generative import load_pretrained, resolve_dtype
from indexer.models.loading import canonical_name, pick_device, read_image_prep
from indexer.settings import Settings

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

    `quantize` and `attn` are those of indexer/models/generative.py: int8 (Quanto), 4bit / 8bit (bitsandbytes, CUDA)
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


def caption_decoded(
    captioner: Captioner, images: dict[int, np.ndarray | str], prompt: str, settings: Settings
) -> tuple[dict[int, str], dict[int, str]]:
    """Captions and failure reasons of a batch of {image id: pixels, or the reason it could not be decoded}."""
    decoded = {i: pixels for i, pixels in images.items() if not isinstance(pixels, str)}
    captions, failures = caption_batch(captioner, decoded, prompt, settings) if decoded else ({}, {})
    failures.update({i: reason for i, reason in images.items() if isinstance(reason, str)})
    return captions, failures
