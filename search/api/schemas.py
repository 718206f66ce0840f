"""What the API takes and gives: pydantic models per resource (`...Create` in, `...Public` out)."""

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from indexer.enrich.labels import DEFAULT_SET, MAX_LABEL_CHARS, MAX_LABELS, MAX_TEMPLATES
from search.query import MAX_TERMS, MAX_WEIGHT
from search.service import (
    DEFAULT_MODE,
    MAX_QUERY_CHARS,
    DuplicateKind,
    Folder,
    Hit,
    Moment,
    Photo,
    SearchMode,
    Sort,
)

StoredId = Annotated[int, Field(ge=1, le=2**63 - 1)]  # SQLite's integer range
MAX_TRASH_IDS = 1000  # files one request may move or restore


Media = Literal["image", "video"]
MEDIA = "image, or video (image_url is the video file, served with range requests)"


class MomentPublic(BaseModel):
    """A kept frame of a video that matched."""

    id: int = Field(description="The frame's id, for its thumbnail or similar (the video's own id for its first frame)")
    timestamp_s: float = Field(description="Seconds from the start of the video")
    score: float
    thumbnail_url: str = Field(description="That frame, as a JPEG")


class HitPublic(BaseModel):
    id: int
    path: str
    name: str
    score: float
    relevance: float | None = Field(description="With relevant=true: spreads above this query's typical score")
    caption: str | None
    taken_at: str | None
    thumbnail_url: str = Field(description="A JPEG; for a video, of its best matching moment")
    image_url: str
    media: Media = Field(description=MEDIA)
    timestamp_s: float | None = Field(
        description="A video: the second to play from (its best matching moment); null for an image"
    )
    duration_s: float | None = Field(description="A video's length in seconds, where its container says")
    moments: list[MomentPublic] | None = Field(
        description="A video: the moments that matched, best first (the first is at timestamp_s); null for an image"
    )


class SearchResults(BaseModel):
    hits: list[HitPublic]
    k: int
    offset: int


class PhotoPublic(BaseModel):
    id: int
    path: str
    name: str
    date: str = Field(description="What the photo is dated by: its capture time, else its file's time (UTC)")
    taken_at: str | None = Field(description="The capture time, local time without offset, when the photo has one")
    caption: str | None
    thumbnail_url: str
    image_url: str
    media: Media = Field(description=MEDIA)
    duration_s: float | None = Field(description="A video's length in seconds, where its container says")


class PhotosPublic(BaseModel):
    photos: list[PhotoPublic]
    k: int
    next_before: int | None = Field(description="Pass as before= for the next page; null after the last")


class FolderPublic(BaseModel):
    path: str
    root: str
    folder: str = Field(description='Relative to its root, as the folder filter takes it; "" for the root')
    images: int = Field(description="Indexed images in it and its subfolders")


class TermCreate(BaseModel):
    """One idea of a combined query: a text or a stored image, with a weight (negative: move away from it)."""

    text: str | None = Field(None, min_length=1, max_length=MAX_QUERY_CHARS)
    image_id: StoredId | None = None
    weight: float = Field(1.0, ge=-MAX_WEIGHT, le=MAX_WEIGHT)


class QueryCreate(BaseModel):
    terms: list[TermCreate] = Field(min_length=1, max_length=MAX_TERMS)
    mode: SearchMode = DEFAULT_MODE
    relevant: bool = False
    sort: Sort = Sort.score


class TagPublic(BaseModel):
    label: str
    score: float


class TextLinePublic(BaseModel):
    text: str
    confidence: float
    box: list[list[float]] = Field(
        description="Four [x, y] corners as fractions of the image's width and height, clockwise from the top left"
    )


