"""Keywords out: clipdex's tags and captions merged into the images' XMP sidecars."""

from dataclasses import asdict

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool

from search.api.deps import ServiceDep, WritesFiles
from search.api.schemas import ErrorPublic, SidecarsPublic, SidecarsWrite

router = APIRouter()


@router.post("/xmp/sidecars", responses={403: {"model": ErrorPublic}, 422: {"model": ErrorPublic}})
async def write_sidecars(service: ServiceDep, _: WritesFiles, request: SidecarsWrite) -> SidecarsPublic:
    """Merge tags and captions into each image's XMP sidecar (photo.jpg.xmp, or an existing photo.xmp), as
    `clipdex xmp write` does: image files untouched, other programs' fields kept, idempotent. Needs the API key
    beyond loopback."""
    summary = await run_in_threadpool(
        service.write_sidecars, request.tags, request.captions, request.dry_run, request.folder
    )
    return SidecarsPublic(**asdict(summary))
