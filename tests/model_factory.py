"""Build CLIP and SigLIP models with random weights and freshly made tokenizers, saved like hub checkpoints.

Tests use tiny ones; benchmarks use full-size architectures (ViT-B/32), which cost the same compute as
real weights. Both are saved with `save_pretrained` and loaded back through clipdex's real loading code.
"""

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
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


# --- captioners: BLIP (BERT WordPiece tokenizer) and BLIP-2 (tiny OPT with a GPT2-style byte-level BPE) -----

TINY_QFORMER = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
BLIP_DEC = "[DEC]"  # BLIP's decoder start token, added after the BERT vocabulary as in the real checkpoints


def write_bert_vocab(out: Path, size: int) -> Path:
    """A WordPiece vocab.txt: BERT's specials, the corpus words, letters whole and as ## pieces, filled up to `size`."""
    words = sorted({w for line in CORPUS for w in line.replace(",", " ").replace(":", " ").split()})
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [str(d) for d in range(10)]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ",", ".", ":", "?", *words, *letters]
    vocab += [f"##{c}" for c in letters]
    vocab += [f"[unused{i}]" for i in range(size - len(vocab))]
    out.mkdir(parents=True, exist_ok=True)
    path = out / "vocab.txt"
    path.write_text("\n".join(vocab) + "\n")
    return path


def save_blip(out: Path, size: str = "tiny", seed: int = 0, min_new_tokens: int = 3) -> Path:
    """Save a random-weight BLIP captioner (tiny, or blip-image-captioning-base sized) with its processor.

    `min_new_tokens` goes into the saved generation config so random weights never stop at once and
    every caption has some text.
    """
    from transformers import (
        BertTokenizerFast,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
    )

    torch.manual_seed(seed)
    tokenizer = BertTokenizerFast(vocab=str(write_bert_vocab(out / "vocab", 0 if size == "tiny" else 30522)))
    tokenizer.add_special_tokens({"bos_token": BLIP_DEC})
    ids = dict(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        sep_token_id=tokenizer.sep_token_id,
        eos_token_id=tokenizer.sep_token_id,
    )
    if size == "tiny":
        image_size = 64
        config = BlipConfig(
            text_config=dict(max_position_embeddings=64, **ids, **TINY_TEXT),
            vision_config=dict(image_size=image_size, patch_size=16, **TINY_VISION),
            projection_dim=16,
        )
    else:  # BlipConfig's defaults are the blip-image-captioning-base architecture (ViT-B/16 at 384, BERT-base)
        image_size = 384
        config = BlipConfig(text_config=ids)
    model = BlipForConditionalGeneration(config).eval()
    model.generation_config.min_new_tokens = min_new_tokens
    model.save_pretrained(out)
    image_processor = BlipImageProcessor(size={"height": image_size, "width": image_size})
    BlipProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out)
    return out


def make_byte_bpe_tokenizer(vocab_size: int = 300) -> PreTrainedTokenizerFast:
    """A GPT2-style byte-level BPE like OPT's: "</s>" is both start and end token and starts every text."""
    eos, pad, unk = "</s>", "<pad>", "<unk>"
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[pad, eos, unk],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS * 4, trainer)
    tok.post_processor = processors.TemplateProcessing(single=f"{eos} $A", special_tokens=[(eos, tok.token_to_id(eos))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=eos, eos_token=eos, pad_token=pad, unk_token=unk)


OPT_2_7B = dict(
    vocab_size=50272, hidden_size=2560, ffn_dim=10240, word_embed_proj_dim=2560, num_hidden_layers=32,
    num_attention_heads=32, max_position_embeddings=2048,
)  # fmt: skip


def make_blip2(size: str = "tiny", min_new_tokens: int = 3):
    """A random-weight BLIP-2 and its processor: tiny (ViT, Q-Former, tiny OPT), or the blip2-opt-2.7b architecture.

    `min_new_tokens` goes into the generation config so random weights never stop at once. Build the big
    one under `with torch.device("cuda"):` to create its 3.8 billion weights on the GPU.
    """
    from transformers import Blip2Config, Blip2ForConditionalGeneration, Blip2Processor, BlipImageProcessor

    tokenizer = make_byte_bpe_tokenizer()
    num_query_tokens = 4 if size == "tiny" else 32
    image_size = 32 if size == "tiny" else 224
    # The processor adds the "<image>" token the query outputs are placed on; the model must know its id.
    processor = Blip2Processor(
        image_processor=BlipImageProcessor(size={"height": image_size, "width": image_size}),
        tokenizer=tokenizer,
        num_query_tokens=num_query_tokens,
    )
    ids = dict(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    if size == "tiny":
        vision = dict(image_size=image_size, patch_size=16, **TINY_VISION)
        qformer = dict(encoder_hidden_size=TINY_VISION["hidden_size"], **TINY_QFORMER)
        text = dict(
            vocab_size=len(tokenizer),
            hidden_size=32,
            ffn_dim=64,
            word_embed_proj_dim=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=128,
        )
    else:  # Blip2Config's vision and Q-Former defaults are blip2-opt-2.7b's (ViT-g/14, 12-layer Q-Former)
        vision, qformer, text = {}, {}, OPT_2_7B
    config = Blip2Config(
        vision_config=vision,
        qformer_config=qformer,
        text_config=dict(model_type="opt", **text, **ids),
        num_query_tokens=num_query_tokens,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
    )
    model = Blip2ForConditionalGeneration(config).eval()
    model.generation_config.min_new_tokens = min_new_tokens
    return model, processor


def save_blip2(out: Path, seed: int = 0, min_new_tokens: int = 3) -> Path:
    """Save a tiny random-weight BLIP-2 (ViT, Q-Former, tiny OPT) with its processor."""
    torch.manual_seed(seed)
    model, processor = make_blip2("tiny", min_new_tokens)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out
