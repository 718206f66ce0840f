"""Loading the generative models (BLIP and BLIP-2 captioners, VLMs): dtype, quantized weights, attention kernel.

One loader for both, so `--quantize` and `--attn` mean the same to `clipdex caption` as to `clipdex ask`:
- int8: Quanto (optimum-quanto) through transformers' QuantoConfig, on CPU or CUDA;
- 4bit / 8bit: bitsandbytes, CUDA only;
- attention: sdpa, eager or flash_attention_2 (CUDA and the flash-attn package); "auto" takes flash-attention 2
  where it can run, else leaves the choice to transformers: sdpa where the model has it, else eager.
"""

import importlib.util
from typing import TYPE_CHECKING

from indexer.errors import ModelLoadError

if TYPE_CHECKING:
    import torch


def installed(module: str) -> bool:
    """Whether `module` could be imported, without importing it (a dotted name whose parent is missing is not)."""
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def resolve_dtype(device: "torch.device", dtype: str) -> "torch.dtype":
    """A dtype name as torch's; "auto" is float16 on CUDA, float32 on CPU."""
    import torch

    if dtype != "auto":
        return getattr(torch, dtype)
    return torch.float16 if device.type == "cuda" else torch.float32


def quantization_kwargs(device: "torch.device", dtype: "torch.dtype", quantize: str) -> dict:
    """from_pretrained arguments for int8 (Quanto), 4-bit or 8-bit (bitsandbytes) weights; none for "none"."""
    if quantize == "none":
        return {}
    if quantize == "int8":
        # transformers' Quanto integration also needs accelerate; the quanto extra installs both.
        if not (installed("optimum.quanto") and installed("accelerate")):
            raise ModelLoadError("int8 loading needs optimum-quanto and accelerate: pip install 'clipdex[quanto]'")
        from transformers import QuantoConfig

        config = QuantoConfig(weights="int8")
    elif quantize in ("4bit", "8bit"):
        if device.type != "cuda":
            raise ModelLoadError(f"{quantize} loading needs a CUDA GPU (bitsandbytes); here use int8 or none")
        if not (installed("bitsandbytes") and installed("accelerate")):
            raise ModelLoadError(f"{quantize} loading needs bitsandbytes: pip install 'clipdex[quantize]'")
        from transformers import BitsAndBytesConfig

        config = BitsAndBytesConfig(load_in_8bit=True)
        if quantize == "4bit":
            config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=dtype, bnb_4bit_quant_type="nf4")
    else:
        raise ModelLoadError(f"unknown quantization {quantize!r}; use none, int8, 4bit or 8bit")
    if device.type == "cpu":
        return {"quantization_config": config}
    # Quantized while loading, straight onto the GPU: the full-precision weights never sit there whole.
    return {"quantization_config": config, "device_map": {"": device.index or 0}}


def attention_kwargs(model_class: type, device: "torch.device", dtype: "torch.dtype", attn: str) -> dict:
    """from_pretrained's attn_implementation for `attn`; an explicit kernel the model or machine lacks is an error."""
    import torch

    flash_runs = device.type == "cuda" and installed("flash_attn")
    if attn == "auto":
        # flash-attention computes in half precision only
        if flash_runs and model_class._supports_flash_attn and dtype in (torch.float16, torch.bfloat16):
            return {"attn_implementation": "flash_attention_2"}
        return {}  # transformers' default: sdpa where every part of the model has it, else eager
    if attn == "flash_attention_2":
        if device.type != "cuda":
            raise ModelLoadError(
                "the flash_attention_2 attention kernel needs a CUDA GPU; here use sdpa, eager or auto"
            )
        if not flash_runs:
            raise ModelLoadError(
                "the flash_attention_2 attention kernel needs the flash-attn package: pip install flash-attn"
            )
    supported = {
        "eager": True,
        "sdpa": model_class._supports_sdpa,
        "flash_attention_2": model_class._supports_flash_attn,
    }
    if attn not in supported:
        raise ModelLoadError(f"unknown attention {attn!r}; use auto, sdpa, eager or flash_attention_2")
    if not supported[attn]:
        raise ModelLoadError(f"{model_class.__name__} has no {attn} attention; use the auto or eager attention kernel")
    return {"attn_implementation": attn}


def load_pretrained(
    model_class: type,
    name: str,
    device: "torch.device",
    dtype: str = "auto",
    quantize: str = "none",
    attn: str = "auto",
):
    """`model_class.from_pretrained(name)` in eval mode on `device`, with these weights and attention kernel.

    `model_class` is a concrete transformers class (not an Auto one), whose flags say which attention it has.
    Missing files and bad configs raise transformers' OSError / ValueError for the caller to word.
    """
    torch_dtype = resolve_dtype(device, dtype)
    kwargs = {
        "dtype": torch_dtype,
        **quantization_kwargs(device, torch_dtype, quantize),
        **attention_kwargs(model_class, device, torch_dtype, attn),
    }
    try:
        model = model_class.from_pretrained(name, **kwargs)
    except Exception as e:
        if quantize == "none" or isinstance(e, OSError | ValueError):
            raise
        # anything else is the quantizer failing on this model's layers
        message = f"{name} cannot be loaded with {quantize} weights ({type(e).__name__}: {e}); load it unquantized"
        raise ModelLoadError(message) from e
    if "device_map" not in kwargs:  # else already placed while loading
        model.to(device)
    return model.eval()
