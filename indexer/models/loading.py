"""Load an embedding model by hub id or local directory: CLIP, SigLIP, SigLIP 2, or sentence-transformers CLIP.

SigLIP 2 comes two ways: the fixed-resolution checkpoints (google/siglip2-base-patch16-224, ...) are
`SiglipModel`s with Gemma's tokenizer; the NaFlex ones (google/siglip2-base-patch16-naflex) are
`Siglip2Model`s, whose images keep their aspect ratio as a variable grid of patches (`ImagePrep.max_patches`).

Everything goes through transformers' own `from_pretrained`, so a hub id and a directory made by
`save_pretrained` take exactly the same path (tests rely on this: they save tiny random models).
"""

import importlib.metadata
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from indexer.decode import ImagePrep
from indexer.errors import ModelLoadError

if TYPE_CHECKING:  # torch and transformers take seconds to import: only loading a model pays for them
    import torch
    from transformers import PreTrainedModel

SUPPORTED_FAMILIES = ("clip", "siglip", "siglip2")
SENTENCE_TRANSFORMERS_CLIP = "sentence_transformers.models.CLIPModel"
GEMMA_TOKENIZERS = ("Gemma", "Siglip2")  # the tokenizer classes SigLIP 2 checkpoints name


@dataclass(frozen=True)
class ModelInfo:
    """What feeding a dual encoder and reading its scores takes, without its weights (saved beside an export)."""

    name: str  # as the store records it: a hub id, or an absolute directory path
    family: str  # "clip" or "siglip": decides text padding and how tag scores are calibrated
    dim: int
    prep: ImagePrep
    text_max_length: int
    pad_token_id: int  # what texts are padded with (SigLIP: to text_max_length)
    logit_scale: float  # exp of the model's learned temperature: logits = logit_scale * cosine + logit_bias
    logit_bias: float  # SigLIP's learned bias; 0 for CLIP
    padding_side: str = "right"  # the tokenizer's (Siglip2Tokenizer pads on the left)
    lowercase: bool = False  # SigLIP 2 was trained on lowercased text, and Gemma's tokenizer keeps case

    @property
    def text_inputs(self) -> tuple[str, ...]:
        """The text tower's inputs: SigLIP was trained attending to its padding, so it takes no mask."""
        return ("input_ids",) if self.family == "siglip" else ("input_ids", "attention_mask")

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "ModelInfo":
        p = data["prep"]  # JSON made the tuples lists
        prep = ImagePrep(
            resize_to=tuple(p["resize_to"]),
            crop=tuple(p["crop"]) if p["crop"] else None,
            resample=p["resample"],
            mean=tuple(p["mean"]),
            std=tuple(p["std"]),
            rescale=p["rescale"],
            max_patches=p.get("max_patches", 0),
            patch_size=p.get("patch_size", 0),
        )
        return cls(**{**data, "prep": prep})


@dataclass
class LoadedModel:
    """A dual encoder in torch with its transformers tokenizer."""

    info: ModelInfo
    model: "PreTrainedModel"
    tokenizer: object
    device: "torch.device"
    dtype: "torch.dtype"


def canonical_name(name: str) -> str:
    """Directories are recorded by absolute path; sentence-transformers short names get their org."""
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path.resolve())
    if "/" not in name and name.startswith("clip-"):
        return f"sentence-transformers/{name}"
    return name


def cuda_possible() -> bool:
    """False when no CUDA device can be there (a CPU build of torch, or no NVIDIA device node): no torch import."""
    try:
        version = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return False
    return "+cpu" not in version and any(Path("/dev").glob("nvidia[0-9]*"))


def resolve_device(device: str) -> str:
    """'auto' becomes "cuda" or "cpu" (importing torch only where CUDA is possible at all)."""
    if device != "auto":
        return device
    return pick_device("auto").type if cuda_possible() else "cpu"


