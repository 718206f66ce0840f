"""Pick the runtime that embeds for a model and the settings: torch on CUDA, ONNX Runtime (or torch) on CPU."""

import logging

from indexer.models.embedder import Embedder
from indexer.models.loading import canonical_name, resolve_device
from indexer.settings import Settings

log = logging.getLogger(__name__)


def make_embedder(name: str, settings: Settings, serving: bool = False) -> Embedder:
    """An embedder for `name`: torch fp16 on CUDA; on CPU the configured runtime, torch if ONNX Runtime fails.

    The ONNX path imports neither torch nor transformers once the model's export is cached. `serving`: it
    will answer many text queries (a server), so start-up may take longer for faster answers.
    """
    name, device = canonical_name(name), resolve_device(settings.device)
    if device == "cpu" and settings.cpu_runtime != "torch":
        from indexer.models.onnx_runtime import OnnxEmbedder, OnnxExportError, find_or_export

        try:
            folder = find_or_export(name, settings.cache_dir)
            quantize = settings.cpu_runtime == "onnx-int8"
            return OnnxEmbedder(folder, settings.batch_size or 16, quantize=quantize, serving=serving)
        except OnnxExportError as e:
            log.warning("ONNX Runtime is unavailable for %s (%s); embedding with torch instead", name, e)
    return torch_embedder(name, device, settings)


def torch_embedder(name: str, device: str, settings: Settings) -> Embedder:
    from indexer.models.loading import load_model
    from indexer.models.torch_runtime import TorchEmbedder

    loaded = load_model(name, device)
    return TorchEmbedder(loaded, settings.batch_size or (256 if loaded.device.type == "cuda" else 16))
