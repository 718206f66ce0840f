"""Building and looking after stores: `index`, `caption`, `ocr`, `stats`, `models`, `store copy`, `import`, `export`."""

import json
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from search import service as clipdex
from search.cli.common import (
    AttnOpt,
    CaptionAttnOpt,
    CaptionModelOpt,
    CaptionQuantizeOpt,
    DeviceOpt,
    JsonOpt,
    ModelOpt,
    OcrKeysOpt,
    OcrModelOpt,
    QuantizeOpt,
    RayAddressOpt,
    RayOpt,
    RuntimeOpt,
    StoreOpt,
    make_settings,
    open_service,
    out,
    printable,
    progress_shown,
    ray_setting,
    run,
)


def index(
    folder: Annotated[Path, typer.Argument(help="Folder of images, searched recursively")],
    store: StoreOpt = None,
    model: ModelOpt = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", min=1, help="Images per inference batch")] = None,
    device: DeviceOpt = None,
    runtime: RuntimeOpt = None,
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
    settings = make_settings(
        store=store,
        model=model,
        batch_size=batch_size,
        device=device,
        runtime=runtime,
        workers=workers,
        caption_model=caption_model,
        caption_quantize=caption_quantize,
        caption_attn=caption_attn,
        ocr_model=ocr_model,
        ocr_keys=ocr_keys,
        index_memory=index_memory,
        ray=ray_setting(ray, ray_address),
    )
    summary = run(clipdex.index_folder, folder, settings, progress_shown(json_out), caption, ocr, retag)
    if json_out:
        # asdict would rebuild the Counter of skip reasons from its (reason, count) pairs, keyed by the pairs.
        result = {**asdict(summary), "skipped": dict(summary.skipped), "images_per_second": summary.images_per_second}
        typer.echo(json.dumps(result))
    else:
        out.print(summary.line(), highlight=False)


def stats(
    store: StoreOpt = None,
    skipped: Annotated[bool, typer.Option("--skipped", help="List skipped files with their reasons")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Show what a store holds, and which runtime its model runs in on this machine and why."""
    info = run(open_service(make_settings(store=store)).stats, skipped)
    if json_out:
        typer.echo(json.dumps(info))
        return
    for key in ("store", "model", "dim", "indexed", "skipped"):
        out.print(f"{key:8} {info[key]}", highlight=False)
        if key == "indexed" and info["videos"]:
            out.print(f"videos   {info['videos']} of them, with {info['frames']} more frames searched", highlight=False)
    for name in info["text_models"]:
        out.print(f"text     {printable(name)} (shares the model's space)", highlight=False)
    for root in info["roots"]:
        out.print(f"root     {printable(root)}", highlight=False)
    runtime = info["runtime"]
    out.print(f"runtime  {runtime['runtime']} here: {runtime['reason']}", highlight=False)
    for tower in runtime["towers"]:
        out.print(f"         {tower['summary']}", highlight=False)
    for item in info.get("skipped_files", []):
        out.print(f"skipped  {printable(item['path'])}: {item['reason']}", highlight=False)


def models(json_out: JsonOpt = False) -> None:
    """The embedding models to choose from, their quality and cost, and the CPU runtimes measured on this CPU.

    Per model: size, input, languages, published quality and the cost measured by bench/models.py. Then, for each
    model used here, every CPU runtime's speed and agreement with fp32 on this CPU, and the one each tower runs in.
    """
    rows, figures = clipdex.model_catalogue()
    runtimes = clipdex.measured_runtimes(make_settings())
    if json_out:
        typer.echo(json.dumps({**figures, "models": rows, "runtimes": runtimes}))
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
    print_runtimes(runtimes)


def print_runtimes(runtimes: dict) -> None:
    """Each measured model's towers: every candidate runtime's rate and agreement with fp32, the chosen one marked."""
    if not runtimes["measured"]:
        out.print(
            f"\nCPU runtimes: none measured on this CPU yet ({runtimes['cpu']}); a model's are on its first use.",
            highlight=False,
        )
        return
    out.print(f"\nCPU runtimes measured on this CPU ({runtimes['cpu']}); * runs the tower (--runtime auto):")
    table = Table("model", "tower", "runtime", "per second", "cosine to fp32 (min)", "measured", box=None)
    for choice in runtimes["measured"]:
        for c in choice["candidates"]:
            chosen = "*" if c["runtime"] == choice["runtime"] else " "
            rate = f"{c['per_second']:.1f}" if c["per_second"] is not None else "-"
            agreement = f"{c['min_cosine']:.5f}" if c["min_cosine"] is not None else c["skipped"] or "-"
            table.add_row(printable(choice["model"]), choice["tower"], f"{chosen} {c['runtime']}", rate, agreement,
                          choice["measured_at"][:10])  # fmt: skip
    out.print(table)


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
    summary = run(open_service(settings).caption, redo, progress_shown(json_out))
    if json_out:
        typer.echo(json.dumps({**asdict(summary), "captions_per_second": summary.captions_per_second}))
    else:
        out.print(summary.line(), highlight=False)


def ocr(
    store: StoreOpt = None,
    redo: Annotated[bool, typer.Option("--redo", help="Read every image again, failed ones included")] = False,
    ocr_model: OcrModelOpt = None,
    ocr_keys: OcrKeysOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Read the text in the stored images not yet read (all of them with --redo), for --mode text searches."""
    settings = make_settings(store=store, ocr_model=ocr_model, ocr_keys=ocr_keys)
    summary = run(open_service(settings).read_text, redo, progress_shown(json_out))
    if json_out:
        typer.echo(json.dumps({**asdict(summary), "images_per_second": summary.images_per_second}))
    else:
        out.print(summary.line(), highlight=False)


# --- stores ---------------------------------------------------------------------------------------------


def store_copy(
    source: Annotated[str, typer.Argument(help="The store to copy: a directory or a postgresql:// URL")],
    destination: Annotated[str, typer.Argument(help="Where to: a new directory or an empty database")],
    json_out: JsonOpt = False,
) -> None:
    """Copy a store, vectors, captions and tags included; a re-run continues an interrupted copy, and the
    result is verified (counts and a checksum of ids and vectors)."""
    summary = run(clipdex.copy_store, source, destination, make_settings(), progress_shown(json_out))
    if json_out:
        typer.echo(json.dumps(asdict(summary)))
    else:
        out.print(summary.line(), highlight=False)


def store_import(
    source: Annotated[Path, typer.Argument(help="A clip-retrieval embeddings folder (img_emb/, metadata/)")],
    model: Annotated[
        str | None,
        typer.Option(
            "--model", help="The model the embeddings were made with (its files do not say; a clipdex export does)"
        ),
    ] = None,
    store: StoreOpt = None,
    root: Annotated[
        Path | None,
        typer.Option(
            "--root", help="The folder the image paths lie in (default: the one holding them all); relative ones too"
        ),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Import embeddings in clip-retrieval's layout as indexed images (the store is made for --model when new); a
    re-run adds only what the store lacks."""
    settings = make_settings(store=store)
    summary = run(clipdex.import_embeddings, source, model, settings, root, progress_shown(json_out))
    if json_out:
        typer.echo(json.dumps({**asdict(summary), "rows_per_second": summary.rows_per_second}))
    else:
        out.print(summary.line(), highlight=False)


def store_export(
    destination: Annotated[Path, typer.Argument(help="A new or empty folder")],
    store: StoreOpt = None,
    shard_size: Annotated[int, typer.Option("--shard-size", min=1, help="Images per img_emb_N.npy file")] = 1_000_000,
    json_out: JsonOpt = False,
) -> None:
    """Export the store's indexed images in clip-retrieval's layout (float16 vectors and parquet metadata), for
    autofaiss, clip-retrieval and the like."""
    summary = run(
        clipdex.export_embeddings, destination, make_settings(store=store), shard_size, progress_shown(json_out)
    )
    if json_out:
        typer.echo(json.dumps(asdict(summary)))
    else:
        out.print(summary.line(), highlight=False)
