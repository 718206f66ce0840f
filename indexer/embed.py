"""Batched image and text embedding: L2-normalised float32 vectors out, whatever the runtime."""

from collections.abc import Sequence

import numpy as np
import torch

from indexer.decode import ImagePrep
from indexer.models import LoadedModel, load_model
from indexer.settings import Settings


def normalize_pixels(pixels: np.ndarray, prep: ImagePrep) -> np.ndarray:
    """uint8 (B, H, W, 3) to the model's float32 (B, 3, H, W): rescale, then subtract mean, divide std."""
    x = pixels.astype(np.float32) * np.float32(prep.rescale)
    x -= np.asarray(prep.mean, dtype=np.float32)
    x /= np.asarray(prep.std, dtype=np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Unit-length rows (zero rows stay zero)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


class Embedder:
    """Embeds images and texts into the model's shared space with the torch model."""

    def __init__(self, loaded: LoadedModel, batch_size: int):
        self.loaded = loaded
        self.name = loaded.name
        self.dim = loaded.dim
        self.prep = loaded.prep
        self.batch_size = batch_size

    @torch.inference_mode()
    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """Embed a batch of uint8 (B, H, W, 3) crops from the decode workers."""
        x = torch.from_numpy(normalize_pixels(pixels, self.prep))
        x = x.to(self.loaded.device, self.loaded.dtype)
        out = self.loaded.model.get_image_features(pixel_values=x)
        return l2_normalize(features(out).float().cpu().numpy())

    @torch.inference_mode()
    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts; SigLIP pads to its fixed length as it was trained, CLIP to the longest."""
        padding = "max_length" if self.loaded.family == "siglip" else True
        tokens = self.loaded.tokenizer(
            list(texts),
            padding=padding,
            truncation=True,
            max_length=self.loaded.text_max_length,
            return_tensors="pt",
        )
        tokens = {k: v.to(self.loaded.device) for k, v in tokens.items() if k in ("input_ids", "attention_mask")}
        if self.loaded.family == "siglip":
            tokens.pop("attention_mask", None)  # SigLIP attends to its padding, as in training
        out = self.loaded.model.get_text_features(**tokens)
        return l2_normalize(features(out).float().cpu().numpy())


def features(out) -> torch.Tensor:
    """transformers 5 returns a model output whose pooler_output holds the projected features."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def make_embedder(name: str, settings: Settings) -> Embedder:
    """Load `name` and wrap it for the configured device, with a batch size that suits it."""
    loaded = load_model(name, settings.device)
    batch_size = settings.batch_size or (256 if loaded.device.type == "cuda" else 16)
    return Embedder(loaded, batch_size)
