"""Train the toy-world CLIP (tests/data/toyworld-clip/) on pictures of coloured shapes, deterministically.

    python -m tests.support.train_toyworld [--out tests/data/toyworld-clip] [--steps 1200]

A CLIPModel of ~0.26M weights (48 px images in 8 px patches, a word-level tokenizer over the toy world's
words) learns from captions made from templates (tests/support/toyworld.py): "a photo of a red circle",
"something yellow", "a star". A caption names the colour and shape, the colour only, or the shape only,
so one caption fits many pictures of a batch: the contrastive loss takes every picture a caption fits as
its match (a soft target spread over them), both ways, instead of CLIP's one match per row. Captions of
things absent from the world ("a dog", or a word the tokenizer does not know) fit no picture: they are
negatives for every picture, and prefer none of the pictures to another, as a real CLIP knows a drawing of a
circle is not a dog, and no more a dog than a drawing of a square.

Fixed seeds, a fixed thread count and deterministic kernels: the same machine writes the same weights.
It ends by checking the model names the colour and shape of fresh pictures, and refuses to save a model
below 99% (a few minutes on 2 cores).
"""

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, PreTrainedTokenizerFast

from tests.support.toyworld import (
    ABSENT,
    ABSENT_TEMPLATES,
    CLASSES,
    COLOUR_ONLY,
    COLOURS,
    FULL,
    SHAPE_ONLY,
    SHAPES,
    SIZE,
    UNKNOWN,
    draw_pixels,
    random_picture,
    vocabulary,
)

OUT = Path(__file__).resolve().parents[1] / "data" / "toyworld-clip"
BOS, EOS, PAD, UNK = "<|startoftext|>", "<|endoftext|>", "<pad>", "<unk>"
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
TRAIN_PICTURES = 24_000  # drawn once, flipped and turned at random each time they are used
BATCH = 48  # small batches, many steps: every caption is in each step's loss, so negatives do not need a big batch
PEAK_LR = 3e-3
STEPS = 6000
THREADS = 2
VISION = dict(patch_size=8, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4)


def make_tokenizer() -> PreTrainedTokenizerFast:
    """A lower-casing word-level tokenizer over the toy world's words (others are <unk>), CLIP's start/end tokens."""
    words = [PAD, UNK, BOS, EOS, *vocabulary()]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token=UNK))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}", special_tokens=[(BOS, words.index(BOS)), (EOS, words.index(EOS))]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK)


def make_model(tokenizer: PreTrainedTokenizerFast) -> CLIPModel:
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            max_position_embeddings=16,
            hidden_size=64,
            intermediate_size=256,
            num_hidden_layers=2,
            num_attention_heads=4,
            eos_token_id=tokenizer.eos_token_id,
            bos_token_id=tokenizer.bos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
        vision_config=dict(image_size=SIZE, **VISION),
        projection_dim=64,
    )  # fmt: skip
    return CLIPModel(config)


def image_processor() -> CLIPImageProcessor:
    """Pictures go in at their own size: a resize and crop to SIZE (no-ops), then this normalisation."""
    return CLIPImageProcessor(
        size={"shortest_edge": SIZE}, crop_size={"height": SIZE, "width": SIZE}, image_mean=MEAN, image_std=STD
    )


def text_bank() -> tuple[list[str], np.ndarray, np.ndarray]:
    """Every caption the templates make, with the colour and shape it names (-1: none)."""
    texts, colours, shapes = [], [], []
    for ci, c in enumerate(COLOURS):
        for si, s in enumerate(SHAPES):
            texts += [t.format(c=c, s=s) for t in FULL]
            colours += [ci] * len(FULL)
            shapes += [si] * len(FULL)
        texts += [t.format(c=c) for t in COLOUR_ONLY]
        colours += [ci] * len(COLOUR_ONLY)
        shapes += [-1] * len(COLOUR_ONLY)
    for si, s in enumerate(SHAPES):
        texts += [t.format(s=s) for t in SHAPE_ONLY]
        colours += [-1] * len(SHAPE_ONLY)
        shapes += [si] * len(SHAPE_ONLY)
    return texts, np.array(colours), np.array(shapes)


def absent_texts() -> list[str]:
    """Captions of things not in the world, with words the tokenizer knows (ABSENT) or does not (UNKNOWN)."""
    nouns = ABSENT + UNKNOWN
    return sorted({t.format(n=n, m=nouns[(i + 5) % len(nouns)]) for i, n in enumerate(nouns) for t in ABSENT_TEMPLATES})


