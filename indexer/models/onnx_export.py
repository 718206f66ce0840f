"""Export a model's image and text towers from torch to ONNX, once per model and weights.

Runs in its own process (`python -m indexer.models.onnx_export NAME CACHE_DIR`, started by `onnx_runtime.py`),
so the process that indexes or searches never imports torch or holds the torch weights: it loads only the
export. The folder written holds everything inference needs: both graphs, the `tokenizers` tokenizer and
the model's facts (`model.json`).
"""

import ctypes
import gc
import json
import logging
import os
import shutil
import sys
import warnings
from pathlib import Path

import torch

from indexer.errors import ModelLoadError
from indexer.models.embedder import image_inputs
from indexer.models.loading import LoadedModel, load_model
from indexer.models.onnx_runtime import (
    EXPORT_VERSION,
    MODEL_FILE,
    MODEL_LOAD_FAILED,
    OPSET,
    TOKENIZER_FILE,
    check_images,
    export_folder,
)
from indexer.models.torch_runtime import features

log = logging.getLogger(__name__)


class ImageTower(torch.nn.Module):
    """pixel_values [, NaFlex's pixel_attention_mask, spatial_shapes] -> projected image features."""

    def __init__(self, model, input_names: tuple[str, ...]):
        super().__init__()
        self.model = model
        self.input_names = input_names

    def forward(self, *inputs):
        return features(self.model.get_image_features(**dict(zip(self.input_names, inputs, strict=True))))


class TextTower(torch.nn.Module):
    """input_ids [, attention_mask] -> projected text features."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask=None):
        return features(self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask))


def export_towers(loaded: LoadedModel, folder: Path) -> None:
    """Write image/model.onnx, text/model.onnx, the tokenizer and model.json into `folder`, atomically.

    Each tower has its own folder, its weights in a file beside the graph. The towers are exported and
    optimised one after the other, with freed memory handed back in between, so only one graph is held at
    a time (ViT-B/32: 3.5 GB peak when both were held, under 2 GB now; bench/indexing.py prints it).
    """
    tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    for tower in ("image", "text"):
        (tmp / tower).mkdir(parents=True)
    model, info = loaded.model, loaded.info
    attn = model.config._attn_implementation
    # ONNX Runtime's optimizer fuses the eager attention pattern into one Attention op; SDPA's export it cannot.
    model.set_attn_implementation("eager")
    try:
        # Two images of different shapes: a NaFlex graph must not bake one patch grid in.
        images = {k: torch.from_numpy(v) for k, v in image_inputs(check_images(info.prep)[:2], info.prep).items()}
        tokens = loaded.tokenizer(
            ["a photo of a dog", "a cat"],
            padding="max_length" if info.family == "siglip" else True,
            truncation=True,
            max_length=info.text_max_length,
            return_tensors="pt",
        )
        vision, text = model.config.vision_config, model.config.text_config
        with warnings.catch_warnings(), torch.inference_mode():
            warnings.simplefilter("ignore")  # tracer warnings about shape checks baked in as constants
            names = tuple(images)
            export(ImageTower(model, names), tuple(images.values()), names, tmp / "image", image=True)
            release_memory()
            optimize(tmp / "image", vision.num_attention_heads, vision.hidden_size)
            release_memory()
            args = tuple(tokens[k] for k in info.text_inputs)
            export(TextTower(model), args, info.text_inputs, tmp / "text", image=False)
            release_memory()
            optimize(tmp / "text", text.num_attention_heads, text.hidden_size)
    finally:
        model.set_attn_implementation(attn)
    backend = getattr(loaded.tokenizer, "backend_tokenizer", None)
    if backend is not None:
        backend.save(str(tmp / TOKENIZER_FILE))
    meta = {
        "export_version": EXPORT_VERSION,
        "info": info.to_json(),
        # None: `tokenizers` cannot express this tokenizer (SigLIP's SentencePiece one); transformers loads it.
        "tokenizer": TOKENIZER_FILE if backend is not None else None,
    }
    (tmp / MODEL_FILE).write_text(json.dumps(meta, indent=1))
    try:
        tmp.rename(folder)
    except OSError:  # another process finished the same export first: theirs is as good as ours
        shutil.rmtree(tmp, ignore_errors=True)


def release_memory() -> None:
    """Collect garbage and hand freed heap back to the OS, so the next stage's peak does not stack on this one's."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the allocator keeps its own counsel
        pass


def export(module: torch.nn.Module, args: tuple, input_names: tuple, tower: Path, image: bool) -> None:
    """TorchScript-trace `module` to tower/raw.onnx with a dynamic batch axis (and sequence axis for tokens)."""
    axes = {name: {0: "batch"} if image else {0: "batch", 1: "sequence"} for name in input_names}
    torch.onnx.export(
        module,
        args,
        str(tower / "raw.onnx"),
        input_names=list(input_names),
        output_names=["features"],
        dynamic_axes={**axes, "features": {0: "batch"}},
        opset_version=OPSET,
        dynamo=False,  # the TorchScript exporter needs no onnxscript and exports these towers in seconds
    )


def optimize(tower: Path, num_heads: int, hidden_size: int) -> None:
    """raw.onnx -> model.onnx with attention, LayerNorm and GELU fused by onnxruntime.transformers' optimizer.

    Memory: opt_level=0 runs only the Python fusions, no ONNX Runtime session (sessions apply their own
    graph optimisations when they open); shape inference, which copies the whole model twice, is off (the
    same ops fuse without it: 12 Attention, 23 SkipLayerNorm on ViT-B/32); the weights are saved beside the
    graph, not serialised inside it. ViT-B/32 image tower: 2.3 GB -> 0.8 GB. If the optimizer fails, the
    raw graph, still correct, is used as it is.
    """
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    raw, out = tower / "raw.onnx", tower / "model.onnx"
    options = FusionOptions("clip")
    options.enable_shape_inference = False
    try:
        optimized = optimize_model(str(raw), "clip", num_heads, hidden_size, optimization_options=options, opt_level=0)
        optimized.save_model_to_file(str(out), use_external_data_format=True)
        for path in tower.glob("raw.onnx*"):
            path.unlink()
    except Exception as e:
        log.warning("ONNX graph optimizer failed on the %s tower (%s); using the unfused graph", tower.name, e)
        raw.rename(out)


def main() -> None:
    """`python -m indexer.models.onnx_export NAME CACHE_DIR`: export NAME, print the export folder on stdout."""
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    name, cache_dir = sys.argv[1], Path(sys.argv[2])
    try:
        loaded = load_model(name, "cpu")  # downloads a hub model first, so its files can be keyed
    except ModelLoadError as e:
        sys.exit(f"{MODEL_LOAD_FAILED}{e}")
    folder = export_folder(loaded.info.name, cache_dir)
    if not (folder / MODEL_FILE).exists():
        export_towers(loaded, folder)
    print(folder)  # noqa: T201 - the parent reads the folder from stdout


if __name__ == "__main__":
    main()
