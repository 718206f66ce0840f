"""Run an embedding model's image and text towers in ONNX Runtime: exported on first use, cached on disk.

On CPU, ONNX Runtime with its transformer graph optimizer (fused attention) beats torch eager by 1.3x to
2x on this project's 2-core machine (bench/indexing.py, README.md "Performance"). The towers are exported
once per model and weights, to `cache_dir/onnx/<key>/`; the key changes with the model name, its weights
and the exporting versions.
"""

import hashlib
import json
import logging
import os
import shutil
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from indexer.embed import Embedder, features
from indexer.models import LoadedModel
from indexer.settings import cpu_count

log = logging.getLogger(__name__)

EXPORT_VERSION = 2  # bump when the exported graphs change, so stale caches are not reused
OPSET = 17
LARGE_MODEL_BYTES = 1_500_000_000  # protobuf caps a file at 2 GB: larger models keep their weights beside it


class OnnxExportError(Exception):
    """The model could not be exported to, optimised for, or loaded by ONNX Runtime."""


class ImageTower(torch.nn.Module):
    """pixel_values -> projected image features, as `Embedder.image_features` computes them."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixel_values):
        return features(self.model.get_image_features(pixel_values=pixel_values))


class TextTower(torch.nn.Module):
    """input_ids [, attention_mask] -> projected text features."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask=None):
        return features(self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask))


def model_key(loaded: LoadedModel) -> str:
    """A short hash of the model name, config, a strided sample of every weight tensor, and the tool versions.

    Sampling (about a thousand values per tensor) costs milliseconds where hashing 600 MB of weights costs
    seconds on every start, and any retraining or fine-tune changes the sampled values.
    """
    import onnxruntime

    h = hashlib.blake2b(digest_size=12)
    versions = (EXPORT_VERSION, OPSET, torch.__version__, onnxruntime.__version__)
    h.update(json.dumps([loaded.name, *map(str, versions)]).encode())
    h.update(loaded.model.config.to_json_string(use_diff=False).encode())
    for name, tensor in sorted(loaded.model.state_dict().items()):
        flat = tensor.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // 1024)].float().cpu().numpy()
        h.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
        h.update(sample.tobytes())
    return h.hexdigest()


def export_towers(loaded: LoadedModel, folder: Path) -> None:
    """Export and optimise image/model.onnx and text/model.onnx into `folder`, atomically (temp folder, rename).

    Each tower has its own folder: a model over 2 GB keeps its weights in files beside the graph.
    """
    tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    for tower in ("image", "text"):
        (tmp / tower).mkdir(parents=True)
    model = loaded.model
    attn = model.config._attn_implementation
    # ONNX Runtime's optimizer fuses the eager attention pattern into one Attention op; SDPA's export it cannot.
    model.set_attn_implementation("eager")
    try:
        height, width = loaded.prep.out_size
        tokens = loaded.tokenizer(
            ["a photo of a dog", "a cat"],
            padding="max_length" if loaded.family == "siglip" else True,
            truncation=True,
            max_length=loaded.text_max_length,
            return_tensors="pt",
        )
        text_inputs = ("input_ids",) if loaded.family == "siglip" else ("input_ids", "attention_mask")
        with warnings.catch_warnings(), torch.inference_mode():
            warnings.simplefilter("ignore")  # tracer warnings about shape checks baked in as constants
            pixels = (torch.zeros(2, 3, height, width),)
            export(ImageTower(model), pixels, ("pixel_values",), tmp / "image" / "raw.onnx")
            args = tuple(tokens[k] for k in text_inputs)
            export(TextTower(model), args, text_inputs, tmp / "text" / "raw.onnx")
    finally:
        model.set_attn_implementation(attn)
    vision, text = model.config.vision_config, model.config.text_config
    optimize(tmp / "image", vision.num_attention_heads, vision.hidden_size)
    optimize(tmp / "text", text.num_attention_heads, text.hidden_size)
    try:
        tmp.rename(folder)
    except OSError:  # another process finished the same export first: theirs is as good as ours
        shutil.rmtree(tmp, ignore_errors=True)


