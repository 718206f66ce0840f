"""Follow-up question speed on this machine: time to first token and tokens/s, BLIP-2 and LLaVA architectures.

The models have random weights and are reduced in size (the real blip2-opt-2.7b and llava-1.5-7b are 20-60x
larger and do not fit this benchmark's budget on a CPU); each is printed with its parameter count. They are
saved and loaded through clipdex's real loading code and asked through `VisualQA`, as `clipdex ask` does,
about photos in a real store. Every answer is forced to its full length so tokens/s is measured over it.
Each model is loaded twice: fp32, and int8 weights through Quanto (`--quantize int8`), with the weights'
bytes and the int8 / fp32 ratios of memory and tokens/s.

    python -m bench.vlm [--tokens 32] [--repeats 3] [--size bench|tiny]    (BENCH_QUICK=1: 8 tokens, 1 repeat)
"""

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console

from bench.indexing import tiny_clip
from bench.smoke import DATA, announce, pick
from indexer.indexing import index_folder
from indexer.settings import Settings
from indexer.store import open_store
from search.vlm import GenerationOptions, VisualQA
from tests.support.photos import write_photos

out = Console(highlight=False, soft_wrap=True)  # figures stay on one line when piped
QUICK = os.environ.get("BENCH_QUICK", "") not in ("", "0")


def machine() -> str:
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} "
        f"with {torch.get_num_threads()} threads, load average {load}"
    )


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes the parameters and buffers really take.

    transformers' get_memory_footprint() counts a Quanto int8 weight at its float size (the tensor subclass
    reports the float element size), so it shows no saving; this adds up the tensors inside instead.
    """

    def size(t: torch.Tensor) -> int:
        if hasattr(t, "__tensor_flatten__"):  # a tensor subclass: int8 data and its scales
            return sum(size(getattr(t, inner)) for inner in t.__tensor_flatten__()[0])
        return t.nelement() * t.element_size()

    return sum(size(t) for t in (*model.parameters(), *model.buffers()))


class ExactLength(GenerationOptions):
    """Greedy answers of exactly max_new_tokens tokens: random weights may otherwise say EOS at once."""

    def generate_kwargs(self) -> dict:
        return {**super().generate_kwargs(), "min_new_tokens": self.max_new_tokens}


def time_answer(qa: VisualQA, refs: list[str], tokens: int) -> float:
    """Seconds from asking to the end of an answer of exactly `tokens` tokens."""
    qa.options = ExactLength(max_new_tokens=tokens)
    started = time.perf_counter()
    for _ in qa.ask(qa.start(refs), "What is the person in the picture holding?"):
        pass
    return time.perf_counter() - started


def time_answers(qa: VisualQA, refs: list[str], tokens: int, repeats: int) -> tuple[float, float]:
    """Median time to first token (a one-token answer, prefill included) and median tokens/s after it.

    Timed at the token, not at the first printed text: the streamer holds text back until a word is complete.
    """
    time_answer(qa, refs, tokens)  # warm up
    firsts, rates = [], []
    for _ in range(repeats):
        first = time_answer(qa, refs, 1)
        whole = time_answer(qa, refs, tokens)
        firsts.append(first)
        rates.append((tokens - 1) / max(whole - first, 1e-9))
    return statistics.median(firsts), statistics.median(rates)


def main() -> None:
    # Imported here, not above: index_folder's decode workers import this module again, and should stay light.
    from tests.support.model_factory import save_blip2, save_llava

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=pick(8 if QUICK else 32, 4), help="answer length in tokens")
    parser.add_argument("--repeats", type=int, default=1 if QUICK else 3)
    parser.add_argument("--size", choices=["bench", "tiny"], default=pick("bench", "tiny"))
    args = parser.parse_args()
    out.print(f"machine: {machine()}")
    announce(out.print)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_photos(root / "photos", 2, size=(640, 480))
        model, cache = str(tiny_clip()), DATA / "cache"  # the store's model, exported once
        settings = Settings(store=root / "store", model=model, device="cpu", workers=1, cache_dir=cache)
        index_folder(root / "photos", settings, show_progress=False)
        if args.size == "bench":
            out.print("BLIP-2: ViT-B/16, 12-layer Q-Former, 32 queries, OPT-125m; LLaVA: CLIP ViT-B/16, 12x768 Llama")
        cases = [("BLIP-2, 1 image", save_blip2, ["1"]), ("LLaVA, 1 image", save_llava, ["1"])]
        cases.append(("LLaVA, 2 images", save_llava, ["1", "2"]))
        saved: dict = {}
        for title, save, refs in cases:
            if save not in saved:
                saved[save] = save(root / save.__name__, size=args.size)
            figures = {}
            for quantize, weights in (("none", "fp32"), ("int8", "int8 Quanto")):
                vlm_settings = settings.model_copy(update={"vlm": str(saved[save]), "vlm_quantize": quantize})
                qa = VisualQA(open_store(settings.store), vlm_settings)
                first, rate = time_answers(qa, refs, args.tokens, args.repeats)
                model = qa.load().model
                params, megabytes = sum(p.numel() for p in model.parameters()) / 1e6, weight_bytes(model) / 1e6
                figures[quantize] = rate, megabytes
                out.print(
                    f"{title} ({args.size}, {params:.0f}M params, random weights, {weights} CPU): "
                    f"first token {first * 1000:.0f} ms, {rate:.1f} tokens/s over {args.tokens} tokens, "
                    f"weights {megabytes:.0f} MB"
                )
            (fp32_rate, fp32_mb), (int8_rate, int8_mb) = figures["none"], figures["int8"]
            out.print(f"  int8 / fp32: weights {int8_mb / fp32_mb:.2f}x, tokens/s {int8_rate / fp32_rate:.2f}x")


if __name__ == "__main__":
    main()
