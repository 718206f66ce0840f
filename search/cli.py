"""The `clipdex` command: a thin layer over the indexer pipeline and the search engine."""

import json
import logging
import os
import re
import sys
from dataclasses import asdict
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Literal

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.table import Table

from indexer.errors import ClipdexError
from indexer.settings import Attention, Quantize, Settings
from indexer.store import Hit

UNWRAPPED = 100_000
CONTROL = re.compile(r"[\x00-\x1f\x7f]")
app = typer.Typer(help="Self-hosted image search: index folders, search them by text or by image.")
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


class SearchMode(StrEnum):
    embedding = "embedding"
    caption = "caption"
    text = "text"
    hybrid = "hybrid"


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


def run(fn, *args):
    """Call into the library, turning clipdex errors into one stderr line and exit code 2."""
    try:
        return fn(*args)
    except ClipdexError as e:
        err.print(f"[red]error:[/red] {e}", highlight=False)
        raise typer.Exit(2) from None
    except Exception as e:
        from indexer.errors import damage_message

        message = damage_message(e)
        if message is None:
            raise
        err.print(f"[red]error:[/red] {escape(message)}", highlight=False)
        raise typer.Exit(2) from None


@app.callback()
def main() -> None:
    # Set, not imported: importing transformers here would slow down commands that never load a model.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    # Piped, log lines are plain text: the rich handler's columns would wrap them.
    handler = RichHandler(console=err, show_path=False) if sys.stderr.isatty() else logging.StreamHandler()
    logging.basicConfig(level=logging.WARNING, format="%(message)s", handlers=[handler])


