"""What the routes share: the service, filters and paging from query parameters, the API key, uploads."""

import ipaddress
import secrets
from datetime import date
from typing import Annotated

from fastapi import Depends, HTTPException, Query, Request, UploadFile
from fastapi import Path as PathParam
from fastapi.security import APIKeyCookie, APIKeyHeader

from indexer.decode import looks_like_image
from search.service import MAX_K, MAX_OFFSET, Filters, Service, make_filters

MAX_UPLOAD_BYTES = 20 * 1024 * 1024
MAX_FOLDER_CHARS = 4096
API_KEY_HEADER = "X-API-Key"
API_KEY_COOKIE = "clipdex_api_key"  # lets <img> tags on the page, which cannot send headers, carry the key


def get_service(request: Request) -> Service:
    return request.app.state.service


ServiceDep = Annotated[Service, Depends(get_service)]
KQuery = Annotated[int, Query(ge=1, le=MAX_K, description="Number of hits")]
ImageId = Annotated[int, PathParam(ge=1, le=2**63 - 1, description="A stored image id")]  # SQLite's integer range
OffsetQuery = Annotated[int, Query(ge=0, le=MAX_OFFSET, description="Hits to skip (paging)")]


def get_filters(
    folder: Annotated[
        str | None,
        Query(max_length=MAX_FOLDER_CHARS, description="Absolute folder, or folder relative to an indexed root"),
    ] = None,
    taken_from: Annotated[date | None, Query(description="Capture date from (inclusive), YYYY-MM-DD")] = None,
    taken_to: Annotated[date | None, Query(description="Capture date to (inclusive), YYYY-MM-DD")] = None,
    tag: Annotated[str | None, Query(max_length=200, description="A zero-shot tag the image carries")] = None,
    min_score: Annotated[float | None, Query(ge=-1, le=1, description="Minimum cosine similarity")] = None,
    keyword: Annotated[
        str | None, Query(max_length=200, description="A keyword of the image's metadata (XMP, IPTC, sidecars)")
    ] = None,
) -> Filters:
    """Filters from query parameters (the service's make_filters)."""
    return make_filters(folder, taken_from, taken_to, tag, min_score, keyword)


FiltersDep = Annotated[Filters, Depends(get_filters)]


def require_api_key(
    request: Request,
    header: Annotated[str | None, Depends(APIKeyHeader(name=API_KEY_HEADER, auto_error=False))],
    cookie: Annotated[str | None, Depends(APIKeyCookie(name=API_KEY_COOKIE, auto_error=False))],
) -> None:
    """When CLIPDEX_API_KEY is set, every API request must carry it (header, or cookie for the page)."""
    expected = request.app.state.settings.api_key
    if expected is None:
        return
    given = header or cookie or ""
    if not secrets.compare_digest(given.encode(), expected.encode()):
        raise HTTPException(401, f"this service needs its API key in the {API_KEY_HEADER} header")


def is_loopback(host: str) -> bool:
    """Whether an address to listen on can be reached from this machine only."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def require_key_to_change_files(request: Request) -> None:
    """Routes that move files or write sidecars refuse to run without an API key when the service listens beyond
    this machine."""
    if request.app.state.settings.api_key is None and not is_loopback(request.app.state.host):
        raise HTTPException(
            403,
            "moving files and writing sidecars need an API key when clipdex serves beyond this machine "
            f"({request.app.state.host}): set CLIPDEX_API_KEY for clipdex serve and send it in the {API_KEY_HEADER} "
            "header",
        )


WritesFiles = Annotated[None, Depends(require_key_to_change_files)]


async def read_upload(file: UploadFile) -> bytes:
    """An uploaded image's bytes: 413 when too big, 415 when it is not an image at all."""
    data = await file.read(MAX_UPLOAD_BYTES + 1)
    if len(data) > MAX_UPLOAD_BYTES:
        raise HTTPException(413, f"the image is over {MAX_UPLOAD_BYTES // 2**20} MiB; send a smaller one")
    if not looks_like_image(data[:16]):
        raise HTTPException(415, "the upload is not an image (JPEG, PNG, GIF, BMP, TIFF, WebP, HEIC or AVIF)")
    return data