class ImagePublic(BaseModel):
    id: int
    path: str
    name: str
    size: int
    width: int | None
    height: int | None
    format: str | None
    # EXIF capture times carry no time zone: the camera's local time, so no offset is claimed (RFC 3339's
    # date-time needs one, and this is not one).
    taken_at: str | None = Field(
        description="capture time as the camera recorded it, local time without offset",
        examples=["2024-06-01T12:00:00"],
    )
    captions: list[str]
    tags: list[TagPublic]
    text: list[TextLinePublic] = Field(description="Lines of text read in the image (clipdex ocr), top to bottom")
    title: str | None = Field(description="The title other programs gave it (XMP dc:title, IPTC ObjectName)")
    description: str | None = Field(description="Their description (XMP dc:description, IPTC Caption)")
    keywords: list[str] = Field(description="Their keywords (XMP dc:subject, lr:hierarchicalSubject, IPTC)")
    thumbnail_url: str = Field(description="A JPEG; for a video, of its first kept frame")
    image_url: str
    media: Media = Field(description=MEDIA)
    duration_s: float | None = Field(description="A video's length in seconds, where its container says")
    timestamp_s: float | None = Field(description="A video: the second of its first kept frame; null for an image")
    frames: list[float] = Field(description="A video: the second of every frame kept for search, in time order")
    motion_url: str | None = Field(description="A Live Photo: its movie (range requests); null for anything else")


class OcrJobPublic(BaseModel):
    id: str
    status: str  # queued, running, done or failed
    read: int | None = None  # when done: images with text
    empty: int | None = None  # images without
    failed: int | None = None
    seconds: float | None = None
    error: str | None = None  # when failed


class StatsPublic(BaseModel):
    store: str
    model: str
    text_models: list[str] = Field(description="Other text encoders measured to share the model's space")
    dim: int
    indexed: int
    skipped: int
    roots: list[str]


class HealthPublic(BaseModel):
    status: str


class ErrorPublic(BaseModel):
    # A message; for a request that fails FastAPI's own validation, its list of problems.
    detail: str | list[dict[str, Any]]


class ClassifyResults(BaseModel):
    """Labels of one image, best first; `scoring` says what a score means (see clipdex tag --help)."""

    labels: list[TagPublic]
    scoring: str


class TagJobCreate(BaseModel):
    labels: list[str] = Field(max_length=MAX_LABELS, description="The label set")
    name: str = Field(DEFAULT_SET, max_length=MAX_LABEL_CHARS, description="Replaces a set so named")
    templates: list[str] | None = Field(None, max_length=MAX_TEMPLATES, description="Each with one {}")
    top_k: int | None = Field(None, ge=1, description="Keep the best N labels per image")
    threshold: float | None = Field(None, gt=0, lt=1, description="Keep labels scoring at least this")
    multi_label: bool = Field(False, description="Score each label on its own instead of a softmax over the set")


class TagJobPublic(BaseModel):
    id: str
    status: str  # queued, running, done or failed
    label_set: str
    labels: int
    images: int | None = None  # when done
    tags: int | None = None
    seconds: float | None = None
    counts: dict[str, int] | None = None  # images per label, when done
    error: str | None = None  # when failed


class DuplicatePublic(BaseModel):
    id: int
    path: str
    width: int
    height: int
    bytes: int
    taken_at: str | None  # the capture time as the camera wrote it (no time zone)
    similarity: float  # cosine to the group's keeper
    distance: int | None  # pHash bits that differ from the keeper's (null when either has no pHash)
    thumbnail_url: str
    image_url: str


class DuplicateGroupPublic(BaseModel):
    kind: DuplicateKind  # exact (same bytes), same-picture (close pHashes) or similar (close embeddings)
    reclaimable_bytes: int  # what the members other than the keeper take
    members: list[DuplicatePublic]  # the suggested keeper first


class DuplicatesPublic(BaseModel):
    groups: list[DuplicateGroupPublic]
    total: int  # groups in all
    limit: int
    offset: int


class TrashCreate(BaseModel):
    ids: list[StoredId] = Field(min_length=1, max_length=MAX_TRASH_IDS, description="Ids of the images to drop")


