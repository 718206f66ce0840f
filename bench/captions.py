"""Captioning speed: captions/s for the BLIP-base architecture (random weights) at 20 new tokens.

Random weights cost the same compute as trained ones. The saved generation config sets min_new_tokens
to the token budget, so every caption is exactly that long, as a real caption of that length would be.
The model is saved and loaded back through clipdex's own loading code; the timed part is
`Captioner.caption` on images already decoded (decoding runs in threads beside it in a real run).

    python -m bench.captions [--images 16] [--batch-size 8] [--max-new-tokens 20] [--beams 1] [--threads N]

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

from indexer.caption import BLIP_PROMPT, load_captioner
from tests.conftest import photo
from tests.model_factory import save_blip

out = Console(highlight=False, soft_wrap=True)


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


def rate(captioner, pixels: list[np.ndarray], batch_size: int, max_new_tokens: int, beams: int) -> tuple[float, float]:
    """Captions per wall-clock second and per CPU second of this process, after one warm-up batch."""
    captioner.caption(pixels[:batch_size], BLIP_PROMPT, max_new_tokens, beams)
    started, cpu_started = time.perf_counter(), time.process_time()
    for start in range(0, len(pixels), batch_size):
        captioner.caption(pixels[start : start + batch_size], BLIP_PROMPT, max_new_tokens, beams)
    return len(pixels) / (time.perf_counter() - started), len(pixels) / (time.process_time() - cpu_started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=20)
    parser.add_argument("--beams", type=int, default=1)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: one per core)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = save_blip(Path(tmp) / "blip-base", size="base", min_new_tokens=args.max_new_tokens)
        captioner = load_captioner(str(model_dir), args.device)
    height, width = captioner.prep.out_size
    pixels = [np.asarray(photo(seed, (width, height))) for seed in range(args.images)]
    out.print(f"machine: {machine()}")
    out.print(
        f"BLIP base architecture (random weights) on {captioner.device.type} ({str(captioner.dtype)[6:]}), "
        f"{args.max_new_tokens} new tokens, {args.beams} beam(s), {args.images} images:"
    )
    for batch_size in dict.fromkeys((1, args.batch_size)):
        per_second, per_cpu_second = rate(captioner, pixels, batch_size, args.max_new_tokens, args.beams)
        out.print(
            f"  batch {batch_size:3}: {per_second:6.2f} captions/s ({1000 / per_second:7.1f} ms/caption), "
            f"{per_cpu_second:6.2f} captions per CPU second"
        )
    out.print(f"load after: {load()}")


if __name__ == "__main__":
    main()
