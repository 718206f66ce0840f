"""The `clipdex` command: a thin layer over the service (search/service.py), one module per area.

Each command turns its flags into settings and service calls, prints the result, and turns clipdex errors into
one stderr line and exit code 2 (common.py run).
"""

import logging
import os
import sys

import typer
from rich.logging import RichHandler

from search.cli import ask, collection, searching, serve, stores, trash, xmp
from search.cli.common import err

app = typer.Typer(help="Self-hosted image search: index folders, search them by text or by image.")
store_app = typer.Typer(
    help="Manage stores: copy one between a directory and a PostgreSQL database; import and export embeddings in "
    "clip-retrieval's layout."
)
app.add_typer(store_app, name="store")
trash_app = typer.Typer(help="Move the duplicates to drop into a trash folder inside their root, and back.")
app.add_typer(trash_app, name="trash")
xmp_app = typer.Typer(help="Share keywords with digiKam, darktable and Lightroom through XMP sidecars.")
app.add_typer(xmp_app, name="xmp")

# In the order `clipdex --help` lists them.
for command in (
    stores.index,
    searching.search,
    searching.similar,
    stores.stats,
    stores.models,
    collection.tag,
    collection.tags,
    collection.duplicates,
    collection.clusters,
    serve.serve,
    stores.caption,
    stores.ocr,
):
    app.command()(command)
app.command("ask")(ask.ask_command)
app.command()(ask.chat)
store_app.command("copy")(stores.store_copy)
store_app.command("import")(stores.store_import)
store_app.command("export")(stores.store_export)
trash_app.command("move")(trash.move)
trash_app.command("list")(trash.list_trash)
trash_app.command("restore")(trash.restore)
xmp_app.command("write")(xmp.write)


@app.callback()
def main() -> None:
    # Set, not imported: importing transformers here would slow down commands that never load a model.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    # Piped, log lines are plain text: the rich handler's columns would wrap them.
    handler = RichHandler(console=err, show_path=False) if sys.stderr.isatty() else logging.StreamHandler()
    logging.basicConfig(level=logging.WARNING, format="%(message)s", handlers=[handler])


__all__ = ["app", "err"]
