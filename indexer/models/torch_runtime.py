"""The embedding towers run by the torch model itself: the runtime on CUDA, and the CPU fallback."""

import numpy as np
import torch

from indexer.models.embedder import Embedder
from indexer.models.loading import LoadedModel


def features(out) -> torch.Tensor:
    """transformers 5 returns a model output whose pooler_output holds the projected features."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


class TorchEmbedder(Embedder):
    """The transformers model in torch (fp16 on CUDA, fp32 on CPU) with its transformers tokenizer."""

    runtime = "torch"

    def __init__(self, loaded: LoadedModel, batch_size: int):
        super().__init__(loaded.info, loaded.tokenizer, batch_size)
        self.loaded = loaded

    @torch.inference_mode()
    def image_features(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        tensors = {k: torch.from_numpy(v).to(self.loaded.device) for k, v in inputs.items()}
        tensors["pixel_values"] = tensors["pixel_values"].to(self.loaded.dtype)
        return features(self.loaded.model.get_image_features(**tensors)).float().cpu().numpy()

    @torch.inference_mode()
    def text_features(self, tokens: dict[str, np.ndarray]) -> np.ndarray:
        inputs = {k: torch.from_numpy(v).to(self.loaded.device) for k, v in tokens.items()}
        return features(self.loaded.model.get_text_features(**inputs)).float().cpu().numpy()
