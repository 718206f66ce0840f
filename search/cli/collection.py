"""The collection as a whole: zero-shot `tag` and `tags`, `duplicates`, `clusters`."""

import csv
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from search.cli.common import (
    DeviceOpt,
    JsonOpt,
    RuntimeOpt,
    StoreOpt,
    TextModelOpt,
    err,
    make_settings,
    open_service,
    out,
    printable,
    progress_shown,
    run,
)
from search.service import (
    DuplicateKind,
    DuplicateOptions,
    TagOptions,
    check_request,
    parse_labels,
    read_labels_file,
)


def read_labels(labels: str | None, labels_file: Path | None) -> list[str] | None:
    """The labels of --labels or --labels-file (at most one of them may be given); None for neither."""
    if labels is not None and labels_file is not None:
        err.print("[red]error:[/red] give --labels or --labels-file, not both", highlight=False)
        raise typer.Exit(2)
    if labels_file is not None:
        return run(read_labels_file, labels_file)
    return run(parse_labels, labels) if labels is not None else None


LabelsOpt = Annotated[str | None, typer.Option("--labels", help="Comma-separated labels: 'cat,dog,beach'")]
LabelsFileOpt = Annotated[Path | None, typer.Option("--labels-file", help="One label a line; # starts a comment line")]


