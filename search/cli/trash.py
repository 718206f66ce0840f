"""`trash move`, `trash list`, `trash restore`: acting on duplicates by moving files aside, never deleting them."""

import json
from dataclasses import asdict
from typing import Annotated

import typer
from rich.table import Table

from search.cli.common import JsonOpt, StoreOpt, err, make_settings, open_service, out, printable, run


def move(
    ids: Annotated[list[int], typer.Argument(help="Ids of the images to drop (as `clipdex duplicates` lists them)")],
    store: StoreOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Move images' files into their root's .clipdex-trash folder; they leave the store. Nothing is deleted."""
    moved = run(open_service(make_settings(store=store)).move_to_trash, ids)
    if json_out:
        typer.echo(json.dumps([asdict(t) for t in moved], default=str))
        return
    for t in moved:
        out.print(f"moved {printable(t.path)} -> {printable(t.trash_path)}", highlight=False)
    out.print(f"{len(moved)} files moved to the trash; `clipdex trash restore` moves them back", highlight=False)


def list_trash(store: StoreOpt = None, json_out: JsonOpt = False) -> None:
    """List the files clipdex moved to the trash, with the ids that restore them."""
    held = run(open_service(make_settings(store=store)).trash_list)
    if json_out:
        typer.echo(json.dumps([asdict(t) for t in held], default=str))
        return
    if not held:
        out.print("the trash is empty")
        return
    table = Table("id", "moved", "bytes", "was", box=None)
    for t in held:
        table.add_row(str(t.id), t.moved_at.isoformat(" ", "seconds"), str(t.size), printable(t.path))
    out.print(table)


def restore(
    which: Annotated[
        list[str] | None, typer.Argument(help="Trash ids, or paths (where a file was or is now)", show_default=False)
    ] = None,
    all_files: Annotated[bool, typer.Option("--all", help="Restore everything in the trash")] = False,
    store: StoreOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Move trashed files back where they were; index their folder again to search them.

    Nothing moves when any of them cannot: another file stands where one was, or a trashed file is gone.
    """
    if bool(which) == all_files:
        err.print("[red]error:[/red] give trash ids or paths, or --all", highlight=False)
        raise typer.Exit(2)
    restored = run(open_service(make_settings(store=store)).restore, which or None)
    if json_out:
        typer.echo(json.dumps([asdict(t) for t in restored], default=str))
        return
    for t in restored:
        out.print(f"restored {printable(t.path)}", highlight=False)
    roots = sorted({t.root for t in restored})
    out.print(f"{len(restored)} files restored; `clipdex index {' '.join(map(printable, roots)) or 'DIR'}` indexes "
              "them again", highlight=False)  # fmt: skip
