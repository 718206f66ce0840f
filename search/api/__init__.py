"""The HTTP service: a FastAPI app over one Service (search/service.py), plus the web page in search/web/.

Routes are thin, one module per area: they validate input with pydantic/FastAPI, call the service, and shape the
answer (schemas.py). Clipdex errors become 4xx here, at the edge; everything about searching lives in the service.
"""

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import faiss
import torch
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy.exc import DatabaseError

from indexer.errors import (
    BadInputError,
    ClipdexError,
    NotFoundError,
    StorageFullError,
    damage_message,
    unreachable_message,
)
from indexer.settings import Settings
from search.api import ask, browse, collection, images, jobs, searching, trash, xmp
from search.api.deps import MAX_UPLOAD_BYTES, require_api_key
from search.api.schemas import ErrorPublic
from search.query_batcher import TextBatcher
from search.service import Service
from search.vlm import Conversations

WEB_DIR = Path(__file__).parent.parent / "web"
MAX_BODY_BYTES = MAX_UPLOAD_BYTES + 64 * 1024  # an upload plus its multipart headers and form fields
# Each clipdex error's HTTP status; any other is a 400. A full disk is the server's trouble, not the request's.
ERROR_STATUS = {NotFoundError: 404, BadInputError: 422, StorageFullError: 503}

router = APIRouter(prefix="/api", dependencies=[Depends(require_api_key)], responses={401: {"model": ErrorPublic}})
for area in (browse, images, searching, jobs, collection, trash, xmp):
    router.include_router(area.router)
router.include_router(ask.router, responses={404: {"model": ErrorPublic}})


def create_app(settings: Settings, host: str = "127.0.0.1") -> FastAPI:
    """The clipdex service for the store in `settings`; the model loads once, when the app starts. `host`: the
    address it listens on (routes that move files need an API key beyond this machine)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service = Service(settings, serving=True)
        service.text_tower.embed_texts(["warm-up"])  # load the text tower now, not on the first query
        service.store.warm()  # open (or catch up) the index now, not on the first query
        # One thread per model call and per FAISS search; parallelism comes from serving several requests
        # at once. Each call is small, and OpenMP's barrier waits make 2-thread calls on a busy 2-core
        # machine about 10x slower (measured: a text query 900 ms instead of 80 ms, a 10k search 27 ms vs 3).
        threads = torch.get_num_threads(), faiss.omp_get_max_threads()
        torch.set_num_threads(1)
        faiss.omp_set_num_threads(1)
        # Inference and searches block for milliseconds: they run on threads (the batcher's, or FastAPI's
        # pool via run_in_threadpool) so the event loop keeps accepting and answering other requests.
        batcher = TextBatcher(service.text_tower.embed_texts, workers=os.cpu_count() or 1)
        service.text_encoder = batcher.embed
        app.state.service, app.state.batcher = service, batcher
        app.state.conversations = Conversations()
        app.state.jobs = jobs.Jobs()
        try:
            yield
        finally:
            batcher.close()
            torch.set_num_threads(threads[0])
            faiss.omp_set_num_threads(threads[1])

    app = FastAPI(
        title="clipdex",
        summary="Search a folder of images by text, by image, or by a stored image.",
        lifespan=lifespan,
        # Refused with 413 by Content-Length before any byte is read, and a body sent without one (chunked) as
        # soon as it passes the limit (a 1 GiB upload was spooled whole to disk before its 413).
        max_body_size=MAX_BODY_BYTES,
        responses={400: {"model": ErrorPublic}, 422: {"model": ErrorPublic}},
    )
    app.state.settings, app.state.host = settings, host

    @app.exception_handler(DatabaseError)
    async def database_error(_request: Request, e: DatabaseError) -> JSONResponse:
        message = damage_message(e) or unreachable_message(e)
        if message is None:
            raise e
        return JSONResponse({"detail": message}, status_code=503)

    @app.exception_handler(ClipdexError)
    async def clipdex_error(_request: Request, e: ClipdexError) -> JSONResponse:
        status = next((code for kind, code in ERROR_STATUS.items() if isinstance(e, kind)), 400)
        return JSONResponse({"detail": str(e)}, status_code=status)

    app.include_router(router)

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(WEB_DIR / "index.html")

    app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")
    return app
