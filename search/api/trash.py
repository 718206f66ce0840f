"""Acting on duplicates: move images' files into their root's trash folder, list it, move them back."""

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool

from indexer.errors import BadInputError
from search.api.deps import ServiceDep, WritesFiles
from search.api.schemas import ErrorPublic, TrashCreate, TrashedPublic, TrashRestore
from search.service import Trashed

router = APIRouter()
REFUSALS = {403: {"model": ErrorPublic}, 404: {"model": ErrorPublic}, 422: {"model": ErrorPublic}}


def trashed_public(t: Trashed) -> TrashedPublic:
    return TrashedPublic(id=t.id, path=t.path, trash_path=t.trash_path, size=t.size, moved_at=t.moved_at.isoformat())


@router.get("/trash")
def trash_list(service: ServiceDep) -> list[TrashedPublic]:
    """The files moved to the trash, oldest move first, with the ids that restore them."""
    return [trashed_public(t) for t in service.trash_list()]


@router.post("/trash", responses=REFUSALS)
async def move_to_trash(service: ServiceDep, _: WritesFiles, request: TrashCreate) -> list[TrashedPublic]:
    """Move these images' files into `<root>/.clipdex-trash/` (never deleting or replacing a file); they leave the
    store. All or none: an unknown id or a vanished file moves nothing (404). Needs the API key beyond loopback."""
    moved = await run_in_threadpool(service.move_to_trash, request.ids)
    return [trashed_public(t) for t in moved]


@router.post("/trash/restore", responses=REFUSALS)
async def restore(service: ServiceDep, _: WritesFiles, request: TrashRestore) -> list[TrashedPublic]:
    """Move trashed files back where they were (trash ids, or all); indexing their folder again finds them. All or
    none: a file standing where one was refuses the lot (422). Needs the API key beyond loopback."""
    if (request.ids is None) != request.all:
        raise BadInputError("give the trash ids to restore, or all: true")
    restored = await run_in_threadpool(service.restore, None if request.all else [str(i) for i in request.ids])
    return [trashed_public(t) for t in restored]
