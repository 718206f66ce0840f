"""Captioning speed: captions/s for a captioner architecture (random weights) at 20 new tokens.

Random weights cost the same compute as trained ones. The generation config sets min_new_tokens to the
token budget, so every caption is exactly that long, as a real caption of that length would be. The
timed part is `Captioner.caption` on images already decoded (decoding runs in threads beside it in a
real run), batch 1 and batched.

- blip-base (default): Salesforce/blip-image-captioning-base's architecture, saved and loaded back
  through clipdex's own loading code; fp32 on CPU, and again with int8 weights through Quanto
  (`--quantize int8`), with the weights' bytes and the int8 / fp32 ratios of memory and captions/s.
- blip2-opt-2.7b: Salesforce/blip2-opt-2.7b's (3.8 billion weights), built in memory on the device, fp16
  on CUDA; meant for a GPU. Not loaded through from_pretrained, so not quantized here.

    python -m bench.captions [--arch blip-base] [--images 16] [--batch-size 8] [--max-new-tokens 20]
        [--beams 1] [--threads N] [--device auto]        (BENCH_QUICK=1: 4 images, batch 4, 10 tokens)

On a CPU shared with other busy processes, torch's default of one thread per core can be several times
slower than one thread (each parallel op waits for a descheduled thread); --threads 1 shows that case.
"""

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

from bench.smoke import announce, pick
from bench.vlm import weight_bytes
from indexer.enrich.captioner import full_prompt
from indexer.enrich.captions import Captioner, load_captioner
from indexer.models.loading import pick_device, read_image_prep
from tests.support.photos import photo

out = Console(highlight=False, soft_wrap=True)
QUICK = os.environ.get("BENCH_QUICK", "") not in ("", "0")


def machine() -> str:
    """The CPU (or GPU), its cores, torch's threads and the load when the figures were taken."""
    cpu = platform.processor() or "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if "model name" in line]
        cpu = names[0] if names else cpu
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    threads = torch.get_num_threads()
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} with {threads} threads{gpu}; load {load()}"


def load() -> str:
    return ", ".join(f"{x:.1f}" for x in os.getloadavg())


def blip_base(device: str, max_new_tokens: int) -> dict[str, Captioner]:
    """The architecture loaded in full precision ("none") and with int8 weights ("int8")."""
    from tests.support.model_factory import save_blip

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = save_blip(Path(tmp) / "blip-base", size=pick("base", "tiny"), min_new_tokens=max_new_tokens)
        return {quantize: load_captioner(str(model_dir), device, quantize) for quantize in ("none", "int8")}


def blip2_opt_2_7b(device: str, max_new_tokens: int) -> Captioner:
    """BLIP-2 OPT-2.7B (a smoke run's tiny BLIP-2) built on the device, fp16 on CUDA."""
    from transformers import AutoProcessor

    from tests.support.model_factory import make_blip2

    torch_device = pick_device(device)
    dtype = torch.float16 if torch_device.type == "cuda" else torch.float32
    with torch_device:  # weights are created where they run: 15 GB of fp32 never crosses the bus
        model, processor = make_blip2(pick("opt-2.7b", "tiny"), min_new_tokens=max_new_tokens)
    model.to(dtype)
    with tempfile.TemporaryDirectory() as tmp:  # the processor as a checkpoint's loads (its image token an AddedToken)
        processor.save_pretrained(tmp)
        processor = AutoProcessor.from_pretrained(tmp)
    prep = read_image_prep(processor.image_processor)
    return Captioner("blip2-opt-2.7b (random)", "blip-2", model, processor, prep, torch_device, dtype)


ARCHITECTURES = {
    "blip-base": blip_base,
    "blip2-opt-2.7b": lambda device, max_new_tokens: {"none": blip2_opt_2_7b(device, max_new_tokens)},
}


def rate(captioner, pixels: list[np.ndarray], batch_size: int, max_new_tokens: int, beams: int) -> tuple[float, float]:
    """Captions per wall-clock second and per CPU second of this process, after one warm-up batch."""
    prompt = full_prompt(captioner.family, None)  # the default one: "a photography of", or a BLIP-2 question
    captioner.caption(pixels[:batch_size], prompt, max_new_tokens, beams)
    started, cpu_started = time.perf_counter(), time.process_time()
    for start in range(0, len(pixels), batch_size):
        captioner.caption(pixels[start : start + batch_size], prompt, max_new_tokens, beams)
    return len(pixels) / (time.perf_counter() - started), len(pixels) / (time.process_time() - cpu_started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=ARCHITECTURES, default="blip-base")
    parser.add_argument("--images", type=int, default=pick(4 if QUICK else 16, 2))
    parser.add_argument("--batch-size", type=int, default=pick(4 if QUICK else 8, 2))
    parser.add_argument("--max-new-tokens", type=int, default=pick(10 if QUICK else 20, 3))
    parser.add_argument("--beams", type=int, default=1)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: one per core)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    captioners = ARCHITECTURES[args.arch](args.device, args.max_new_tokens)
    height, width = captioners["none"].prep.out_size
    pixels = [np.asarray(photo(seed, (width, height))) for seed in range(args.images)]
    out.print(f"machine: {machine()}")
    announce(out.print)
    megabytes, rates = {}, {}
    for quantize, captioner in captioners.items():
        weights = str(captioner.dtype)[6:] + (" with int8 Quanto weights" if quantize == "int8" else "")
        megabytes[quantize] = weight_bytes(captioner.model) / 1e6
        out.print(
            f"{args.arch} architecture (random weights) on {captioner.device.type} ({weights}, "
            f"{megabytes[quantize]:.0f} MB), "
            f"{args.max_new_tokens} new tokens, {args.beams} beam(s), {args.images} images:"
        )
        for batch_size in dict.fromkeys((1, args.batch_size)):
            per_second, per_cpu_second = rate(captioner, pixels, batch_size, args.max_new_tokens, args.beams)
            rates[quantize, batch_size] = per_second
            out.print(
                f"  batch {batch_size:3}: {per_second:6.2f} captions/s ({1000 / per_second:7.1f} ms/caption), "
                f"{per_cpu_second:6.2f} captions per CPU second"
            )
    if "int8" in captioners:
        out.print(f"int8 / fp32: weights {megabytes['int8'] / megabytes['none']:.2f}x")
        for batch_size in dict.fromkeys((1, args.batch_size)):
            out.print(
                f"  captions/s at batch {batch_size}: {rates['int8', batch_size] / rates['none', batch_size]:.2f}x"
            )
    out.print(f"load after: {load()}")


if __name__ == "__main__":
    main()