def pick_device(device: str) -> "torch.device":
    """'auto' means CUDA when present; asking for CUDA without it is a clear error."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("the cuda device was asked for but torch sees no CUDA device; use the cpu device")
    return torch.device(device)


def find_subfolder(name: str) -> str | None:
    """For a sentence-transformers CLIP model, the folder that holds the transformers CLIP model."""
    modules_file = Path(name) / "modules.json"
    if not modules_file.exists() and not Path(name).is_dir():
        try:
            from huggingface_hub import hf_hub_download

            modules_file = Path(hf_hub_download(name, "modules.json"))
        except Exception:  # no such file in the repo, or the hub is out of reach: a plain model
            return None
    if not modules_file.exists():
        return None
    for module in json.loads(modules_file.read_text()):
        if module.get("type") == SENTENCE_TRANSFORMERS_CLIP:
            return module.get("path") or None
    raise ModelLoadError(f"{name} is a sentence-transformers model but not a CLIP one; use a CLIP or SigLIP model")


def read_image_prep(processor) -> ImagePrep:
    """Turn a transformers image processor's settings into the decode workers' recipe."""
    max_patches = int(getattr(processor, "max_num_patches", 0) or 0)  # Siglip2ImageProcessor: NaFlex
    patch_size = int(getattr(processor, "patch_size", 0) or 0) if max_patches else 0
    size = dict(processor.size or {})
    if max_patches:  # a square of the same patch count, for inputs that need one size (export, checks)
        edge = math.isqrt(max_patches) * patch_size
        resize_to = (edge, edge)
    elif size.get("shortest_edge"):
        resize_to = (int(size["shortest_edge"]), 0)
    else:
        resize_to = (int(size["height"]), int(size["width"]))
    crop = None
    if getattr(processor, "do_center_crop", False):
        crop = (int(processor.crop_size["height"]), int(processor.crop_size["width"]))
    return ImagePrep(
        resize_to=resize_to,
        crop=crop,
        resample=int(processor.resample),
        mean=tuple(float(m) for m in processor.image_mean),
        std=tuple(float(s) for s in processor.image_std),
        rescale=float(processor.rescale_factor) if processor.do_rescale else 1.0,
        max_patches=max_patches,
        patch_size=patch_size,
    )


def embedding_dim(config) -> int:
    """Width of the shared image-text space."""
    if config.model_type == "clip":
        return int(config.projection_dim)
    text = config.text_config
    return int(getattr(text, "projection_size", None) or text.hidden_size)


def is_siglip2(config, tokenizer) -> bool:
    """A SigLIP 2: a Siglip2Model, or a fixed-resolution one (a SiglipModel with Gemma's tokenizer)."""
    return config.model_type == "siglip2" or (
        config.model_type == "siglip" and type(tokenizer).__name__.startswith(GEMMA_TOKENIZERS)
    )


def load_model(name: str, device: str = "auto") -> LoadedModel:
    """Load a CLIP-family dual encoder from the hub or a directory; fp16 on CUDA, fp32 on CPU."""
    import torch
    from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoTokenizer

    name = canonical_name(name)
    torch_device = pick_device(device)
    subfolder = find_subfolder(name) or ""
    try:
        config = AutoConfig.from_pretrained(name, subfolder=subfolder)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"cannot load model {name!r}: {e}") from None
    if config.model_type not in SUPPORTED_FAMILIES:
        raise ModelLoadError(f"{name} is a {config.model_type!r} model; clipdex embeds with CLIP or SigLIP models")
    dtype = torch.float16 if torch_device.type == "cuda" else torch.float32
    try:
        model = AutoModel.from_pretrained(name, subfolder=subfolder, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(name, subfolder=subfolder)
        processor = AutoImageProcessor.from_pretrained(name, subfolder=subfolder)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"cannot load model {name!r}: {e}") from None
    model.eval().to(torch_device)
    siglip = config.model_type.startswith("siglip")
    bias = getattr(model, "logit_bias", None)
    info = ModelInfo(
        name=name,
        family="siglip" if siglip else "clip",
        dim=embedding_dim(config),
        prep=read_image_prep(processor),
        text_max_length=int(config.text_config.max_position_embeddings),
        pad_token_id=int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0),
        logit_scale=float(model.logit_scale.detach().float().exp()),
        logit_bias=float(bias.detach().float()) if siglip and bias is not None else 0.0,
        padding_side=str(getattr(tokenizer, "padding_side", "right")),
        lowercase=is_siglip2(config, tokenizer),
    )
    return LoadedModel(info=info, model=model, tokenizer=tokenizer, device=torch_device, dtype=dtype)
