"""Batched image and text embedding: L2-normalised float32 vectors out, whatever the runtime."""

import logging
from collections.abc import Sequence

import numpy as np
import torch

from indexer.decode import ImagePrep
from indexer.models import LoadedModel, load_model
from indexer.settings import Settings

log = logging.getLogger(__name__)


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
    """Embeds images and texts into the model's shared space with the torch model.

    Subclasses run the same towers in another runtime by overriding `image_features` and `text_features`.
    """

    runtime = "torch"

    def __init__(self, loaded: LoadedModel, batch_size: int):
        self.loaded = loaded
        self.name = loaded.name
        self.dim = loaded.dim
        self.prep = loaded.prep
        self.batch_size = batch_size

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """Embed a batch of uint8 (B, H, W, 3) crops from the decode workers."""
        return l2_normalize(self.image_features(normalize_pixels(pixels, self.prep)))

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts into unit vectors."""
        return l2_normalize(self.text_features(self.tokenize(texts)))

    def tokenize(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """Token ids (and CLIP's attention mask); SigLIP pads to its fixed length and attends to it, as trained."""
        siglip = self.loaded.family == "siglip"
        tokens = self.loaded.tokenizer(
            list(texts),
            padding="max_length" if siglip else True,
            truncation=True,
            max_length=self.loaded.text_max_length,
            return_tensors="np",
        )
        names = ("input_ids",) if siglip else ("input_ids", "attention_mask")
        return {k: np.asarray(tokens[k], dtype=np.int64) for k in names}

    @torch.inference_mode()
    def image_features(self, pixel_values: np.ndarray) -> np.ndarray:
        """Projected, unnormalised image features of normalised float32 (B, 3, H, W) pixels."""
        x = torch.from_numpy(pixel_values).to(self.loaded.device, self.loaded.dtype)
        return features(self.loaded.model.get_image_features(pixel_values=x)).float().cpu().numpy()

    @torch.inference_mode()
    def text_features(self, tokens: dict[str, np.ndarray]) -> np.ndarray:
        """Projected, unnormalised text features of tokenized texts."""
        inputs = {k: torch.from_numpy(v).to(self.loaded.device) for k, v in tokens.items()}
        return features(self.loaded.model.get_text_features(**inputs)).float().cpu().numpy()


def features(out) -> torch.Tensor:
    """transformers 5 returns a model output whose pooler_output holds the projected features."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def make_embedder(name: str, settings: Settings) -> Embedder:
    """Load `name` and wrap it for its device: torch fp16 on CUDA, the configured runtime on CPU."""
    loaded = load_model(name, settings.device)
    batch_size = settings.batch_size or (256 if loaded.device.type == "cuda" else 16)
    if loaded.device.type == "cuda" or settings.cpu_runtime == "torch":
        return Embedder(loaded, batch_size)
    from indexer.onnx_runtime import OnnxEmbedder, OnnxExportError

    try:
        return OnnxEmbedder(loaded, batch_size, settings.cache_dir, quantize=settings.cpu_runtime == "onnx-int8")
    except OnnxExportError as e:
        log.warning("ONNX Runtime is unavailable for %s (%s); embedding with torch instead", loaded.name, e)
        return Embedder(loaded, batch_size)
