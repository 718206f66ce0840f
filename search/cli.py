"""The `clipdex` command: a thin layer over the indexer pipeline and the search engine."""

import json
import logging
import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from indexer.errors import ClipdexError
from indexer.settings import Settings
from indexer.store import Hit

app = typer.Typer(help="Self-hosted image search: index folders, search them by text or by image.")
out = Console()
err = Console(stderr=True)

StoreOpt = Annotated[Path | None, typer.Option("--store", help="Store directory [env CLIPDEX_STORE]")]
ModelOpt = Annotated[
    str | None, typer.Option("--model", help="Embedding model: hub id or local directory [env CLIPDEX_MODEL]")
]
DeviceOpt = Annotated[str | None, typer.Option("--device", help="auto, cpu or cuda [env CLIPDEX_DEVICE]")]
KOpt = Annotated[int, typer.Option("-k", "--top-k", help="Number of hits")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts")]
TagOpt = Annotated[str | None, typer.Option("--tag", help="Only images tagged with this label (see clipdex tags)")]


def make_settings(**overrides) -> Settings:
    """Settings from the environment, overridden by the flags that were given."""
    return Settings(**{k: v for k, v in overrides.items() if v is not None})


def run(fn, *args):
    """Call into the library, turning clipdex errors into one stderr line and exit code 2."""
    try:
        return fn(*args)
    except ClipdexError as e:
        err.print(f"[red]error:[/red] {e}", highlight=False)
        raise typer.Exit(2) from None


@app.callback()
def main() -> None:
    # Set, not imported: importing transformers here would slow down commands that never load a model.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    logging.basicConfig(
        level=logging.WARNING, format="%(message)s", handlers=[RichHandler(console=err, show_path=False)]
    )


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
    json_out: JsonOpt = False,
) -> None:
    """Index a folder (incremental: only new and changed files are embedded)."""
    from indexer.pipeline import index_folder

    settings = make_settings(store=store, model=model, batch_size=batch_size, device=device, workers=workers)
    summary = run(index_folder, folder, settings, not json_out and sys.stderr.isatty())
    # Tagging lives in search/ (indexer never imports search), so the CLI runs it after indexing.
    tagged = run(retag_saved_sets, settings.store, not json_out and sys.stderr.isatty()) if retag else []
    if json_out:
        result = {**asdict(summary), "images_per_second": summary.images_per_second}
        typer.echo(json.dumps(result | ({"retagged": [asdict(t) for t in tagged]} if retag else {})))
    else:
        out.print(summary.line(), highlight=False)
        for t in tagged:
            out.print(t.line(), highlight=False)


def retag_saved_sets(store_path: Path, show_progress: bool):
    from indexer.store import open_store
    from search.tagging import retag_store

    return retag_store(open_store(store_path), show_progress)


def print_hits(hits: list[Hit], json_out: bool) -> None:
    if json_out:
        typer.echo(json.dumps([asdict(h) for h in hits]))
        return
    if not hits:
        out.print("no hits")
        return
    table = Table("rank", "score", "id", "path", box=None)
    for rank, hit in enumerate(hits, 1):
        table.add_row(str(rank), f"{hit.score:.4f}", str(hit.id), hit.path)
    out.print(table)


def open_engine(store: Path | None, model: str | None = None, device: str | None = None):
    from search.engine import SearchEngine

    return run(SearchEngine, make_settings(store=store, model=model, device=device))


@app.command()
def search(
    query: Annotated[str, typer.Argument(help="What to look for, in words")],
    k: KOpt = 10,
    offset: Annotated[int, typer.Option("--offset", min=0, help="Skip this many hits (paging)")] = 0,
    tag: TagOpt = None,
    store: StoreOpt = None,
    device: DeviceOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Find images matching a text description."""
    from search.engine import Filters

    engine = open_engine(store, device=device)
    print_hits(run(engine.search_text, query, k, offset, Filters(tag=tag)), json_out)


@app.command()
def similar(
    target: Annotated[str, typer.Argument(help="A stored image id, a stored path, or any image file")],
    k: KOpt = 10,
    offset: Annotated[int, typer.Option("--offset", min=0, help="Skip this many hits (paging)")] = 0,
    tag: TagOpt = None,
    store: StoreOpt = None,
    device: DeviceOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Find images that look like an image (a stored image is not its own hit)."""
    from search.engine import Filters

    engine = open_engine(store, device=device)
    print_hits(run(engine.similar_to, target, k, offset, Filters(tag=tag)), json_out)


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
    for root in info["roots"]:
        out.print(f"root     {root}", highlight=False)
    for item in info.get("skipped_files", []):
        out.print(f"skipped  {item['path']}: {item['reason']}", highlight=False)


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
def serve(
    store: StoreOpt = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="Port to listen on")] = 8000,
    device: DeviceOpt = None,
) -> None:
    """Serve the store over HTTP: the REST API (docs at /docs) and the search page at /."""
    import ipaddress

    import uvicorn

    from search.api import create_app

    settings = make_settings(store=store, device=device)
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
    open_engine(store)  # fail with a clear message before uvicorn starts, if the store cannot be opened
    out.print(f"clipdex on http://{host}:{port}/  (API docs at /docs)", highlight=False)
    uvicorn.run(create_app(settings), host=host, port=port, log_level="warning")
