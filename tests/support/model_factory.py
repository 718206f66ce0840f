"""Build CLIP and SigLIP models with random weights and freshly made tokenizers, saved like hub checkpoints.

Tests use tiny ones; benchmarks use full-size architectures (ViT-B/32), which cost the same compute as
real weights. Both are saved with `save_pretrained` and loaded back through clipdex's real loading code.
"""

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    BertTokenizerFast,
    Blip2Config,
    Blip2ForConditionalGeneration,
    Blip2Processor,
    BlipConfig,
    BlipForConditionalGeneration,
    BlipForQuestionAnswering,
    BlipImageProcessor,
    BlipProcessor,
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
    Siglip2Config,
    Siglip2ImageProcessorPil,
    Siglip2Model,
    Siglip2Tokenizer,
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
VIT_L14_TEXT = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12)
VIT_L14_VISION = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16)


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
    """Save a random-weight CLIP (tiny, "vit-l-14", or else ViT-B/32 sized) with tokenizer and image processor."""
    torch.manual_seed(seed)
    tokenizer = make_tokenizer()
    text, vision, proj, patch = {
        "tiny": (TINY_TEXT, TINY_VISION, 16, 32),
        "vit-l-14": (VIT_L14_TEXT, VIT_L14_VISION, 768, 14),
    }.get(size, (VIT_B32_TEXT, VIT_B32_VISION, 512, 32))
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            max_position_embeddings=77,
            eos_token_id=tokenizer.eos_token_id,
            bos_token_id=tokenizer.bos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            **text,
        ),
        vision_config=dict(image_size=224, patch_size=patch, **vision),
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


def make_gemma_tokenizer(vocab_size: int = 300) -> Siglip2Tokenizer:
    """SigLIP 2's kind of tokenizer: Gemma's byte-fallback BPE (any script becomes known ids), lower-casing."""
    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Lowercase(), normalizers.Replace(" ", "\u2581")])
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials + byte_tokens)
    tok.train_from_iterator(CORPUS * 4, trainer)
    model = json.loads(tok.to_str())["model"]
    return Siglip2Tokenizer(vocab=model["vocab"], merges=[tuple(m) for m in model["merges"]])


def save_siglip2(out: Path, naflex: bool = False, seed: int = 0) -> Path:
    """Save a tiny random-weight SigLIP 2 as its checkpoints come: fixed resolution (a SiglipModel with Gemma's
    tokenizer, like google/siglip2-base-patch16-224) or NaFlex (a Siglip2Model taking up to 64 patches of 16)."""
    torch.manual_seed(seed)
    tokenizer = make_gemma_tokenizer()
    text = dict(vocab_size=len(tokenizer), max_position_embeddings=16, pad_token_id=0, eos_token_id=1, **TINY_TEXT)
    if naflex:
        config = Siglip2Config(text_config=text, vision_config=dict(patch_size=16, num_patches=64, **TINY_VISION))
        Siglip2Model(config).eval().save_pretrained(out)
        Siglip2ImageProcessorPil(patch_size=16, max_num_patches=64).save_pretrained(out)
    else:
        config = SiglipConfig(text_config=text, vision_config=dict(image_size=224, patch_size=32, **TINY_VISION))
        SiglipModel(config).eval().save_pretrained(out)
        SiglipImageProcessor(size={"height": 224, "width": 224}).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def save_sentence_transformers_clip(out: Path, seed: int = 0) -> Path:
    """Save a tiny CLIP in the sentence-transformers layout (modules.json + 0_CLIPModel/)."""
    out.mkdir(parents=True, exist_ok=True)
    save_clip(out / "0_CLIPModel", seed=seed)
    modules = [{"idx": 0, "name": "0", "path": "0_CLIPModel", "type": "sentence_transformers.models.CLIPModel"}]
    (out / "modules.json").write_text(json.dumps(modules))
    return out


# --- text models that share a CLIP's space (indexer/models/paired_text.py) ------------------------------------

GERMAN = [  # CORPUS, translated
    "ein Foto von einem Hund am Strand",
    "ein rotes Auto, nachts auf der Straße geparkt",
    "eine Katze, die auf einem Sofa schläft",
    "Sonnenuntergang über den Bergen und einem See",
    "ein Dokument mit Text und einer Tabelle",
    "ein Hochzeitspaar tanzt, Braut und Bräutigam",
    "ein Teller mit Essen: Nudeln, Salat und Brot",
    "Produktfoto eines weißen Turnschuhs",
]


