"""Build CLIP and SigLIP models with random weights and freshly made tokenizers, saved like hub checkpoints.

Tests use tiny ones; benchmarks use full-size architectures (ViT-B/32), which cost the same compute as
real weights. Both are saved with `save_pretrained` and loaded back through clipdex's real loading code.
"""

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    PreTrainedTokenizerFast,
    SiglipConfig,
    SiglipImageProcessor,
    SiglipModel,
)

CORPUS = [
    "a photo of a dog on a beach",
    "a red car parked in the street at night",
    "a cat sleeping on a sofa",
    "sunset over the mountains and a lake",
    "a document with text and a table",
    "wedding couple dancing, bride and groom",
    "a plate of food: pasta, salad and bread",
    "product shot of a white sneaker",
]
BOS, EOS, PAD, UNK = "<|startoftext|>", "<|endoftext|>", "<pad>", "<unk>"

TINY_TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
TINY_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
VIT_B32_TEXT = dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8)
VIT_B32_VISION = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12)


def make_tokenizer(vocab_size: int = 300, add_bos: bool = True) -> PreTrainedTokenizerFast:
    """A lower-casing BPE tokenizer trained on a few sentences, with CLIP-style start/end tokens."""
    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[PAD, UNK, BOS, EOS])
    tok.train_from_iterator(CORPUS * 4, trainer)
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{BOS} $A {EOS}",
            special_tokens=[(BOS, tok.token_to_id(BOS)), (EOS, tok.token_to_id(EOS))],
        )
    else:  # SigLIP appends only an end token
        tok.post_processor = processors.TemplateProcessing(
            single=f"$A {EOS}", special_tokens=[(EOS, tok.token_to_id(EOS))]
        )
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK)


def save_clip(out: Path, size: str = "tiny", seed: int = 0) -> Path:
    """Save a random-weight CLIP (tiny, or ViT-B/32 sized) with tokenizer and image processor to `out`."""
    torch.manual_seed(seed)
    tokenizer = make_tokenizer()
    text, vision, proj = (TINY_TEXT, TINY_VISION, 16) if size == "tiny" else (VIT_B32_TEXT, VIT_B32_VISION, 512)
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            max_position_embeddings=77,
            eos_token_id=tokenizer.eos_token_id,
            bos_token_id=tokenizer.bos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            **text,
        ),
        vision_config=dict(image_size=224, patch_size=32, **vision),
        projection_dim=proj,
    )
    CLIPModel(config).eval().save_pretrained(out)
    tokenizer.save_pretrained(out)
    CLIPImageProcessor().save_pretrained(out)
    return out


def save_siglip(out: Path, seed: int = 0) -> Path:
    """Save a tiny random-weight SigLIP with tokenizer and image processor to `out`."""
    torch.manual_seed(seed)
    tokenizer = make_tokenizer(add_bos=False)
    config = SiglipConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            max_position_embeddings=16,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            **TINY_TEXT,
        ),
        vision_config=dict(image_size=224, patch_size=32, **TINY_VISION),
    )
    SiglipModel(config).eval().save_pretrained(out)
    tokenizer.save_pretrained(out)
    SiglipImageProcessor(size={"height": 224, "width": 224}).save_pretrained(out)
    return out


def save_sentence_transformers_clip(out: Path, seed: int = 0) -> Path:
    """Save a tiny CLIP in the sentence-transformers layout (modules.json + 0_CLIPModel/)."""
    out.mkdir(parents=True, exist_ok=True)
    save_clip(out / "0_CLIPModel", seed=seed)
    modules = [{"idx": 0, "name": "0", "path": "0_CLIPModel", "type": "sentence_transformers.models.CLIPModel"}]
    (out / "modules.json").write_text(json.dumps(modules))
    return out
