"""What every command shares: the consoles, option declarations, settings from flags, error translation, hits."""

import json
import re
import sys
from dataclasses import asdict
from datetime import datetime
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from indexer.errors import ClipdexError, damage_message
from indexer.settings import Attention, Quantize, Runtime, Settings
from search.service import Filters, Hit, SearchMode, Service, Sort, make_filters

UNWRAPPED = 100_000
CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# On a terminal rich fits output to its width; piped, lines are never wrapped (a wrapped path is two lines).
out = Console(width=None if sys.stdout.isatty() else UNWRAPPED)
err = Console(stderr=True, width=None if sys.stderr.isatty() else UNWRAPPED)


def printable(name: str) -> str:
    """A file name to print: control characters escaped (a newline in a name cannot split or forge a line),
    and rich markup too (a name with "[red]" in it stays as it is)."""
    return escape(CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", name))


StoreOpt = Annotated[
    str | None,
    typer.Option("--store", help="Store directory, or a postgresql:// database URL (env CLIPDEX_STORE)"),
]
ModelOpt = Annotated[
    str | None, typer.Option("--model", help="Embedding model: hub id or local directory (env CLIPDEX_MODEL)")
]
DeviceOpt = Annotated[str | None, typer.Option("--device", help="auto, cpu or cuda (env CLIPDEX_DEVICE)")]
RuntimeOpt = Annotated[
    Runtime | None,
    typer.Option(
        "--runtime",
        help="What runs the embedding model on CPU; auto: the fastest runtime that agrees with fp32, measured once "
        "per model and CPU (see clipdex models); or onnx, openvino, openvino-bf16, onnx-int8 (approximate), torch "
        "(env CLIPDEX_RUNTIME)",
    ),
]
KOpt = Annotated[int, typer.Option("-k", "--top-k", help="Number of hits")]
RayOpt = Annotated[
    bool,
    typer.Option(
        "--ray",
        help="Run on a Ray cluster: the one RAY_ADDRESS names or this machine runs, else a new one here (the "
        "folders must be at the same path on every node; env CLIPDEX_RAY)",
    ),
]
RayAddressOpt = Annotated[
    str | None, typer.Option("--ray-address", help="Run on the Ray cluster at this address: auto, or head:6379")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts")]
TagOpt = Annotated[str | None, typer.Option("--tag", help="Only images tagged with this label (see clipdex tags)")]
KeywordOpt = Annotated[
    str | None,
    typer.Option("--keyword", help="Only images with this keyword in their metadata (XMP, IPTC, sidecars)"),
]
CaptionModelOpt = Annotated[
    str | None,
    typer.Option(
        "--caption-model",
        help="BLIP or BLIP-2 captioner: hub id or local directory (env CLIPDEX_CAPTION_MODEL; "
        "default blip2-opt-2.7b on CUDA, blip-image-captioning-base on CPU)",
    ),
]

# Quantization and attention kernel of the captioner (`caption`, `index --caption`) and the VLM (`ask`, `chat`).
QuantizeOpt = Annotated[
    Quantize | None,
    typer.Option(
        "--quantize", help="int8 weights through Quanto (CPU or CUDA), or 4bit / 8bit through bitsandbytes (CUDA only)"
    ),
]
AttnOpt = Annotated[
    Attention | None,
    typer.Option(
        "--attn",
        help="Attention kernel; auto: flash_attention_2 on CUDA with the flash-attn package where the model has it, "
        "else sdpa where it has it, else eager",
    ),
]
CaptionQuantizeOpt = Annotated[
    Quantize | None, typer.Option("--caption-quantize", help="The captioner's weights, as clipdex caption --quantize")
]
CaptionAttnOpt = Annotated[
    Attention | None, typer.Option("--caption-attn", help="The captioner's attention kernel, as clipdex caption --attn")
]
OcrModelOpt = Annotated[
    str | None,
    typer.Option(
        "--ocr-model",
        help="Another language's PP-OCR recognition model (.onnx; default: the English/Chinese PP-OCRv4 one in the "
        "rapidocr-onnxruntime wheel; env CLIPDEX_OCR_MODEL)",
    ),
]
OcrKeysOpt = Annotated[
    str | None, typer.Option("--ocr-keys", help="The character list of --ocr-model (env CLIPDEX_OCR_KEYS)")
]


TextModelOpt = Annotated[
    str | None,
    typer.Option(
        "--text-model",
        help="Embed query texts with this sentence-transformers model (hub id or directory) instead of the store "
        "model's own text tower, once it is measured to share the store's space; e.g. "
        "sentence-transformers/clip-ViT-B-32-multilingual-v1 for queries in 50+ languages (env CLIPDEX_TEXT_MODEL)",
    ),
]
VlmOpt = Annotated[
    str | None, typer.Option("--vlm", help="Vision-language model: hub id or local directory (env CLIPDEX_VLM)")
]


OffsetOpt = Annotated[int, typer.Option("--offset", min=0, help="Skip this many hits (paging)")]
RelevantOpt = Annotated[
    bool,
    typer.Option(
        "--relevant",
        help="Only hits that stand out from what this query scores on a typical stored image, with their relevance "
        "(spreads above that baseline)",
    ),
]
SortOpt = Annotated[
    Sort, typer.Option("--sort", help="Order hits by score, or by capture date (the best 1000, undated last)")
]


FolderOpt = Annotated[
    str | None,
    typer.Option("--folder", help="Only images under this folder (absolute, or relative to an indexed root)"),
]
TakenFromOpt = Annotated[
    datetime | None, typer.Option("--taken-from", formats=["%Y-%m-%d"], help="Capture date from (inclusive)")
]
TakenToOpt = Annotated[
    datetime | None, typer.Option("--taken-to", formats=["%Y-%m-%d"], help="Capture date to (inclusive)")
]
MinScoreOpt = Annotated[
    float | None, typer.Option("--min-score", min=-1.0, max=1.0, help="Minimum cosine similarity (embedding ranking)")
]
ModeOpt = Annotated[
    SearchMode,
    typer.Option(
        "--mode",
        help="Rank by embedding similarity; by a match of the words in captions, in the text read in the images "
        "(see clipdex ocr), in their metadata's titles, descriptions and keywords (full-text relevance), or in "
        "file and folder names; or all fused by reciprocal rank (hybrid)",
    ),
]


def ray_setting(ray: bool, address: str | None) -> str | None:
    """The Settings.ray value of --ray / --ray-address: None leaves CLIPDEX_RAY (or local work) in place."""
    return address or ("default" if ray else None)


def make_settings(**overrides) -> Settings:
    """Settings from the environment, overridden by the flags that were given; a bad value is one clear line."""
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, p['loc']))}: {p['msg']}" for p in e.errors())
        err.print(f"[red]error:[/red] {escape(problems)}", highlight=False)
        raise typer.Exit(2) from None