class TrashRestore(BaseModel):
    ids: list[StoredId] | None = Field(None, min_length=1, max_length=MAX_TRASH_IDS, description="Trash ids")
    all: bool = Field(False, description="Restore everything in the trash (instead of ids)")


class TrashedPublic(BaseModel):
    id: int  # names it for restoring
    path: str  # where it was, and goes back to
    trash_path: str  # where it is now
    size: int
    moved_at: str


class ClusterPublic(BaseModel):
    number: int = Field(description="1 for the largest cluster, and so on")
    size: int
    labels: list[TagPublic] = Field(description="Best labels, scored by how much better they fit than elsewhere")
    typical: list[HitPublic] = Field(description="The images nearest the centroid (score: their cosine to it)")


class ClustersPublic(BaseModel):
    k: int
    chosen: str = Field(description='"given", or how the automatic choice of k went')
    images: int
    seconds: float
    clusters: list[ClusterPublic]


class LabelCountPublic(BaseModel):
    label_set: str
    label: str
    images: int


def hit_public(hit: Hit) -> HitPublic:
    # A video's hit shows the frame of its best moment; a still (no moment) its own picture.
    shown = hit.moments[0].id if hit.moments else hit.id
    return HitPublic(
        id=hit.id,
        path=hit.path,
        name=Path(hit.path).name,
        score=hit.score,
        relevance=hit.relevance,
        caption=hit.caption,
        taken_at=hit.taken_at.isoformat() if hit.taken_at else None,
        thumbnail_url=f"/api/images/{shown}/thumbnail",
        image_url=f"/api/images/{hit.id}/file",
        media=media_of(hit),
        timestamp_s=hit.timestamp_s,
        duration_s=hit.duration_s,
        moments=None if hit.moments is None else [moment_public(m) for m in hit.moments],
    )


def moment_public(moment: Moment) -> MomentPublic:
    return MomentPublic(
        id=moment.id,
        timestamp_s=moment.timestamp_s,
        score=moment.score,
        thumbnail_url=f"/api/images/{moment.id}/thumbnail",
    )


def media_of(hit: Hit) -> Media:
    """Only a video's hit carries the second to play from."""
    return "video" if hit.timestamp_s is not None else "image"


def photo_public(photo: Photo) -> PhotoPublic:
    hit = photo.hit
    return PhotoPublic(
        id=hit.id,
        path=hit.path,
        name=Path(hit.path).name,
        date=photo.date.isoformat(),
        taken_at=hit.taken_at.isoformat() if hit.taken_at else None,
        caption=hit.caption,
        thumbnail_url=f"/api/images/{hit.id}/thumbnail",
        image_url=f"/api/images/{hit.id}/file",
        media=media_of(hit),
        duration_s=hit.duration_s,
    )


def folder_public(folder: Folder) -> FolderPublic:
    return FolderPublic(path=folder.path, root=folder.root, folder=folder.relpath, images=folder.images)


def results(hits: list[Hit], k: int, offset: int) -> SearchResults:
    """Hits as the API shows them; a hit found by its caption shows that caption, others their newest."""
    return SearchResults(hits=[hit_public(h) for h in hits], k=k, offset=offset)


class SidecarsWrite(BaseModel):
    tags: bool = Field(True, description="Write the tags (dc:subject, lr:hierarchicalSubject under clipdex|)")
    captions: bool = Field(True, description="Write the newest captions (dc:description, where empty or clipdex's)")
    dry_run: bool = Field(False, description="Say what would change, write nothing")
    folder: str | None = Field(None, max_length=4096, description="Only images under this folder")


class SidecarsPublic(BaseModel):
    written: int  # sidecars made or changed (with dry_run: that would be)
    unchanged: int
    failed: dict[str, str]  # image or folder -> why its sidecar was not written
    dry_run: bool