def tag(
    labels: LabelsOpt = None,
    labels_file: LabelsFileOpt = None,
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
    runtime: RuntimeOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Tag every stored image with zero-shot labels, from the stored vectors (no image is re-embedded).

    Scores: CLIP single-label, the softmax probability among the labels; CLIP --multi-label, the
    probability that the label beats a label-free prompt; SigLIP, its own sigmoid probability.
    """
    if (labels is None) == (labels_file is None):
        err.print("[red]error:[/red] give exactly one of --labels and --labels-file", highlight=False)
        raise typer.Exit(2)
    label_list = read_labels(labels, labels_file)
    # Checked before the store is opened and the model loaded, so a typo fails in a moment.
    request = run(check_request, label_list, template, TagOptions(top_k, threshold, multi_label), name)
    service = open_service(make_settings(store=store, device=device, runtime=runtime))
    summary = run(service.tag, request, progress_shown(json_out))
    if json_out:
        typer.echo(json.dumps(asdict(summary)))
        return
    out.print(summary.line(), highlight=False)


def tags(
    name: Annotated[str | None, typer.Option("--name", help="Only this label set")] = None,
    store: StoreOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """List the tags in use: how many images carry each label, per label set."""
    counts = run(open_service(make_settings(store=store)).tags, name)
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


KIND_NAMES = {"exact": "exact copies", "same-picture": "copies of one picture", "similar": "similar shots"}
DEFAULTS = DuplicateOptions()


def duplicates(
    kind: Annotated[
        list[DuplicateKind] | None,
        typer.Option("--kind", help="Only these kinds (repeatable; default: all, an image in the strongest only)"),
    ] = None,
    distance: Annotated[
        int, typer.Option("--distance", help="pHash bits of 64 a copy of the same picture may differ by")
    ] = DEFAULTS.distance,
    similarity: Annotated[
        float, typer.Option("--similarity", "--threshold", help="Cosine at or above which shots are similar")
    ] = DEFAULTS.similarity,
    window: Annotated[
        float, typer.Option("--window", help="Seconds apart similar shots may be taken (when both say when)")
    ] = DEFAULTS.window,
    folder: Annotated[str | None, typer.Option("--folder", help="Only images under this folder")] = None,
    csv_file: Annotated[
        Path | None, typer.Option("--csv", help="Also write every member, one row each, to this CSV file")
    ] = None,
    store: StoreOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """List groups of exact copies, copies of one picture and similar shots, each with a suggested keeper.

    Nothing is deleted: `clipdex trash move ID...` moves the ones to drop aside, and `clipdex trash restore` back.
    """
    started = time.perf_counter()
    options = run(DuplicateOptions, tuple(kind or DuplicateKind), distance, similarity, window, folder)
    groups = run(open_service(make_settings(store=store)).duplicates, options)
    if csv_file is not None:
        write_duplicates_csv(csv_file, groups)
    if json_out:
        typer.echo(json.dumps([duplicate_json(g) for g in groups], default=str))
        return
    for n, group in enumerate(groups, 1):
        out.print(
            f"group {n}: {len(group.members)} {KIND_NAMES[group.kind]}, "
            f"{group.reclaimable / 1e6:.1f} MB besides the keeper"
        )
        table = Table("", "id", "similarity", "phash bits", "pixels", "taken", "path", box=None)
        for i, m in enumerate(group.members):
            taken = m.taken_at.isoformat(" ", "minutes") if m.taken_at else ""
            bits = "" if m.distance is None else str(m.distance)
            table.add_row("keep" if i == 0 else "", str(m.id), f"{m.similarity:.4f}", bits, f"{m.width}x{m.height}",
                          taken, printable(m.path))  # fmt: skip
        out.print(table)
    images = sum(len(g.members) for g in groups)
    reclaimable = sum(g.reclaimable for g in groups) / 1e6
    out.print(
        f"{len(groups)} groups, {images} images, {reclaimable:.1f} MB besides the keepers "
        f"(pHash distance {distance}, similarity {similarity:g}, window {window:g} s) "
        f"in {time.perf_counter() - started:.1f} s"
    )


def duplicate_json(group) -> dict:
    """A group as the API shows it (search/api DuplicateGroupPublic), less the URLs."""
    return {
        "kind": group.kind.value,
        "reclaimable_bytes": group.reclaimable,
        "members": [asdict(m) for m in group.members],
    }


def write_duplicates_csv(path: Path, groups) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["group", "kind", "keep", "id", "path", "similarity", "distance", "width", "height", "bytes",
                         "taken_at"])  # fmt: skip
        for n, group in enumerate(groups, 1):
            for i, m in enumerate(group.members):
                taken = m.taken_at.isoformat() if m.taken_at else ""
                distance = "" if m.distance is None else m.distance
                writer.writerow([n, group.kind.value, int(i == 0), m.id, m.path, f"{m.similarity:.6f}", distance,
                                 m.width, m.height, m.bytes, taken])  # fmt: skip


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
    runtime: RuntimeOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Group the collection into clusters, name each by the labels it fits best, show its most typical images."""
    if k is not None and auto:
        err.print("[red]error:[/red] give --k N or --auto, not both", highlight=False)
        raise typer.Exit(2)
    label_list = read_labels(labels, labels_file)
    service = open_service(make_settings(store=store, device=device, runtime=runtime, text_model=text_model))
    result = run(service.clusters, k, label_list, auto, progress_shown(json_out))
    shown = {c.number: service.hits(c.typical(typical)) for c in result.clusters}
    if json_out:
        listed = [
            {
                "cluster": c.number,
                "size": c.size,
                "labels": [{"label": label, "fit": fit} for label, fit in c.labels],
                "typical": [{"id": h.id, "path": h.path, "similarity": h.score} for h in shown[c.number]],
            }
            for c in result.clusters
        ]
        typer.echo(json.dumps({"k": result.k, "chosen": result.chosen, "images": result.images, "clusters": listed}))
        return
    for c in result.clusters:
        names = ", ".join(label for label, _ in c.labels)
        out.print(f"cluster {c.number}: {c.size:,} images · {escape(names)}", highlight=False)
        for hit in shown[c.number]:
            out.print(f"  {hit.id:>8}  {hit.score:.3f}  {printable(hit.path)}", highlight=False)
    out.print(
        f"{len(result.clusters)} clusters of {result.images:,} images (k {result.k}: {result.chosen}) "
        f"in {result.seconds:.1f} s",
        highlight=False,
    )
