"""Finding images: `search` (words, query arithmetic, images to look like) and `similar`."""

from typing import Annotated

import typer

from search.cli.ask import ask_about_hits
from search.cli.common import (
    DeviceOpt,
    FolderOpt,
    JsonOpt,
    KeywordOpt,
    KOpt,
    MinScoreOpt,
    ModeOpt,
    OffsetOpt,
    RelevantOpt,
    RuntimeOpt,
    SortOpt,
    StoreOpt,
    TagOpt,
    TakenFromOpt,
    TakenToOpt,
    TextModelOpt,
    VlmOpt,
    filters,
    make_settings,
    open_service,
    print_hits,
    run,
)
from search.service import DEFAULT_MODE, Sort


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
    keyword: KeywordOpt = None,
    folder: FolderOpt = None,
    taken_from: TakenFromOpt = None,
    taken_to: TakenToOpt = None,
    min_score: MinScoreOpt = None,
    mode: ModeOpt = DEFAULT_MODE,
    store: StoreOpt = None,
    text_model: TextModelOpt = None,
    device: DeviceOpt = None,
    runtime: RuntimeOpt = None,
    json_out: JsonOpt = False,
    ask: Annotated[str | None, typer.Option("--ask", help="Ask a VLM this question about the top hits")] = None,
    vlm: VlmOpt = None,
) -> None:
    """Find images matching a text description, optionally combined with images (--like)."""
    wanted = filters(folder, taken_from, taken_to, tag, min_score, keyword)
    settings = make_settings(store=store, device=device, runtime=runtime, text_model=text_model, vlm=vlm)
    service = open_service(settings)
    hits = run(service.search, query, mode.value, k, offset, wanted, like or (), relevant, sort.value)
    print_hits(hits, json_out, relevant)
    if ask:
        ask_about_hits(service, hits, ask)


def similar(
    target: Annotated[str, typer.Argument(help="A stored image id, a stored path, or any image file")],
    k: KOpt = 10,
    offset: OffsetOpt = 0,
    relevant: RelevantOpt = False,
    tag: TagOpt = None,
    keyword: KeywordOpt = None,
    folder: FolderOpt = None,
    taken_from: TakenFromOpt = None,
    taken_to: TakenToOpt = None,
    min_score: MinScoreOpt = None,
    store: StoreOpt = None,
    device: DeviceOpt = None,
    runtime: RuntimeOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Find images that look like an image (a stored image is not its own hit)."""
    wanted = filters(folder, taken_from, taken_to, tag, min_score, keyword)
    service = open_service(make_settings(store=store, device=device, runtime=runtime))
    print_hits(run(service.similar, target, k, offset, wanted, relevant), json_out, relevant)
