"""The collection without a query: its photos newest first, page by page, and its folders with their counts."""

from typing import Annotated

from fastapi import APIRouter, Query

from search.api.deps import FiltersDep, KQuery, ServiceDep
from search.api.schemas import ErrorPublic, FolderPublic, PhotosPublic, folder_public, photo_public

router = APIRouter()


@router.get("/images", responses={404: {"model": ErrorPublic}, 422: {"model": ErrorPublic}})
def browse(
    service: ServiceDep,
    filters: FiltersDep,
    before: Annotated[
        int | None, Query(ge=1, le=2**63 - 1, description="The last image of the page before (its next_before)")
    ] = None,
    k: KQuery = 24,
) -> PhotosPublic:
    """The indexed images meeting the filters (min_score aside: there is no query), newest first: by capture time,
    else by the file's time. Pages follow each other by `before`."""
    photos = service.browse(filters, before, k)
    return PhotosPublic(
        photos=[photo_public(p) for p in photos], k=k, next_before=photos[-1].hit.id if len(photos) == k else None
    )


@router.get("/folders")
def folders(service: ServiceDep) -> list[FolderPublic]:
    """The indexed roots and the folders under them holding indexed images, each with its count, parents first."""
    return [folder_public(f) for f in service.folders()]
