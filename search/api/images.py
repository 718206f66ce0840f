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
        media=info.media,
        duration_s=info.duration_s,
        timestamp_s=info.timestamp_s,
        frames=info.frames,
        motion_url=f"/api/images/{info.id}/motion" if info.motion else None,
    )


# Video suffixes Python's mimetypes misses or maps to something else (.mts to a 3D model, .3gp to audio); the rest
# it guesses right (video/mp4, video/webm, ...), as it does for images.
VIDEO_TYPES = {
    ".mts": "video/mp2t", ".m2ts": "video/mp2t", ".m2t": "video/mp2t", ".3gp": "video/3gpp", ".3g2": "video/3gpp2",
    ".asf": "video/x-ms-asf", ".f4v": "video/mp4", ".divx": "video/x-msvideo", ".vob": "video/mpeg",
    ".mxf": "application/mxf",
}  # fmt: skip


def file_response(path: Path) -> FileResponse:
    """A file with its media type; Starlette's FileResponse answers Range requests (206), so videos seek."""
    return FileResponse(path, media_type=VIDEO_TYPES.get(path.suffix.lower()))


@router.get("/images/{image_id}/file", response_class=FileResponse, responses={404: {"model": ErrorPublic}})
def image_file(service: ServiceDep, image_id: ImageId) -> FileResponse:
    """The image or video file itself (only files in the store can be served); videos answer Range requests."""
    return file_response(service.image_file(image_id))


@router.get("/images/{image_id}/motion", response_class=FileResponse, responses={404: {"model": ErrorPublic}})
def motion_file(service: ServiceDep, image_id: ImageId) -> FileResponse:
    """A Live Photo's movie (Range requests answered); 404 for anything else."""
    return file_response(service.motion_file(image_id))


@router.get("/images/{image_id}/thumbnail", response_class=FileResponse, responses={404: {"model": ErrorPublic}})
def thumbnail(service: ServiceDep, image_id: ImageId) -> FileResponse:
    """A small JPEG of the image (of a video or a video's kept frame: the frame it shows), cached in the store;
    cacheable by browsers since it is keyed by content."""
    return FileResponse(service.thumbnail(image_id), media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})
