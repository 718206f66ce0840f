"""An image's facts, file and thumbnail; the store's stats; liveness."""

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from search.api.deps import ImageId, ServiceDep
from search.api.schemas import ErrorPublic, HealthPublic, ImagePublic, StatsPublic, TagPublic, TextLinePublic

router = APIRouter()


@router.get("/health")
def health() -> HealthPublic:
    """Liveness: the app is up and its store and model are loaded."""
    return HealthPublic(status="ok")


@router.get("/stats")
def stats(service: ServiceDep) -> StatsPublic:
    """What the store holds: counts, model, indexed folders."""
    return StatsPublic(**service.stats())


@router.get("/images/{image_id}", responses={404: {"model": ErrorPublic}})
def image_info(service: ServiceDep, image_id: ImageId) -> ImagePublic:
    """What the store knows about an image: path, size, dimensions, capture time, captions, tags, read text, and the
    title, description and keywords of its metadata."""
    info = service.image_info(image_id)
    return ImagePublic(
        id=info.id,
        path=info.path,
        name=Path(info.path).name,
        size=info.size,
        width=info.width,
        height=info.height,
        format=info.format,
        taken_at=info.taken_at.isoformat() if info.taken_at else None,
        captions=info.captions,
        tags=[TagPublic(label=label, score=score) for label, score in info.tags],
        text=[TextLinePublic(text=line.text, confidence=line.confidence, box=line.box) for line in info.text],
        title=info.title,
        description=info.description,
        keywords=info.keywords,
        thumbnail_url=f"/api/images/{info.id}/thumbnail",
        image_url=f"/api/images/{info.id}/file",
    )


@router.get("/images/{image_id}/file", response_class=FileResponse, responses={404: {"model": ErrorPublic}})
def image_file(service: ServiceDep, image_id: ImageId) -> FileResponse:
    """The image file itself (only images in the store can be served)."""
    return FileResponse(service.image_file(image_id))


@router.get("/images/{image_id}/thumbnail", response_class=FileResponse, responses={404: {"model": ErrorPublic}})
def thumbnail(service: ServiceDep, image_id: ImageId) -> FileResponse:
    """A small JPEG of the image, cached in the store; cacheable by browsers since it is keyed by content."""
    return FileResponse(service.thumbnail(image_id), media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})