@app.command()
def index(
    folder: Annotated[Path, typer.Argument(help="Folder of images, searched recursively")],
    store: StoreOpt = None,
    model: ModelOpt = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", min=1, help="Images per inference batch")] = None,
    device: DeviceOpt = None,
    workers: Annotated[int | None, typer.Option("--workers", min=1, help="Decode processes")] = None,
    retag: Annotated[
        bool, typer.Option("--retag", help="Then tag new and changed images with the store's saved label sets")
    ] = False,
    caption: Annotated[bool, typer.Option("--caption", help="Also caption new and changed images")] = False,
    caption_model: CaptionModelOpt = None,
    caption_quantize: CaptionQuantizeOpt = None,
    caption_attn: CaptionAttnOpt = None,
    ocr: Annotated[bool, typer.Option("--ocr", help="Also read the text in new and changed images")] = False,
    ocr_model: OcrModelOpt = None,
    ocr_keys: OcrKeysOpt = None,
    index_memory: Annotated[
        str | None,
        typer.Option("--index-memory", help="RAM the search index may take, e.g. 2GB; picks the index kind"),
    ] = None,
    ray: RayOpt = False,
    ray_address: RayAddressOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Index a folder (incremental: only new and changed files are embedded)."""
    from indexer.pipeline import index_folder

    settings = make_settings(
        store=store,
        model=model,
        batch_size=batch_size,
        device=device,
        workers=workers,
        caption_model=caption_model,
        caption_quantize=caption_quantize,
        caption_attn=caption_attn,
        ocr_model=ocr_model,
        ocr_keys=ocr_keys,
        index_memory=index_memory,
        ray=ray_setting(ray, ray_address),
    )
    summary = run(index_folder, folder, settings, not json_out and sys.stderr.isatty(), caption, None, ocr)
    # Tagging lives in search/ (indexer never imports search), so the CLI runs it after indexing.
    tagged = run(retag_saved_sets, settings.store, not json_out and sys.stderr.isatty()) if retag else []
    if json_out:
        # asdict would rebuild the Counter of skip reasons from its (reason, count) pairs, keyed by the pairs.
        result = {**asdict(summary), "skipped": dict(summary.skipped), "images_per_second": summary.images_per_second}
        typer.echo(json.dumps(result | ({"retagged": [asdict(t) for t in tagged]} if retag else {})))
    else:
        out.print(summary.line(), highlight=False)
        for t in tagged:
            out.print(t.line(), highlight=False)


def retag_saved_sets(store_path: str, show_progress: bool):
    from indexer.store import open_store
    from search.tagging import retag_store

    return retag_store(open_store(store_path), show_progress)


def print_hits(hits: list[Hit], json_out: bool, relevant: bool = False) -> None:
    if json_out:
        typer.echo(json.dumps([asdict(h) for h in hits], default=str))
        return
    if not hits:
        out.print("nothing stands out: no image scores clearly above the rest" if relevant else "no hits")
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
            printable(hit.path),
            *([hit.caption or ""] if with_captions else []),
        )
    out.print(table)


def open_engine(store: str | None, model: str | None = None, device: str | None = None, text_model: str | None = None):
    from search.engine import SearchEngine

    return run(SearchEngine, make_settings(store=store, model=model, device=device, text_model=text_model))


class Sort(StrEnum):
    score = "score"
    newest = "newest"
    oldest = "oldest"


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


@app.command()
def search(
    query: Annotated[
        str,
        typer.Argument(
            help='What to look for, in words. Ideas combine: "beach + sunset - people", "beach:2 + sunset" '
            "(+ and - need spaces around them; a weight follows a colon)"
        ),
    ] = "",
    like: Annotated[
        list[str] | None,
        typer.Option("--like", help="Also look like this image: a stored id or path, or any image file (repeatable)"),
    ] = None,
    k: KOpt = 10,
    offset: OffsetOpt = 0,
    relevant: RelevantOpt = False,
    sort: SortOpt = Sort.score,
    tag: TagOpt = None,
    mode: Annotated[
        SearchMode,
        typer.Option(
            "--mode",
            help="Rank by embedding similarity, caption match, match of the text read in the images (full-text "
            "relevance; see clipdex ocr), or all fused by reciprocal rank (hybrid; plain embedding search while the "
            "store has no captions or read text)",
        ),
    ] = SearchMode.hybrid,
    store: StoreOpt = None,
    text_model: TextModelOpt = None,
    device: DeviceOpt = None,
    json_out: JsonOpt = False,
    ask: Annotated[str | None, typer.Option("--ask", help="Ask a VLM this question about the top hits")] = None,
    vlm: VlmOpt = None,
) -> None:
    """Find images matching a text description, optionally combined with images (--like)."""
    from search.engine import Filters

    engine = open_engine(store, device=device, text_model=text_model)
    hits = run(engine.search, query, mode.value, k, offset, Filters(tag=tag), like or (), relevant, sort.value)
    print_hits(hits, json_out, relevant)
    if ask:
        ask_about_hits(engine.store, hits, ask, make_settings(store=store, device=device, vlm=vlm))


@app.command()
def similar(
    target: Annotated[str, typer.Argument(help="A stored image id, a stored path, or any image file")],
    k: KOpt = 10,
    offset: OffsetOpt = 0,
    relevant: RelevantOpt = False,
    tag: TagOpt = None,
    store: StoreOpt = None,
    device: DeviceOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Find images that look like an image (a stored image is not its own hit)."""
    from search.engine import Filters

    engine = open_engine(store, device=device)
    print_hits(run(engine.similar, target, k, offset, Filters(tag=tag), relevant), json_out, relevant)


@app.command()
def stats(
    store: StoreOpt = None,
    skipped: Annotated[bool, typer.Option("--skipped", help="List skipped files with their reasons")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Show what a store holds."""
    engine = open_engine(store)
    info = engine.stats()
    if skipped:
        info["skipped_files"] = [{"path": p, "reason": r} for p, r in engine.store.skipped()]
    if json_out:
        typer.echo(json.dumps(info))
        return
    for key in ("store", "model", "dim", "indexed", "skipped"):
        out.print(f"{key:8} {info[key]}", highlight=False)
    for name in info["text_models"]:
        out.print(f"text     {printable(name)} (shares the model's space)", highlight=False)
    for root in info["roots"]:
        out.print(f"root     {printable(root)}", highlight=False)
    for item in info.get("skipped_files", []):
        out.print(f"skipped  {printable(item['path'])}: {item['reason']}", highlight=False)


@app.command()
def models(json_out: JsonOpt = False) -> None:
    """The embedding models to choose from: size, input, languages, published quality and the cost measured here."""
    from indexer.catalog import CATALOG, measured

    figures = measured()
    rows = [{**asdict(e), **figures["models"].get(e.id, {})} for e in CATALOG]
    for row in rows:
        for key in ("kind", "vision", "text", "vocab_size", "image_size", "patch_size", "max_patches", "extra"):
            del row[key]  # how bench/models.py rebuilds it, not what a user chooses by
    if json_out:
        typer.echo(json.dumps({**{k: v for k, v in figures.items() if k != "models"}, "models": rows}))
        return

    def number(value, fmt: str, unit: str = "") -> str:
        return "-" if value is None else format(value, fmt) + unit

    table = Table("model (--model)", "family", "dim", "input", "languages", "ImageNet %", "COCO R@1 %", "params",
                  "memory", "images/s", "text query", box=None)  # fmt: skip
    for row in rows:
        memory, rate = row.get("memory_mb"), row.get("images_per_s")
        table.add_row(
            row["id"], row["family"], str(row["dim"]), row["image"], row["languages"], number(row["imagenet"], ".1f"),
            number(row["coco"], ".1f"), number(row.get("params_m"), "d", "M"),
            number(memory and memory / 1024, ".1f", " GB"), number(rate, ".1f" if rate and rate >= 1 else ".2f"),
            number(row.get("query_ms"), "d", " ms"),
        )  # fmt: skip
    out.print(table)
    out.print(
        "ImageNet: zero-shot top-1; COCO: text-to-image recall@1 (open_clip's results tables; SigLIP 2: its paper; "
        "- where none was published at hand).",
        highlight=False,
    )
    if figures.get("cpu"):
        out.print(
            "params, memory (peak resident, both towers), images/s (image tower, batch 16) and text query: measured "
            f"by bench/models.py on {figures['cpu']}, {figures['runtime']}, {figures['date']} (a GPU: make bench-gpu).",
            highlight=False,
        )
    else:
        out.print("cost not measured yet: make bench-models", highlight=False)


@app.command()
def tag(
    labels: Annotated[str | None, typer.Option("--labels", help="Comma-separated labels: 'cat,dog,beach'")] = None,
    labels_file: Annotated[
        Path | None, typer.Option("--labels-file", help="One label a line; # starts a comment line")
    ] = None,
    name: Annotated[str, typer.Option("--name", help="Label set name; re-tagging a name replaces it")] = "default",
    template: Annotated[
        list[str] | None, typer.Option("--template", help="Prompt template with {} for the label (repeatable)")
    ] = None,
    top_k: Annotated[int | None, typer.Option("--top-k", help="Keep the best N labels per image")] = None,
    threshold: Annotated[float | None, typer.Option("--threshold", help="Keep labels scoring at least this")] = None,
    multi_label: Annotated[
        bool, typer.Option("--multi-label", help="Score each label on its own instead of a softmax over the set")
    ] = False,
    store: StoreOpt = None,
    device: DeviceOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Tag every stored image with zero-shot labels, from the stored vectors (no image is re-embedded).

    Scores: CLIP single-label, the softmax probability among the labels; CLIP --multi-label, the
    probability that the label beats a label-free prompt; SigLIP, its own sigmoid probability.
    """
    from search import tagging

    if (labels is None) == (labels_file is None):
        err.print("[red]error:[/red] give exactly one of --labels and --labels-file", highlight=False)
        raise typer.Exit(2)
    label_list = run(tagging.read_labels_file, labels_file) if labels_file else run(tagging.parse_labels, labels)
    options = tagging.TagOptions(top_k, threshold, multi_label)
    # Checked before the store is opened and the model loaded, so a typo fails in a moment.
    request = run(tagging.check_request, label_list, template, options, name)
    engine = open_engine(store, device=device)
    summary = run(tagging.tag_collection, engine, request, not json_out and sys.stderr.isatty())
    if json_out:
        typer.echo(json.dumps(asdict(summary)))
        return
    out.print(summary.line(), highlight=False)


@app.command()
def tags(
    name: Annotated[str | None, typer.Option("--name", help="Only this label set")] = None,
    store: StoreOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """List the tags in use: how many images carry each label, per label set."""
    from search.tagging import label_counts

    engine = open_engine(store)
    counts = run(label_counts, engine.store, name)
    if json_out:
        typer.echo(json.dumps([{"label_set": s, "label": label, "images": n} for s, label, n in counts]))
        return
    if not counts:
        out.print("no tags yet; tag the store with: clipdex tag --labels 'cat,dog'")
        return
    table = Table("set", "label", "images", box=None)
    for set_name, label, n in counts:
        table.add_row(set_name, label, str(n))
    out.print(table)


@app.command()
def duplicates(
    threshold: Annotated[
        float, typer.Option("--threshold", help="Cosine at or above which two images are near copies (0.5-1)")
    ] = 0.95,
    folder: Annotated[str | None, typer.Option("--folder", help="Only images under this folder")] = None,
    csv_file: Annotated[
        Path | None, typer.Option("--csv", help="Also write every member, one row each, to this CSV file")
    ] = None,
    store: StoreOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """List groups of copies and near copies, each with a suggested keeper; nothing is deleted."""
    import time

    from indexer.store import open_store
    from search.duplicates import find_duplicates

    started = time.perf_counter()
    opened = run(open_store, make_settings(store=store).store)
    groups = run(find_duplicates, opened, threshold, folder)
    if csv_file is not None:
        write_duplicates_csv(csv_file, groups)
    if json_out:
        typer.echo(json.dumps([duplicate_json(g) for g in groups], default=str))
        return
    for n, group in enumerate(groups, 1):
        kind = "exact copies" if group.exact else "near copies"
        out.print(f"group {n}: {len(group.members)} {kind}, {group.reclaimable / 1e6:.1f} MB besides the keeper")
        table = Table("", "id", "similarity", "pixels", "taken", "path", box=None)
        for i, m in enumerate(group.members):
            taken = m.taken_at.isoformat(" ", "minutes") if m.taken_at else ""
            table.add_row("keep" if i == 0 else "", str(m.id), f"{m.similarity:.4f}", f"{m.width}x{m.height}", taken,
                          printable(m.path))  # fmt: skip
        out.print(table)
    images = sum(len(g.members) for g in groups)
    reclaimable = sum(g.reclaimable for g in groups) / 1e6
    out.print(
        f"{len(groups)} groups, {images} images, {reclaimable:.1f} MB besides the keepers "
        f"(threshold {threshold:g}) in {time.perf_counter() - started:.1f} s"
    )


@app.command()
def clusters(
    k: Annotated[
        int | None, typer.Option("--k", min=2, help="Number of clusters (default: sqrt(images / 50), 2 to 100)")
    ] = None,
    auto: Annotated[
        bool, typer.Option("--auto", help="Choose k by the silhouette of candidate clusterings (2 to 64)")
    ] = False,
    labels: Annotated[str | None, typer.Option("--labels", help="Comma-separated labels to name clusters by")] = None,
    labels_file: Annotated[
        Path | None, typer.Option("--labels-file", help="Labels to name clusters by, one a line (# comments)")
    ] = None,
    typical: Annotated[int, typer.Option("--typical", min=0, max=100, help="Typical images shown per cluster")] = 5,
    store: StoreOpt = None,
    text_model: TextModelOpt = None,
    device: DeviceOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Group the collection into clusters, name each by the labels it fits best, show its most typical images."""
    from search.clusters import cluster_store
    from search.tagging import parse_labels, read_labels_file

    if k is not None and auto:
        err.print("[red]error:[/red] give --k N or --auto, not both", highlight=False)
        raise typer.Exit(2)
    if labels is not None and labels_file is not None:
        err.print("[red]error:[/red] give --labels or --labels-file, not both", highlight=False)
        raise typer.Exit(2)
    label_list = run(parse_labels, labels) if labels else run(read_labels_file, labels_file) if labels_file else None
    engine = open_engine(store, device=device, text_model=text_model)
    result = run(cluster_store, engine, k, label_list, auto, sys.stderr.isatty() and not json_out)
    paths = engine.store.paths([i for c in result.clusters for i, _ in c.typical(typical)])
    if json_out:
        shown = [
            {
                "cluster": c.number,
                "size": c.size,
                "labels": [{"label": label, "fit": fit} for label, fit in c.labels],
                "typical": [{"id": i, "path": paths[i], "similarity": s} for i, s in c.typical(typical)],
            }
            for c in result.clusters
        ]
        typer.echo(json.dumps({"k": result.k, "chosen": result.chosen, "images": result.images, "clusters": shown}))
        return
    for c in result.clusters:
        names = ", ".join(label for label, _ in c.labels)
        out.print(f"cluster {c.number}: {c.size:,} images · {escape(names)}", highlight=False)
        for i, similarity in c.typical(typical):
            out.print(f"  {i:>8}  {similarity:.3f}  {printable(paths[i])}", highlight=False)
    out.print(
        f"{len(result.clusters)} clusters of {result.images:,} images (k {result.k}: {result.chosen}) "
        f"in {result.seconds:.1f} s",
        highlight=False,
    )


def duplicate_json(group) -> dict:
    return {"exact": group.exact, "reclaimable_bytes": group.reclaimable, "members": [asdict(m) for m in group.members]}


def write_duplicates_csv(path: Path, groups) -> None:
    import csv

    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["group", "keep", "exact", "id", "path", "similarity", "width", "height", "bytes", "taken_at"])
        for n, group in enumerate(groups, 1):
            for i, m in enumerate(group.members):
                taken = m.taken_at.isoformat() if m.taken_at else ""
                writer.writerow([n, int(i == 0), int(group.exact), m.id, m.path, f"{m.similarity:.6f}", m.width,
                                 m.height, m.size, taken])  # fmt: skip


@app.command()
def serve(
    store: StoreOpt = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="Port to listen on")] = 8000,
    text_model: TextModelOpt = None,
    device: DeviceOpt = None,
) -> None:
    """Serve the store over HTTP: the REST API (docs at /docs) and the search page at /."""
    import ipaddress

    import uvicorn

    from search.api import create_app

    settings = make_settings(store=store, device=device, text_model=text_model)
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback and settings.api_key is None:
        err.print(
            f"[yellow]warning:[/yellow] serving on {host} without an API key: anyone who can reach this "
            "address can search your images. Set CLIPDEX_API_KEY to require one.",
            highlight=False,
        )
    # Fail with a clear message before uvicorn starts: a store that cannot be opened, a text model it refuses.
    engine = open_engine(store, text_model=settings.text_model)
    if settings.text_model:
        run(lambda: engine.text_tower)
    out.print(f"clipdex on http://{host}:{port}/  (API docs at /docs)", highlight=False)
    uvicorn.run(create_app(settings), host=host, port=port, log_level="warning")


@app.command()
def caption(
    store: StoreOpt = None,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            help="BLIP or BLIP-2 captioner: hub id or local directory (env CLIPDEX_CAPTION_MODEL; "
            "default blip2-opt-2.7b on CUDA, blip-image-captioning-base on CPU)",
        ),
    ] = None,
    prompt: Annotated[
        str | None,
        typer.Option(
            "--prompt",
            help='Conditional prompt: a prefix for BLIP ("a photography of"); for BLIP-2 a question ending in "?" '
            'is asked as "Question: ... Answer:" (env CLIPDEX_CAPTION_PROMPT)',
        ),
    ] = None,
    redo: Annotated[bool, typer.Option("--redo", help="Caption every image again, failed ones included")] = False,
    batch_size: Annotated[int | None, typer.Option("--batch-size", min=1, help="Images per generation batch")] = None,
    max_new_tokens: Annotated[int | None, typer.Option("--max-new-tokens", min=1, help="Caption length cap")] = None,
    beams: Annotated[int | None, typer.Option("--beams", min=1, help="Beam search width (1: greedy, fastest)")] = None,
    quantize: QuantizeOpt = None,
    attn: AttnOpt = None,
    device: DeviceOpt = None,
    ray: RayOpt = False,
    ray_address: RayAddressOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Caption the stored images that lack a caption from this model and prompt (all of them with --redo)."""
    from indexer.caption import caption_store
    from indexer.store import open_store

    settings = make_settings(
        store=store,
        device=device,
        caption_model=model,
        caption_prompt=prompt,
        caption_batch_size=batch_size,
        caption_max_new_tokens=max_new_tokens,
        caption_beams=beams,
        caption_quantize=quantize,
        caption_attn=attn,
        ray=ray_setting(ray, ray_address),
    )
    opened = run(open_store, settings.store)
    summary = run(caption_store, opened, settings, redo, None, not json_out and sys.stderr.isatty())
    if json_out:
        typer.echo(json.dumps({**asdict(summary), "captions_per_second": summary.captions_per_second}))
    else:
        out.print(summary.line(), highlight=False)


@app.command()
def ocr(
    store: StoreOpt = None,
    redo: Annotated[bool, typer.Option("--redo", help="Read every image again, failed ones included")] = False,
    ocr_model: OcrModelOpt = None,
    ocr_keys: OcrKeysOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Read the text in the stored images not yet read (all of them with --redo), for --mode text searches."""
    from indexer.ocr import ocr_store
    from indexer.store import open_store

    settings = make_settings(store=store, ocr_model=ocr_model, ocr_keys=ocr_keys)
    opened = run(open_store, settings.store)
    summary = run(ocr_store, opened, settings, redo, None, not json_out and sys.stderr.isatty())
    if json_out:
        typer.echo(json.dumps({**asdict(summary), "images_per_second": summary.images_per_second}))
    else:
        out.print(summary.line(), highlight=False)


# --- stores ---------------------------------------------------------------------------------------------

store_app = typer.Typer(help="Manage stores: copy one between a directory and a PostgreSQL database.")
app.add_typer(store_app, name="store")


@store_app.command("copy")
def store_copy(
    source: Annotated[str, typer.Argument(help="The store to copy: a directory or a postgresql:// URL")],
    destination: Annotated[str, typer.Argument(help="Where to: a new directory or an empty database")],
    json_out: JsonOpt = False,
) -> None:
    """Copy a store, vectors, captions and tags included; a re-run continues an interrupted copy, and the
    result is verified (counts and a checksum of ids and vectors)."""
    from indexer.store import open_store
    from indexer.store.copy import copy_store

    settings = make_settings()
    src = run(open_store, source)
    dst = run(lambda: open_store(destination, model=src.model, dim=src.dim, create=True))
    summary = run(copy_store, src, dst, settings.lock_timeout, not json_out and sys.stderr.isatty())
    if json_out:
        typer.echo(json.dumps(asdict(summary)))
    else:
        out.print(summary.line(), highlight=False)


# --- questions about images with a vision-language model (search/vlm.py) -------------------------------

MaxTokensOpt = Annotated[int | None, typer.Option("--max-new-tokens", min=1, help="Longest answer, in tokens")]
TemperatureOpt = Annotated[
    float | None, typer.Option("--temperature", min=0.0, help="0 answers greedily; above 0 samples")
]
TopPOpt = Annotated[float | None, typer.Option("--top-p", min=0.0, max=1.0, help="Nucleus sampling mass")]
DtypeOpt = Annotated[
    Literal["auto", "float32", "float16", "bfloat16"] | None,
    typer.Option("--dtype", help="VLM weights: auto is float16 on CUDA, float32 on CPU"),
]


def open_visual_qa(store, vlm, device, max_new_tokens, temperature, top_p, dtype, quantize, attn):
    """A VisualQA over the store, with the VLM flags of `ask` and `chat`; the VLM loads with the first question."""
    from indexer.store import open_store
    from search.vlm import VisualQA

    settings = make_settings(
        store=store,
        vlm=vlm,
        device=device,
        vlm_max_new_tokens=max_new_tokens,
        vlm_temperature=temperature,
        vlm_top_p=top_p,
        vlm_dtype=dtype,
        vlm_quantize=quantize,
        vlm_attn=attn,
    )
    return VisualQA(run(open_store, settings.store), settings)


def say_answer(qa, conversation, question: str) -> None:
    """Stream the answer to stdout as it is generated."""
    if not qa.loaded:  # transformers shows the weights' loading progress
        err.print(f"loading {qa.settings.vlm}", highlight=False)
        qa.load()
    with err.status("thinking"):
        chunks = qa.ask(conversation, question)
        first = next(chunks, "")
    typer.echo(first, nl=False)
    for chunk in chunks:
        typer.echo(chunk, nl=False)
    typer.echo()


@app.command("ask")
def ask_command(
    images: Annotated[list[str], typer.Argument(help="Stored image ids or paths", show_default=False)],
    question: Annotated[str, typer.Argument(help="What to ask about the images")],
    store: StoreOpt = None,
    vlm: VlmOpt = None,
    device: DeviceOpt = None,
    max_new_tokens: MaxTokensOpt = None,
    temperature: TemperatureOpt = None,
    top_p: TopPOpt = None,
    dtype: DtypeOpt = None,
    quantize: QuantizeOpt = None,
    attn: AttnOpt = None,
) -> None:
    """Ask a vision-language model a question about stored images; the answer streams."""
    qa = open_visual_qa(store, vlm, device, max_new_tokens, temperature, top_p, dtype, quantize, attn)
    conversation = run(qa.start, images)
    run(say_answer, qa, conversation, question)


CHAT_HELP = "/clear forgets the questions, /image ID adds an image, /quit ends"


@app.command()
def chat(
    images: Annotated[list[str], typer.Argument(help="Stored image ids or paths", show_default=False)],
    store: StoreOpt = None,
    vlm: VlmOpt = None,
    device: DeviceOpt = None,
    max_new_tokens: MaxTokensOpt = None,
    temperature: TemperatureOpt = None,
    top_p: TopPOpt = None,
    dtype: DtypeOpt = None,
    quantize: QuantizeOpt = None,
    attn: AttnOpt = None,
) -> None:
    """Talk about stored images with a vision-language model, question after question."""
    qa = open_visual_qa(store, vlm, device, max_new_tokens, temperature, top_p, dtype, quantize, attn)
    conversation = run(qa.start, images)
    err.print(CHAT_HELP, highlight=False)
    while True:
        try:
            line = out.input("[bold]> [/bold]").strip()
        except EOFError:
            break
        command, _, arg = line.partition(" ")
        try:
            if command == "/quit":
                break
            elif command == "/clear":
                conversation.clear()
                err.print("history cleared")
            elif command == "/image":
                conversation.add_image(qa.image_id(arg.strip()))
                err.print(f"images: {', '.join(map(str, conversation.images))}", highlight=False)
            elif command.startswith("/"):
                err.print(f"unknown command {command}; {CHAT_HELP}", highlight=False)
            elif line:
                say_answer(qa, conversation, line)
        except ClipdexError as e:  # a bad question or image ends this turn, not the conversation
            err.print(f"[red]error:[/red] {e}", highlight=False)


def ask_about_hits(store, hits: list[Hit], question: str, settings: Settings) -> None:
    """`search --ask`: one question about as many of the top hits as the VLM looks at at once."""
    from search.vlm import VisualQA

    if not hits:
        return
    qa = VisualQA(store, settings)
    vlm = run(qa.load)
    conversation = run(qa.start, [h.id for h in hits[: vlm.max_images]])
    err.print(f"asking about {', '.join(map(str, conversation.images))}:", highlight=False)
    run(say_answer, qa, conversation, question)
