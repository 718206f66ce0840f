"""One settings object: CLI flags override its fields, CLIPDEX_* environment variables set them."""

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BeforeValidator, ByteSize, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_MODEL = "openai/clip-vit-base-patch32"
DEFAULT_VLM = "Salesforce/blip2-opt-2.7b"
# How a VLM's or captioner's weights are stored (indexer/models/generative.py): int8 through Quanto (CPU or CUDA),
# 4bit / 8bit through bitsandbytes (CUDA only).
Quantize = Literal["none", "int8", "4bit", "8bit"]
# Its attention kernel; "auto": flash_attention_2 on CUDA with the flash-attn package where the model has it,
# else sdpa where the model has it, else eager.
Attention = Literal["auto", "sdpa", "eager", "flash_attention_2"]
# The CPU runtime of the embedding model: measured (auto) or named.
Runtime = Literal["auto", "onnx", "openvino", "openvino-bf16", "onnx-int8", "torch"]


def cpu_count() -> int:
    """Cores this process may run on (a container or taskset may allow fewer than the machine has)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def default_store() -> Path:
    data_home = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return data_home / "clipdex" / "store"


def default_cache() -> Path:
    cache_home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache_home / "clipdex"


class Settings(BaseSettings):
    """clipdex configuration; every field can be set as CLIPDEX_<FIELD>."""

    model_config = SettingsConfigDict(env_prefix="CLIPDEX_")

    # A store directory (the embedded SQLite + FAISS store) or a postgresql:// database URL.
    store: Annotated[str, BeforeValidator(lambda v: os.fspath(v) if isinstance(v, os.PathLike) else v)] = str(
        default_store()
    )
    # None: the model a store was built with, or DEFAULT_MODEL for a new store.
    model: str | None = None
    # A text encoder for queries other than the store model's own, sharing its space (indexer/models/paired_text.py):
    # sentence-transformers/clip-ViT-B-32-multilingual-v1 for clip-ViT-B-32 stores. None: the model's own.
    text_model: str | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # None: 256 on CUDA, 16 on CPU (enough to keep matrix kernels efficient, small enough for RAM).
    batch_size: int | None = None
    # What runs the embedding model on CPU (indexer/models/runtimes.py). "auto": on a model's first use on a CPU,
    # ONNX Runtime and OpenVINO (fp32, and bf16 where the CPU has it) are timed on its towers and the fastest that
    # agrees with fp32 is used from then on (indexer/models/runtime_choice.py); or one runtime by name, "onnx-int8"
    # being opt-in and approximate. On CUDA the model runs in torch whatever this says.
    runtime: Runtime = "auto"
    # The older name of `runtime` (CLIPDEX_CPU_RUNTIME), still honoured where `runtime` is not set.
    cpu_runtime: Literal["onnx", "torch", "onnx-int8"] | None = None
    # Decode worker processes; None: one per core.
    workers: int | None = None
    # Index on a Ray cluster (indexer/runners/ray.py): its address ("auto", "host:6379"), or
    # "default" for Ray's own choice (RAY_ADDRESS, else the cluster this machine runs, else a new one here).
    ray: str | None = None
    # Rows are committed (and made crash-safe) at least this often.
    commit_every: int = 512
    # Seconds a writer (index, caption, tag) waits for another writer of the same store before giving up.
    lock_timeout: float = 3600.0
    # Images with more pixels than this are skipped instead of decoded (decompression-bomb guard).
    max_pixels: int = 200_000_000
    # Memory one decode worker may take beyond its start (bytes; a 200 MP image needs about 1.2 GB), and the
    # seconds one file may take; past either the file is skipped as `too large` or `timeout`.
    decode_memory: int = 3 * 2**30
    decode_timeout: float = 60.0
    # Videos (indexer/video.py): a frame is kept per scene and at least every `video_max_gap` seconds, at most
    # `video_max_frames` per video (a longer video spreads them); a stream is read for `video_max_seconds` at most
    # (an endless one is cut off there) and one video may take `video_timeout` seconds to decode.
    video_max_frames: int = 64
    video_max_gap: float = 10.0
    video_max_seconds: float = 4 * 3600.0
    video_timeout: float = 300.0
    # RAM the search index may take (bytes, or "2GB", "512MiB"): it picks the most accurate index that fits
    # (indexer/store/ann.py). 1 GiB holds 10 million 512-d vectors as 4-bit codes re-ranked from disk.
    index_memory: ByteSize = ByteSize(2**30)
    cache_dir: Path = default_cache()
    # When set, every API request must carry it in the X-API-Key header (`clipdex serve`).
    api_key: str | None = None

    @property
    def embedding_runtime(self) -> str:
        """`runtime`, or the older `cpu_runtime` where only that one was set."""
        if "runtime" not in self.model_fields_set and self.cpu_runtime is not None:
            return self.cpu_runtime
        return self.runtime

    @field_validator("api_key")
    @classmethod
    def no_empty_key(cls, key: str | None) -> str | None:
        """An empty CLIPDEX_API_KEY= means no key, so `serve` warns as it does when none is set."""
        return key or None

    # Vision-language model for follow-up questions on hits (search/vlm.py): hub id or local directory.
    vlm: str = DEFAULT_VLM
    # "auto": float16 on CUDA, float32 on CPU.
    vlm_dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    # 4-bit / 8-bit weights through bitsandbytes (CUDA only): a 7B LLaVA in ~4 GB instead of ~14 GB; int8
    # through Quanto on CPU or CUDA.
    vlm_quantize: Quantize = "none"
    vlm_attn: Attention = "auto"
    vlm_max_new_tokens: int = 128
    # 0 decodes greedily (the same answer every time); above 0 samples with this temperature and top-p.
    vlm_temperature: float = 0.0
    vlm_top_p: float = 1.0

    # Captioning (clipdex caption, clipdex index --caption). None: Salesforce/blip2-opt-2.7b on CUDA,
    # Salesforce/blip-image-captioning-base on CPU; any BLIP or BLIP-2 hub id or directory.
    caption_model: str | None = None
    caption_quantize: Quantize = "none"
    caption_attn: Attention = "auto"
    # Text reading (indexer/enrich/ocr.py): None is the wheel's PP-OCRv4 recognizer; else a rec .onnx and its
    # characters.
    ocr_model: str | None = None
    ocr_keys: str | None = None
    # None: the family's default ("a photography of" for BLIP, a "Question: ... Answer:" for BLIP-2).
    caption_prompt: str | None = None
    caption_max_new_tokens: int = 30
    caption_beams: int = 3
    # None: 16 on CUDA, 4 on CPU.
    caption_batch_size: int | None = None
