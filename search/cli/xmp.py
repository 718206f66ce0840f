"""`xmp write`: clipdex's tags and captions into the XMP sidecars other photo programs read."""

import json
from dataclasses import asdict
from typing import Annotated

import typer

from search.cli.common import FolderOpt, JsonOpt, StoreOpt, make_settings, open_service, out, printable, run


def write(
    tags: Annotated[bool, typer.Option("--tags", help="Write the tags (dc:subject, lr:hierarchicalSubject)")] = False,
    captions: Annotated[bool, typer.Option("--captions", help="Write the newest captions (dc:description)")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Say what would change, write nothing")] = False,
    folder: FolderOpt = None,
    store: StoreOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Merge tags and captions into each image's XMP sidecar (photo.jpg.xmp, or an existing photo.xmp).

    Without --tags or --captions, both. Image files are never touched, other programs' fields are kept, keywords
    are only added (clipdex's own sit under clipdex| in lr:hierarchicalSubject), and a description is written only
    where there is none or it is clipdex's. A second run changes nothing.
    """
    both = not (tags or captions)
    service = open_service(make_settings(store=store))
    summary = run(service.write_sidecars, tags or both, captions or both, dry_run, folder)
    if json_out:
        typer.echo(json.dumps(asdict(summary)))
        return
    for where, why in summary.failed.items():
        out.print(f"not written: {printable(where)}: {why}", highlight=False)
    out.print(summary.line(), highlight=False)