def augment(pixels: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Flip and turn each picture by a multiple of 90 degrees: the same colour and shape, another picture."""
    out = pixels.clone()
    for i in range(len(out)):
        turn, flip = rng.integers(4), rng.integers(2)
        out[i] = torch.rot90(out[i], int(turn), dims=(1, 2))
        if flip:
            out[i] = out[i].flip(2)
    return out


def to_inputs(pixels: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) to the model's normalised float (N, 3, H, W), as clipdex feeds it."""
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255
    return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def whiten_patches(model: CLIPModel, pixels: torch.Tensor) -> None:
    """Start the patch embedding as the whitened principal components of the world's patches.

    A ViT learns shapes at random places, sizes and turns slowly from random patch filters (a small CNN needs
    a hundred steps, this ViT thousands); starting from the patches' principal directions, each scaled to
    unit variance, gets it there in about half the steps (measured on this world)."""
    conv = model.vision_model.embeddings.patch_embedding
    p, width = conv.kernel_size[0], conv.out_channels
    patches = pixels.unfold(2, p, p).unfold(3, p, p).permute(0, 2, 3, 1, 4, 5).reshape(-1, 3 * p * p)
    patches = patches - patches.mean(dim=0)
    _, spread, directions = torch.linalg.svd(patches, full_matrices=False)
    scale = spread[:width, None] / math.sqrt(len(patches))
    with torch.no_grad():
        conv.weight.copy_((directions[:width] / scale).reshape(width, 3, p, p))


def soft_cross_entropy(logits: torch.Tensor, fits: torch.Tensor) -> torch.Tensor:
    """Cross entropy of each row's softmax against the uniform distribution over the columns that fit it."""
    target = fits / fits.sum(dim=1, keepdim=True)
    return -(target * torch.log_softmax(logits, dim=1)).sum(dim=1).mean()


def train(steps: int = STEPS, seed: int = 0, log_every: int = 100) -> tuple[CLIPModel, PreTrainedTokenizerFast]:
    torch.manual_seed(seed)
    torch.set_num_threads(THREADS)
    torch.use_deterministic_algorithms(True)
    rng = np.random.default_rng(seed)
    tokenizer = make_tokenizer()
    model = make_model(tokenizer).train()

    pictures = [random_picture(rng) for _ in range(TRAIN_PICTURES)]
    pixels = to_inputs(draw_pixels(pictures))
    colour_of = torch.tensor([list(COLOURS).index(p.colour) for p in pictures])
    shape_of = torch.tensor([SHAPES.index(p.shape) for p in pictures])
    texts, text_colour, text_shape = text_bank()
    absent = absent_texts()
    tokens = tokenizer(texts + absent, padding=True, return_tensors="pt")
    text_colour = np.concatenate([text_colour, np.full(len(absent), -2)])
    text_shape = np.concatenate([text_shape, np.full(len(absent), -2)])
    # which texts fit which class: every colour and shape a text names is the picture's; absent ones fit none
    fits_class = np.array(
        [
            ((text_colour == c) | (text_colour == -1)) & ((text_shape == s) | (text_shape == -1))
            for c in range(len(COLOURS))
            for s in range(len(SHAPES))
        ],
        dtype=np.float32,
    )  # classes x captions
    by_class = [np.flatnonzero(row) for row in fits_class]
    absent_rows = torch.arange(len(texts), len(texts) + len(absent))

    whiten_patches(model, pixels[:2000])
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": rest, "weight_decay": 0.0}])
    warmup, peak = steps // 20, PEAK_LR
    started = time.perf_counter()
    for step in range(steps):
        lr = peak * min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / steps))
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = torch.from_numpy(rng.choice(TRAIN_PICTURES, BATCH, replace=False))
        cls = colour_of[batch] * len(SHAPES) + shape_of[batch]
        chosen = torch.tensor([int(rng.choice(by_class[int(k)])) for k in cls])  # one caption per picture
        images = model.get_image_features(pixel_values=augment(pixels[batch], rng)).pooler_output
        words = model.get_text_features(**tokens).pooler_output  # every caption, each step: the text tower is tiny
        images = images / images.norm(dim=1, keepdim=True)
        words = words / words.norm(dim=1, keepdim=True)
        logits = model.logit_scale.exp().clamp(max=100) * images @ words.T  # pictures x all captions
        fits = torch.from_numpy(fits_class[cls.numpy()])
        # pictures to every caption (absent ones included, as negatives); each picture's caption to the batch; and
        # each absent caption to the batch evenly: it fits none of the pictures, so it prefers none of them
        rows = torch.cat([chosen, absent_rows])
        targets = torch.cat([fits.T[chosen], torch.ones(len(absent_rows), len(batch))])
        loss = (soft_cross_entropy(logits, fits) + soft_cross_entropy(logits.T[rows], targets)) / 2
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if log_every and (step % log_every == 0 or step == steps - 1):
            print(
                f"step {step:5d}  loss {loss.item():.3f}  lr {lr:.2e}  ({time.perf_counter() - started:.0f} s)", end=""
            )
            print(f"  fresh accuracy {accuracy(model.eval(), tokenizer, 240):.1%}" if step else "")
            model.train()
    return model.eval(), tokenizer


@torch.inference_mode()
def accuracy(model: CLIPModel, tokenizer, count: int = 1200, seed: int = 12345) -> float:
    """Share of fresh pictures whose best-scoring "a photo of a {colour} {shape}" is their own."""
    rng = np.random.default_rng(seed)
    pictures = [random_picture(rng, c, s) for _ in range(count // len(CLASSES)) for c, s in CLASSES]
    images = model.get_image_features(pixel_values=to_inputs(draw_pixels(pictures))).pooler_output
    prompts = tokenizer([f"a photo of a {c} {s}" for c, s in CLASSES], padding=True, return_tensors="pt")
    words = model.get_text_features(**prompts).pooler_output
    best = (images / images.norm(dim=1, keepdim=True) @ (words / words.norm(dim=1, keepdim=True)).T).argmax(1)
    truth = torch.tensor([CLASSES.index((p.colour, p.shape)) for p in pictures])
    return float((best == truth).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--steps", type=int, default=STEPS)
    args = parser.parse_args()
    model, tokenizer = train(args.steps)
    score = accuracy(model, tokenizer)
    print(f"colour and shape named right on {score:.1%} of fresh pictures")
    if score < 0.99:
        raise SystemExit("the model does not know its world well enough: not saved")
    model.save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)
    image_processor().save_pretrained(args.out)
    print(f"saved to {args.out}")


if __name__ == "__main__":
    main()