def save_student_text_model(out: Path, teacher, english: list[str], translations: dict[str, str], trained=True):
    """A tiny multilingual sentence-transformers model (DistilBERT, mean pooling, a Dense projection) distilled
    the way clip-ViT-B-32-multilingual-v1 was: trained so that its vector of each English sentence, and of each
    translation, matches the `teacher`'s vector of the English sentence. trained=False: the same, untrained."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers import models as st
    from transformers import DistilBertConfig, DistilBertModel

    torch.manual_seed(0)
    sources = english + list(translations)
    targets = torch.tensor(teacher.embed_texts(english + [translations[s] for s in translations]))
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok.train_from_iterator(sources * 2, trainers.WordPieceTrainer(vocab_size=400, special_tokens=specials))
    sep, cls = ("[SEP]", tok.token_to_id("[SEP]")), ("[CLS]", tok.token_to_id("[CLS]"))
    tok.post_processor = processors.BertProcessing(sep, cls)
    tok.decoder = decoders.WordPiece()
    base = out.parent / f"{out.name}-base"
    BertTokenizerFast(tokenizer_object=tok).save_pretrained(base)
    config = DistilBertConfig(vocab_size=tok.get_vocab_size(), dim=32, n_layers=2, n_heads=2, hidden_dim=64,
                              max_position_embeddings=64)  # fmt: skip
    DistilBertModel(config).save_pretrained(base)
    transformer = st.Transformer(str(base), max_seq_length=64)
    dense = st.Dense(32, targets.shape[1], activation_function=torch.nn.Identity())
    model = SentenceTransformer(modules=[transformer, st.Pooling(32, "mean"), dense], device="cpu")
    if trained:
        optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
        features = model.tokenize(sources)
        model.train()
        for _ in range(400):
            optimizer.zero_grad()
            loss = torch.nn.functional.mse_loss(model(dict(features))["sentence_embedding"], targets)
            loss.backward()
            optimizer.step()
        model.eval()
    model.save(str(out))
    return out


# --- vision-language models (search/vlm.py) ---------------------------------------------------------

VLM_CORPUS = CORPUS + [
    "Question: what is in the picture? Answer: a dog.",
    "USER: <image>\nWhat colour is the car? ASSISTANT: red",
]
IMAGE_TOKEN = "<image>"
# The llava-hf/llava-1.5 chat template: images of a turn first, then its text.
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] != 'system' %}{{ message['role'].upper() + ': ' }}{% endif %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' ' }}{% endfor %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
TINY_LM = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)


def make_vlm_tokenizer(vocab_size: int = 400, extra_special: tuple[str, ...] = ()) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (decodes back to the exact text) that starts each text with a BOS token."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = [PAD, UNK, BOS, EOS, *extra_special]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(VLM_CORPUS * 4, trainer)
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", special_tokens=[(BOS, tok.token_to_id(BOS))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK)


# blip2-opt-2.7b: ViT-g/14 vision (39 layers, 1408 wide), a 12-layer Q-Former, OPT-2.7B; 3.7 billion weights.
OPT_2_7B_VISION = dict(hidden_size=1408, intermediate_size=6144, num_hidden_layers=39, num_attention_heads=16)
OPT_2_7B_LM = dict(hidden_size=2560, ffn_dim=10240, num_hidden_layers=32, num_attention_heads=32)
BASE_QFORMER = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)


def make_blip2(size: str = "tiny", min_new_tokens: int | None = None):
    """A random-weight BLIP-2 (ViT + Q-Former + OPT) and its processor: tiny, `bench` sized, or `opt-2.7b`.

    `min_new_tokens` goes into the generation config, so random weights generate at least that much.
    Build `opt-2.7b` under `with torch.device("cuda"):` to create its weights where they will run.
    """
    tokenizer = make_vlm_tokenizer(extra_special=(IMAGE_TOKEN,))
    tokenizer.image_token = IMAGE_TOKEN
    if size == "tiny":
        vision, image_size, patch, queries, lm = dict(TINY_VISION), 32, 8, 4, dict(TINY_LM, ffn_dim=64)
        qformer = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
        vocab = len(tokenizer)
    elif (
        size == "bench"
    ):  # ViT-B/16 vision, BLIP-2's 32 queries and 12-layer Q-Former, OPT-125m with its 50k vocabulary
        vision, image_size, patch, queries, vocab, qformer = dict(VIT_B32_VISION), 224, 16, 32, 50272, BASE_QFORMER
        lm = dict(hidden_size=768, ffn_dim=3072, num_hidden_layers=12, num_attention_heads=12)
    else:
        vision, image_size, patch, queries, vocab, qformer = OPT_2_7B_VISION, 224, 14, 32, 50272, BASE_QFORMER
        lm = dict(OPT_2_7B_LM)
    lm.pop("intermediate_size", None)
    config = Blip2Config(
        vision_config=dict(image_size=image_size, patch_size=patch, **vision),
        qformer_config=dict(encoder_hidden_size=vision["hidden_size"], **qformer),
        text_config=dict(
            model_type="opt",
            vocab_size=vocab,
            word_embed_proj_dim=lm["hidden_size"],
            max_position_embeddings=512,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            **lm,
        ),
        num_query_tokens=queries,
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
    )
    model = Blip2ForConditionalGeneration(config).eval()
    if min_new_tokens:
        model.generation_config.min_new_tokens = min_new_tokens
    image_processor = BlipImageProcessor(size={"height": image_size, "width": image_size})
    return model, Blip2Processor(image_processor, tokenizer, num_query_tokens=queries)


def save_blip2(out: Path, size: str = "tiny", seed: int = 0, min_new_tokens: int | None = None) -> Path:
    """Save a random-weight BLIP-2 with its processor (see make_blip2)."""
    torch.manual_seed(seed)
    model, processor = make_blip2(size, min_new_tokens)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def save_llava(out: Path, size: str = "tiny", seed: int = 0) -> Path:
    """Save a random-weight LLaVA (CLIP vision tower + Llama) with processor and chat template.

    Sizes: tiny, `bench`, or `7b` (llava-1.5-7b: CLIP ViT-L/14-336 and Llama-2-7B; built on CUDA in fp16).
    """
    torch.manual_seed(seed)
    tokenizer = make_vlm_tokenizer(extra_special=(IMAGE_TOKEN,))
    if size == "tiny":
        vision, image_size, patch, lm, vocab = dict(TINY_VISION), 32, 8, dict(TINY_LM), len(tokenizer)
    elif size == "7b":
        vision, image_size, patch, vocab = dict(VIT_L14_VISION), 336, 14, 32064
        lm = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32)
    else:  # ViT-B/16 vision tower (196 image tokens), a 12-layer 768-wide Llama with Llama's 32k vocabulary
        vision, image_size, patch, vocab = dict(VIT_B32_VISION), 224, 16, 32064
        lm = dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12)
    config = LlavaConfig(
        vision_config=dict(model_type="clip_vision_model", image_size=image_size, patch_size=patch, **vision),
        text_config=dict(
            model_type="llama",
            vocab_size=vocab,
            max_position_embeddings=2048,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            **lm,
        ),
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
    )
    if size == "7b":  # 7 billion weights: made where they run, in the dtype they run in
        with torch.device("cuda"):
            LlavaForConditionalGeneration(config).half().eval().save_pretrained(out)
    else:
        LlavaForConditionalGeneration(config).eval().save_pretrained(out)
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    LlavaProcessor(
        image_processor,
        tokenizer,
        patch_size=patch,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # the CLS token, which the "default" strategy drops again
        chat_template=LLAVA_CHAT_TEMPLATE,
    ).save_pretrained(out)
    return out


def save_blip_vqa(out: Path, seed: int = 0) -> Path:
    """Save a tiny random-weight BLIP visual question answering model with its processor."""
    torch.manual_seed(seed)
    tokenizer = make_vlm_tokenizer()
    config = BlipConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            bos_token_id=tokenizer.bos_token_id,
            sep_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            max_position_embeddings=64,
            encoder_hidden_size=32,
            **TINY_TEXT,
        ),
        vision_config=dict(image_size=32, patch_size=8, **TINY_VISION),
    )
    BlipForQuestionAnswering(config).eval().save_pretrained(out)
    BlipProcessor(BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer).save_pretrained(out)
    return out


# --- BLIP captioners (indexer/enrich/captions.py): BERT WordPiece tokenizer from a vocab.txt ----------------------

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