def export(module: torch.nn.Module, args: tuple, input_names: tuple, path: Path) -> None:
    """TorchScript-trace `module` to ONNX with a dynamic batch axis (and sequence axis for tokens)."""
    axes = {name: {0: "batch"} if name == "pixel_values" else {0: "batch", 1: "sequence"} for name in input_names}
    torch.onnx.export(
        module,
        args,
        str(path),
        input_names=list(input_names),
        output_names=["features"],
        dynamic_axes={**axes, "features": {0: "batch"}},
        opset_version=OPSET,
        dynamo=False,  # the TorchScript exporter needs no onnxscript and exports these towers in seconds
    )


def optimize(tower: Path, num_heads: int, hidden_size: int) -> None:
    """raw.onnx -> model.onnx with attention, LayerNorm and GELU fused by onnxruntime.transformers' optimizer.

    The optimizer is a best-effort speed-up: if it fails, the raw graph, still correct, is used as it is.
    """
    from onnxruntime.transformers.optimizer import optimize_model

    raw, out = tower / "raw.onnx", tower / "model.onnx"
    large = sum(p.stat().st_size for p in tower.iterdir()) > LARGE_MODEL_BYTES
    try:
        optimized = optimize_model(str(raw), model_type="clip", num_heads=num_heads, hidden_size=hidden_size)
        optimized.save_model_to_file(str(out), use_external_data_format=large)
        raw.unlink()
    except Exception as e:
        log.warning("ONNX graph optimizer failed on the %s tower (%s); using the unfused graph", tower.name, e)
        raw.rename(out)


def quantize_int8(fp32: Path, int8: Path) -> None:
    """Dynamic int8 quantization of the weights (activations quantized per batch at run time)."""
    from onnx import TensorProto
    from onnxruntime.quantization import QuantType, quantize_dynamic

    tmp = int8.with_name(f"{int8.name}.tmp-{os.getpid()}")
    # Shape inference cannot type the fused (com.microsoft) ops' outputs: they are all float32.
    extra = {"DefaultTensorType": TensorProto.FLOAT}
    logging.disable(logging.WARNING)  # the quantizer logs every tensor it cannot type to the root logger
    try:
        quantize_dynamic(str(fp32), str(tmp), weight_type=QuantType.QInt8, extra_options=extra)
    finally:
        logging.disable(logging.NOTSET)
    os.replace(tmp, int8)


def open_session(path: Path, threads: int):
    """An ONNX Runtime CPU session with every graph optimisation on and `threads` intra-op threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # Decode workers share these cores: idle inference threads must sleep, not spin.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OnnxEmbedder(Embedder):
    """The model's towers in ONNX Runtime; `quantize` runs the image tower in dynamic int8 (opt-in, approximate).

    The text tower stays fp32 either way: queries come a few at a time, so exact text vectors cost little.
    """

    def __init__(self, loaded: LoadedModel, batch_size: int, cache_dir: Path, quantize: bool = False):
        super().__init__(loaded, batch_size)
        self.runtime = "onnx-int8" if quantize else "onnx"
        threads = cpu_count()
        try:
            folder = Path(cache_dir) / "onnx" / model_key(loaded)
            if not folder.exists():
                started = time.perf_counter()
                log.warning("first use of %s on CPU: exporting it to ONNX Runtime (once) into %s", self.name, folder)
                export_towers(loaded, folder)
                log.warning("ONNX export done in %.0f s", time.perf_counter() - started)
            image = folder / "image" / "model.onnx"
            if quantize:
                image = folder / "image" / "model.int8.onnx"
                if not image.exists():
                    quantize_int8(folder / "image" / "model.onnx", image)
            self.image_session = open_session(image, threads)
            self.text_session = open_session(folder / "text" / "model.onnx", threads)
        except Exception as e:  # export, optimisation, quantization or loading: never fatal, torch still works
            raise OnnxExportError(f"{type(e).__name__}: {e}") from e

    def image_features(self, pixel_values: np.ndarray) -> np.ndarray:
        (out,) = self.image_session.run(None, {"pixel_values": pixel_values})
        return out

    def text_features(self, tokens: dict[str, np.ndarray]) -> np.ndarray:
        (out,) = self.text_session.run(None, tokens)
        return out
