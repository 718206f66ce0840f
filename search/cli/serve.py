"""`serve`: the REST API and the search page over one store."""

from typing import Annotated

import typer

from search.cli.common import (
    DeviceOpt,
    RuntimeOpt,
    StoreOpt,
    TextModelOpt,
    err,
    make_settings,
    open_service,
    out,
    run,
)


def serve(
    store: StoreOpt = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="Port to listen on")] = 8000,
    text_model: TextModelOpt = None,
    device: DeviceOpt = None,
    runtime: RuntimeOpt = None,
) -> None:
    """Serve the store over HTTP: the REST API (docs at /docs) and the search page at /."""
    import uvicorn  # here: the other commands never need the web server

    from search.api import create_app
    from search.api.deps import is_loopback

    settings = make_settings(store=store, device=device, runtime=runtime, text_model=text_model)
    if not is_loopback(host) and settings.api_key is None:
        err.print(
            f"[yellow]warning:[/yellow] serving on {host} without an API key: anyone who can reach this "
            "address can search your images, and moving files to the trash is refused. Set CLIPDEX_API_KEY to "
            "require one.",
            highlight=False,
        )
    # Fail with a clear message before uvicorn starts: a store that cannot be opened, a text model it refuses.
    service = open_service(settings)
    if settings.text_model:
        run(lambda: service.text_tower)
    out.print(f"clipdex on http://{host}:{port}/  (API docs at /docs)", highlight=False)
    uvicorn.run(create_app(settings, host), host=host, port=port, log_level="warning")
