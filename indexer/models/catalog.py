"""The embedding models people pick, with what each costs here and how well it retrieves: `clipdex models`.

Quality is published, not measured here (no real weights offline): ImageNet-1k zero-shot top-1 and MSCOCO
text-to-image recall@1 (5k test set) from open_clip's results tables (docs/openclip_classification_results.csv
and docs/openclip_retrieval_results.csv), and for SigLIP 2 from its paper (arXiv 2502.14786) as its model cards
quote it; None where no figure was at hand. Cost is measured: bench/models.py builds each architecture with
random weights (the same compute and memory as the real ones), runs it as `clipdex index` does on a CPU (ONNX
Runtime, fp32) and writes catalog_measured.json beside this file, with the CPU it ran on.
"""

import json
from dataclasses import dataclass, field
from pathlib import Path

MEASURED_FILE = Path(__file__).with_name("catalog_measured.json")

# Transformer shapes (hidden size, layers, heads, MLP width) the entries share.
B = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
L = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096)
SO400M = dict(hidden_size=1152, num_hidden_layers=27, num_attention_heads=16, intermediate_size=4304)
CLIP_B_TEXT = dict(hidden_size=512, num_hidden_layers=12, num_attention_heads=8, intermediate_size=2048)


@dataclass(frozen=True)
class CatalogModel:
    """One model to choose: what it is, its published quality, and how bench/models.py rebuilds its architecture."""

    id: str  # hub id: `clipdex index --model ID`
    family: str
    dim: int
    image: str  # the input it sees
    languages: str
    imagenet: float | None  # zero-shot top-1, %
    coco: float | None  # MSCOCO text-to-image recall@1, %
    kind: str  # the transformers model: "clip", "siglip" or "siglip2" (NaFlex)
    vision: dict
    text: dict
    vocab_size: int
    image_size: int = 224  # fixed-resolution models
    patch_size: int = 16
    max_patches: int = 0  # NaFlex models
    extra: dict = field(default_factory=dict)  # further config (CLIP's projection width)


CATALOG = (
    CatalogModel("openai/clip-vit-base-patch32", "CLIP", 512, "224 px, centre crop", "English", 63.3, 30.4,
                 "clip", B, CLIP_B_TEXT, 49408, patch_size=32, extra={"projection_dim": 512}),
    CatalogModel("openai/clip-vit-base-patch16", "CLIP", 512, "224 px, centre crop", "English", 68.3, 33.1,
                 "clip", B, CLIP_B_TEXT, 49408, extra={"projection_dim": 512}),
    CatalogModel("openai/clip-vit-large-patch14", "CLIP", 768, "224 px, centre crop", "English", 75.5, 36.5,
                 "clip", L, B, 49408, patch_size=14, extra={"projection_dim": 768}),
    CatalogModel("google/siglip-base-patch16-224", "SigLIP", 768, "224 px, squashed", "English", 76.0, 47.8,
                 "siglip", B, B, 32000),
    CatalogModel("google/siglip-base-patch16-256-multilingual", "SigLIP", 768, "256 px, squashed", "multilingual",
                 75.1, 44.9, "siglip", B, B, 250000, image_size=256),
    CatalogModel("google/siglip-so400m-patch14-384", "SigLIP", 1152, "384 px, squashed", "English", 83.1, 54.2,
                 "siglip", SO400M, SO400M, 32000, image_size=384, patch_size=14),
    CatalogModel("google/siglip2-base-patch16-224", "SigLIP 2", 768, "224 px, squashed", "multilingual", 78.2, 52.1,
                 "siglip", B, B, 256000),
    CatalogModel("google/siglip2-base-patch16-naflex", "SigLIP 2 NaFlex", 768, "<= 256 patches, aspect kept",
                 "multilingual", None, None, "siglip2", B, B, 256000, max_patches=256),
    CatalogModel("google/siglip2-so400m-patch16-384", "SigLIP 2", 1152, "384 px, squashed", "multilingual", 84.1,
                 None, "siglip", SO400M, SO400M, 256000, image_size=384),
    CatalogModel("google/siglip2-so400m-patch16-naflex", "SigLIP 2 NaFlex", 1152, "<= 256 patches, aspect kept",
                 "multilingual", None, None, "siglip2", SO400M, SO400M, 256000, max_patches=256),
)  # fmt: skip


def model_config(entry: CatalogModel):
    """The transformers config of `entry`'s architecture (no weights), as bench/models.py builds it."""
    from transformers import CLIPConfig, Siglip2Config, SiglipConfig

    text = dict(entry.text, vocab_size=entry.vocab_size)
    vision = dict(entry.vision, patch_size=entry.patch_size)
    if entry.kind == "clip":
        text_config = dict(text, max_position_embeddings=77, bos_token_id=2, eos_token_id=3, pad_token_id=0)
        return CLIPConfig(
            text_config=text_config, vision_config=dict(vision, image_size=entry.image_size), **entry.extra
        )
    text_config = dict(text, max_position_embeddings=64, pad_token_id=0, eos_token_id=1)
    if entry.kind == "siglip":
        return SiglipConfig(text_config=text_config, vision_config=dict(vision, image_size=entry.image_size))
    return Siglip2Config(text_config=text_config, vision_config=dict(vision, num_patches=entry.max_patches))


def measured() -> dict:
    """bench/models.py's figures: {"cpu": ..., "date": ..., "models": {id: {params_m, memory_mb, images_per_s}}}."""
    try:
        return json.loads(MEASURED_FILE.read_text())
    except (OSError, ValueError):
        return {"models": {}}