def run(fn, *args, **kwargs):
    """Call into the library, turning clipdex errors into one stderr line and exit code 2."""
    try:
        return fn(*args, **kwargs)
    except ClipdexError as e:
        err.print(f"[red]error:[/red] {e}", highlight=False)
        raise typer.Exit(2) from None
    except Exception as e:
        message = damage_message(e)
        if message is None:
            raise
        err.print(f"[red]error:[/red] {escape(message)}", highlight=False)
        raise typer.Exit(2) from None


def filters(
    folder: str | None,
    taken_from: datetime | None,
    taken_to: datetime | None,
    tag: str | None,
    min_score: float | None = None,
    keyword: str | None = None,
) -> Filters:
    """The service's filters from the filter flags every search command takes."""
    first, last = (when.date() if when else None for when in (taken_from, taken_to))
    return run(make_filters, folder, first, last, tag, min_score, keyword)


def progress_shown(json_out: bool) -> bool:
    """Progress bars go to a terminal, never into JSON for scripts or a log."""
    return not json_out and sys.stderr.isatty()


def open_service(settings: Settings) -> Service:
    return run(Service, settings)


def print_hits(hits: list[Hit], json_out: bool, relevant: bool = False) -> None:
    if json_out:
        typer.echo(json.dumps([asdict(h) for h in hits], default=str))
        return
    if not hits:
        out.print(
            "nothing stands out: no image scores clearly above the rest (without --relevant: the closest matches)"
            if relevant
            else "no hits"
        )
        return
    with_captions = any(hit.caption for hit in hits)
    with_dates = any(hit.taken_at for hit in hits)
    columns = ["rank", "score", *(["relevance"] if relevant else []), "id", *(["taken"] if with_dates else [])]
    table = Table(*columns, "path", *(["caption"] if with_captions else []), box=None)
    for rank, hit in enumerate(hits, 1):
        table.add_row(
            str(rank),
            f"{hit.score:.4f}",
            *([f"{hit.relevance:.1f}" if hit.relevance is not None else "caption"] if relevant else []),
            str(hit.id),
            *([hit.taken_at.isoformat(" ", "minutes") if hit.taken_at else ""] if with_dates else []),
            printable(hit.path) + (f" at {moments_text(hit)}" if hit.moments else ""),
            *([hit.caption or ""] if with_captions else []),
        )
    out.print(table)


def clock(seconds: float) -> str:
    """A video time as people read it: 0:42, 12:05, 1:02:03."""
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def moments_text(hit: Hit) -> str:
    """A video hit's best moment, then the others found (ids to search from in `clipdex similar`)."""
    best, *others = hit.moments
    return clock(best.timestamp_s) + (f" (also {', '.join(clock(m.timestamp_s) for m in others)})" if others else "")
