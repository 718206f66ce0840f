"""Every CUDA path once, full-size architectures with random weights: `make bench-gpu` on a CUDA machine.

- embedding: ViT-B/32 and ViT-L/14 in fp16 through `index_folder` (decode workers included), batch 256;
- captions: BLIP-2 OPT-2.7B in fp16, captions/s;
- questions: LLaVA-1.5-7B in fp16 with sdpa, eager and flash_attention_2 attention (the last where flash-attn is
  installed), in 4-bit (bitsandbytes) and in int8 (Quanto), first-token latency, tokens/s and weights' memory.

It fails loudly (non-zero exit, the traceback) when a path is broken or there is no CUDA device: a skipped
path would read as a passed one. Models are saved with `save_pretrained` and loaded through clipdex's own
loading code, as a hub id would be. Budget: about 12 minutes on one H200 (most of it saving the 7B model
and loading it four or five times). A smoke run (BENCH_SMOKE=1) takes the same paths with tiny models, on the CPU
where there is no CUDA (in fp32, without the 4-bit path, which bitsandbytes runs on CUDA only).

    python -m bench.gpu [--images 2048] [--only embed,caption,vlm]
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench.captions import blip2_opt_2_7b, rate
from bench.smoke import SMOKE, announce, pick
from bench.vlm import time_answers, weight_bytes
from indexer.decode import decode_image
from indexer.indexing import index_folder
from indexer.models.cpu import cpu_line
from indexer.models.generative import installed
from indexer.models.runtimes import make_embedder
from indexer.settings import Settings
from indexer.store import open_store
from search.vlm import VisualQA
from tests.support.photos import write_photos

DEVICE = "cuda" if torch.cuda.is_available() or not SMOKE else "cpu"
DTYPE = torch.float16 if DEVICE == "cuda" else torch.float32  # what make_embedder picks for the device
BATCH = pick(256, 8)


def sync() -> None:
    """Wait for the work queued on the GPU (none on a CPU)."""
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def embedding(root: Path, images: int) -> None:
    """images/s of `index_folder` (decode in workers + fp16 embedding at batch 256) for ViT-B/32 and ViT-L/14."""
    from tests.support.model_factory import save_clip  # not above: the decode workers import this module again

    photos = root / "photos"
    write_photos(photos, images, size=(1024, 768))
    for name, size in pick((("ViT-B/32", "vit-b-32"), ("ViT-L/14", "vit-l-14")), (("tiny CLIP", "tiny"),)):
        model_dir = save_clip(root / name.replace("/", ""), size=size)
        store = root / f"store-{name[-2:]}"  # on a CPU (a smoke run without CUDA) torch runs it, as on CUDA:
        settings = Settings(store=store, model=str(model_dir), device=DEVICE, batch_size=BATCH, cpu_runtime="torch")
        embedder = make_embedder(str(model_dir), settings)
        assert embedder.runtime == "torch" and embedder.loaded.dtype == DTYPE, "CUDA must embed in fp16"
        summary = index_folder(photos, settings, show_progress=False, embedder=embedder)
        assert summary.indexed == images, summary.line()
        pixels = [decode_image(p.read_bytes(), embedder.prep, 10**8).pixels for p in sorted(photos.iterdir())[:BATCH]]
        embedder.embed_pixels(pixels)
        sync()
        started = time.perf_counter()
        for _ in range(5):
            embedder.embed_pixels(pixels)
        sync()
        alone = 5 * len(pixels) / (time.perf_counter() - started)
        print(
            f"embedding {name} fp16: {summary.images_per_second:,.0f} images/s end to end with decoding "
            f"({summary.line()}); encoder alone {alone:,.0f} images/s at batch {BATCH}",
            flush=True,
        )


def captions(images: int = pick(64, 4), batch_size: int = pick(16, 2), tokens: int = pick(20, 3)) -> None:
    """BLIP-2 OPT-2.7B fp16 captions/s at batch 16, 20 new tokens (beam 1)."""
    from indexer.decode import resize_and_crop
    from tests.support.photos import photo

    captioner = blip2_opt_2_7b(DEVICE, tokens)
    pixels = [resize_and_crop(photo(seed, (640, 480)), captioner.prep) for seed in range(images)]
    per_second, _ = rate(captioner, pixels, batch_size, tokens, beams=1)
    print(f"captions BLIP-2 OPT-2.7B fp16: {per_second:.1f} captions/s (batch {batch_size}, {tokens} tokens)")
    del captioner
    torch.cuda.empty_cache()


def questions(root: Path, tokens: int = pick(64, 4), repeats: int = pick(3, 1)) -> None:
    """LLaVA-1.5-7B first token and tokens/s through `VisualQA` as `clipdex ask` runs it: fp16 with each attention
    kernel (sdpa, eager, flash_attention_2 where flash-attn is installed), 4-bit (bitsandbytes), int8 (Quanto)."""
    from tests.support.model_factory import save_clip, save_llava

    write_photos(root / "vlm-photos", 2, size=(640, 480))
    clip_dir = save_clip(root / "clip-tiny")
    settings = Settings(store=root / "vlm-store", model=str(clip_dir), device=DEVICE, workers=2, cpu_runtime="torch")
    index_folder(root / "vlm-photos", settings, show_progress=False)
    llava = save_llava(root / "llava-7b", size=pick("7b", "tiny"))
    variants = [("fp16 sdpa", "none", "sdpa"), ("fp16 eager", "none", "eager")]
    if installed("flash_attn"):
        variants.append(("fp16 flash_attention_2", "none", "flash_attention_2"))
    else:
        print("questions LLaVA-1.5-7B flash_attention_2: not timed, the flash-attn package is not installed")
    if DEVICE == "cuda":
        variants.append(("4bit", "4bit", "auto"))
    else:
        print("questions 4bit: not run, bitsandbytes runs on CUDA only (a smoke run on the CPU)")
    variants.append(("int8 Quanto", "int8", "auto"))
    for title, quantize, attn in variants:
        update = {"vlm": str(llava), "vlm_quantize": quantize, "vlm_attn": attn}
        qa = VisualQA(open_store(settings.store), settings.model_copy(update=update))
        first, per_second = time_answers(qa, ["1"], tokens, repeats)
        model = qa.load().model
        print(
            f"questions LLaVA-1.5-7B {title} ({model.config._attn_implementation} attention): first token "
            f"{first * 1000:.0f} ms, {per_second:.1f} tokens/s over {tokens} tokens, "
            f"weights {weight_bytes(model) / 2**30:.1f} GiB",
            flush=True,
        )
        del qa, model
        torch.cuda.empty_cache()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=pick(2048, 8))
    parser.add_argument("--only", default="embed,caption,vlm")
    args = parser.parse_args()
    if DEVICE != "cuda" and not SMOKE:
        sys.exit("bench.gpu needs a CUDA device and torch built with CUDA: none is visible here")
    print(cpu_line())
    announce()
    gpu = torch.cuda.get_device_name() if DEVICE == "cuda" else "none, every path on the CPU"
    print(f"GPU: {gpu}, torch {torch.__version__}", flush=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="clipdex-bench-gpu-") as tmp:
        root = Path(tmp)
        if "embed" in args.only:
            embedding(root, args.images)
        if "caption" in args.only:
            captions()
        if "vlm" in args.only:
            questions(root)
    print(f"bench-gpu done in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
