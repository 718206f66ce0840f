"""The HTTP service: a FastAPI app over one SearchEngine, plus the web page in search/web/.

Routes are thin: they validate input with pydantic/FastAPI, call the engine, and shape the answer.
Clipdex errors become 4xx here, at the edge; everything else about searching lives in search.engine.
"""

import asyncio
import os
import secrets
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal

import faiss
import torch
from fastapi import APIRouter, BackgroundTasks, Depends, FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse
from fastapi.security import APIKeyCookie, APIKeyHeader
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from sqlalchemy.exc import DatabaseError

from indexer.decode import looks_like_image
from indexer.errors import (
    BadInputError,
    ClipdexError,
    NotFoundError,
    StorageFullError,
    damage_message,
    unreachable_message,
)
from indexer.settings import Settings
from indexer.store import Hit
from search import tagging, vlm_api
from search.batching import TextBatcher
from search.engine import MAX_K, MAX_OFFSET, MAX_QUERY_CHARS, Filters, SearchEngine
from search.query import MAX_TERMS, MAX_WEIGHT, Term
from search.vlm import Conversations, VisualQA

WEB_DIR = Path(__file__).parent / "web"
MAX_UPLOAD_BYTES = 20 * 1024 * 1024
MAX_BODY_BYTES = MAX_UPLOAD_BYTES + 64 * 1024  # an upload plus its multipart headers and form fields
MAX_FOLDER_CHARS = 4096
API_KEY_HEADER = "X-API-Key"
# Each clipdex error's HTTP status; any other is a 400. A full disk is the server's trouble, not the request's.
ERROR_STATUS = {NotFoundError: 404, BadInputError: 422, StorageFullError: 503}
API_KEY_COOKIE = "clipdex_api_key"  # lets <img> tags on the page, which cannot send headers, carry the key
SearchMode = Literal["embedding", "caption", "text", "hybrid"]
SortOrder = Literal["score", "newest", "oldest"]
StoredId = Annotated[int, Field(ge=1, le=2**63 - 1)]  # SQLite's integer range


# --- schemas -------------------------------------------------------------------------------------------


class HitPublic(BaseModel):
    id: int
    path: str
    name: str
    score: float
    relevance: float | None = Field(description="With relevant=true: spreads above this query's typical score")
    caption: str | None
    taken_at: str | None
    thumbnail_url: str
    image_url: str


class SearchResults(BaseModel):
    hits: list[HitPublic]
    k: int
    offset: int


class TermCreate(BaseModel):
    """One idea of a combined query: a text or a stored image, with a weight (negative: move away from it)."""

    text: str | None = Field(None, min_length=1, max_length=MAX_QUERY_CHARS)
    image_id: StoredId | None = None
    weight: float = Field(1.0, ge=-MAX_WEIGHT, le=MAX_WEIGHT)


class QueryCreate(BaseModel):
    terms: list[TermCreate] = Field(min_length=1, max_length=MAX_TERMS)
    mode: SearchMode = "embedding"
    relevant: bool = False
    sort: SortOrder = "score"


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
    thumbnail_url: str
    image_url: str


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
    labels: list[str] = Field(max_length=tagging.MAX_LABELS, description="The label set")
    name: str = Field(tagging.DEFAULT_SET, max_length=tagging.MAX_LABEL_CHARS, description="Replaces a set so named")
    templates: list[str] | None = Field(None, max_length=tagging.MAX_TEMPLATES, description="Each with one {}")
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
    thumbnail_url: str
    image_url: str


class DuplicateGroupPublic(BaseModel):
    exact: bool  # every member has the same content
    reclaimable_bytes: int  # what the members other than the keeper take
    members: list[DuplicatePublic]  # the suggested keeper first


class DuplicatesPublic(BaseModel):
    groups: list[DuplicateGroupPublic]
    total: int  # groups in all
    limit: int
    offset: int


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


# --- dependencies --------------------------------------------------------------------------------------


def get_engine(request: Request) -> SearchEngine:
    return request.app.state.engine


EngineDep = Annotated[SearchEngine, Depends(get_engine)]
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
) -> Filters:
    """Filters from query parameters; empty strings (an empty form field) mean no filter."""
    if taken_from and taken_to and taken_from > taken_to:
        raise BadInputError("taken_from is after taken_to")
    return Filters(
        folder=folder or None, taken_from=taken_from, taken_to=taken_to, tag=tag or None, min_score=min_score
    )


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


# --- the app -------------------------------------------------------------------------------------------


def create_app(settings: Settings) -> FastAPI:
    """The clipdex service for the store in `settings`; the model loads once, when the app starts."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = SearchEngine(settings, serving=True)
        engine.text_tower.embed_texts(["warm-up"])  # load the text tower now, not on the first query
        engine.store.warm()  # open (or catch up) the index now, not on the first query
        # One thread per model call and per FAISS search; parallelism comes from serving several requests
        # at once. Each call is small, and OpenMP's barrier waits make 2-thread calls on a busy 2-core
        # machine about 10x slower (measured: a text query 900 ms instead of 80 ms, a 10k search 27 ms vs 3).
        threads = torch.get_num_threads(), faiss.omp_get_max_threads()
        torch.set_num_threads(1)
        faiss.omp_set_num_threads(1)
        # Inference and searches block for milliseconds: they run on threads (the batcher's, or FastAPI's
        # pool via run_in_threadpool) so the event loop keeps accepting and answering other requests.
        batcher = TextBatcher(engine.text_tower.embed_texts, workers=os.cpu_count() or 1)
        engine.text_encoder = batcher.embed
        app.state.engine, app.state.batcher = engine, batcher
        app.state.visual_qa = VisualQA(engine.store, settings)  # its VLM loads with the first question
        app.state.conversations = Conversations()
        app.state.tag_jobs = {}
        app.state.tag_lock = asyncio.Lock()  # one tagging job writes at a time
        app.state.ocr_jobs = {}
        app.state.ocr_lock = asyncio.Lock()
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
    app.state.settings = settings

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


async def read_upload(file: UploadFile) -> bytes:
    """An uploaded image's bytes: 413 when too big, 415 when it is not an image at all."""
    data = await file.read(MAX_UPLOAD_BYTES + 1)
    if len(data) > MAX_UPLOAD_BYTES:
        raise HTTPException(413, f"the image is over {MAX_UPLOAD_BYTES // 2**20} MiB; send a smaller one")
    if not looks_like_image(data[:16]):
        raise HTTPException(415, "the upload is not an image (JPEG, PNG, GIF, BMP, TIFF, WebP, HEIC or AVIF)")
    return data


def hit_public(hit: Hit) -> HitPublic:
    return HitPublic(
        id=hit.id,
        path=hit.path,
        name=Path(hit.path).name,
        score=hit.score,
        relevance=hit.relevance,
        caption=hit.caption,
        taken_at=hit.taken_at.isoformat() if hit.taken_at else None,
        thumbnail_url=f"/api/images/{hit.id}/thumbnail",
        image_url=f"/api/images/{hit.id}/file",
    )


def results(hits: list[Hit], k: int, offset: int) -> SearchResults:
    """Hits as the API shows them; a hit found by its caption shows that caption, others their newest."""
    return SearchResults(hits=[hit_public(h) for h in hits], k=k, offset=offset)


router = APIRouter(prefix="/api", dependencies=[Depends(require_api_key)], responses={401: {"model": ErrorPublic}})


@router.get("/health")
def health() -> HealthPublic:
    """Liveness: the app is up and its store and model are loaded."""
    return HealthPublic(status="ok")


@router.get("/stats")
def stats(engine: EngineDep) -> StatsPublic:
    """What the store holds: counts, model, indexed folders."""
    return StatsPublic(**engine.stats())


RelevantQuery = Annotated[
    bool,
    Query(
        description="Only hits that stand out from what this query scores on a typical stored image, each with its "
        "relevance; none when nothing does"
    ),
]
SortQuery = Annotated[
    SortOrder, Query(description="By score, or the best 1000 hits (past any cut-off) by capture date, undated last")
]


@router.get("/search", responses={422: {"model": ErrorPublic}})
async def search_text(
    engine: EngineDep,
    filters: FiltersDep,
    q: Annotated[
        str,
        Query(
            max_length=MAX_QUERY_CHARS,
            description='What to look for, in words; ideas combine as "beach + sunset - people" or "beach:2 + sunset"',
        ),
    ] = "",
    like: Annotated[
        list[StoredId] | None,
        Query(max_length=MAX_TERMS, description="Stored image ids to look like too (with q: more like this, but...)"),
    ] = None,
    k: KQuery = 24,
    offset: OffsetQuery = 0,
    mode: Annotated[
        SearchMode,
        Query(
            description="Rank by embedding similarity (scores are cosines), caption match (text relevance), or both by "
            "reciprocal rank fusion (hybrid; embedding search while the store has no captions). min_score needs "
            "the embedding mode"
        ),
    ] = "embedding",
    relevant: RelevantQuery = False,
    sort: SortQuery = "score",
) -> SearchResults:
    """Images that best match a description, optionally combined with stored images."""
    like_ids = [str(i) for i in like or []]
    hits = await run_in_threadpool(engine.search, q, mode, k, offset, filters, like_ids, relevant, sort)
    return results(hits, k, offset)


@router.post("/search/query", responses={404: {"model": ErrorPublic}, 422: {"model": ErrorPublic}})
async def search_query(
    engine: EngineDep, filters: FiltersDep, body: QueryCreate, k: KQuery = 24, offset: OffsetQuery = 0
) -> SearchResults:
    """A combined query in structured form: weighted texts and stored images, negative weights to move away."""
    terms = []
    for term in body.terms:
        if (term.text is None) == (term.image_id is None):
            raise BadInputError("each term has either a text or an image_id")
        terms.append(Term(term.weight, text=term.text, image=None if term.image_id is None else str(term.image_id)))
    hits = await run_in_threadpool(engine.search_terms, terms, body.mode, k, offset, filters, body.relevant, body.sort)
    return results(hits, k, offset)


@router.post(
    "/search/image",
    responses={413: {"model": ErrorPublic}, 415: {"model": ErrorPublic}, 422: {"model": ErrorPublic}},
)
async def search_image(
    engine: EngineDep,
    filters: FiltersDep,
    file: Annotated[UploadFile, File(description=f"An image file, at most {MAX_UPLOAD_BYTES // 2**20} MiB")],
    k: KQuery = 24,
    offset: OffsetQuery = 0,
    relevant: RelevantQuery = False,
) -> SearchResults:
    """Images that look like an uploaded image."""
    data = await read_upload(file)
    vector = await run_in_threadpool(engine.embed_image, data)
    hits = await run_in_threadpool(engine.search_vector, vector, k, offset, (), filters, relevant)
    return results(hits, k, offset)


@router.get("/images/{image_id}/similar", responses={404: {"model": ErrorPublic}})
def similar(
    engine: EngineDep,
    filters: FiltersDep,
    image_id: ImageId,
    k: KQuery = 24,
    offset: OffsetQuery = 0,
    relevant: RelevantQuery = False,
) -> SearchResults:
    """Stored images most like a stored one (not itself)."""
    return results(engine.similar(image_id, k, offset, filters, relevant), k, offset)


@router.get("/images/{image_id}", responses={404: {"model": ErrorPublic}})
def image_info(engine: EngineDep, image_id: ImageId) -> ImagePublic:
    """What the store knows about an image: path, size, dimensions, capture time, captions, tags."""
    info = engine.image_info(image_id)
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
        thumbnail_url=f"/api/images/{info.id}/thumbnail",
        image_url=f"/api/images/{info.id}/file",
    )


@router.get("/images/{image_id}/file", response_class=FileResponse, responses={404: {"model": ErrorPublic}})
def image_file(engine: EngineDep, image_id: ImageId) -> FileResponse:
    """The image file itself (only images in the store can be served)."""
    return FileResponse(engine.image_file(image_id))


@router.get("/images/{image_id}/thumbnail", response_class=FileResponse, responses={404: {"model": ErrorPublic}})
def thumbnail(engine: EngineDep, image_id: ImageId) -> FileResponse:
    """A small JPEG of the image, cached in the store; cacheable by browsers since it is keyed by content."""
    return FileResponse(engine.thumbnail(image_id), media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})


# --- zero-shot tagging ---------------------------------------------------------------------------------

MAX_TAG_JOBS = 100  # finished jobs remembered; their tags live on in the store


@router.post("/classify", responses={413: {"model": ErrorPublic}, 415: {"model": ErrorPublic}})
async def classify(
    engine: EngineDep,
    file: Annotated[UploadFile, File(description=f"An image file, at most {MAX_UPLOAD_BYTES // 2**20} MiB")],
    labels: Annotated[str, Form(max_length=100_000, description="Comma-separated labels: cat,dog,beach")],
    template: Annotated[list[str] | None, Form(description="Prompt templates with {} (default: an ensemble)")] = None,
    multi_label: Annotated[bool, Form(description="Score each label on its own")] = False,
) -> ClassifyResults:
    """Zero-shot classify an uploaded image against the given labels: every label, ranked, with its score."""
    data = await read_upload(file)
    label_list = tagging.parse_labels(labels)
    tagging.check_templates(template)
    ranked = await run_in_threadpool(tagging.classify_image, engine, data, label_list, template, multi_label)
    scoring = tagging.activation(engine.embedder.info.family, multi_label)
    return ClassifyResults(labels=[TagPublic(label=r.label, score=r.score) for r in ranked], scoring=scoring)


@router.post("/tag-jobs", status_code=202)
async def create_tag_job(
    request: Request, engine: EngineDep, body: TagJobCreate, background: BackgroundTasks
) -> TagJobPublic:
    """Start tagging the whole store with a label set (replacing a set of that name); poll the job for its end."""
    options = tagging.TagOptions(body.top_k, body.threshold, body.multi_label)
    spec = tagging.check_request(body.labels, body.templates, options, body.name)
    job = TagJobPublic(id=uuid.uuid4().hex, status="queued", label_set=spec.name, labels=len(spec.labels))
    remember_job(request.app.state.tag_jobs, job)
    background.add_task(run_tag_job, request, engine, spec, job)
    return job


def remember_job(jobs: dict, job) -> None:
    """Add a job, forgetting the oldest finished ones beyond MAX_TAG_JOBS (dicts keep their order)."""
    finished = [j.id for j in jobs.values() if j.status in ("done", "failed")]
    for old in finished[: max(0, len(jobs) - MAX_TAG_JOBS + 1)]:
        del jobs[old]
    jobs[job.id] = job


async def run_tag_job(request: Request, engine: SearchEngine, spec: tagging.LabelSetRequest, job: TagJobPublic) -> None:
    """Embed the prompts, then score and write the tags."""

    def done(summary: tagging.TagSummary) -> None:
        job.images, job.tags, job.seconds, job.counts = summary.images, summary.tags, summary.seconds, summary.counts

    def work() -> tagging.TagSummary:
        return tagging.run_tagging(engine, spec, tagging.embed_label_set(engine, spec))

    await run_job(request.app.state.tag_lock, job, work, done)


async def run_job(lock: asyncio.Lock, job, work: Callable[[], Any], done: Callable[[Any], None]) -> None:
    """A background job's work, on a worker thread (the event loop stays free) and under its kind's lock; the
    job's status says how it went, `done` records the result."""
    async with lock:
        job.status = "running"
        try:
            result = await run_in_threadpool(work)
        except ClipdexError as e:
            job.status, job.error = "failed", str(e)
            return
        done(result)
        job.status = "done"


@router.get("/tag-jobs/{job_id}", responses={404: {"model": ErrorPublic}})
def tag_job(request: Request, job_id: Annotated[str, PathParam(max_length=32)]) -> TagJobPublic:
    """A tagging job: its status and, when done, how many images and tags it made."""
    return known_job(request.app.state.tag_jobs, job_id, "tagging")


def known_job(jobs: dict, job_id: str, kind: str):
    job = jobs.get(job_id)
    if job is None:
        raise NotFoundError(f"no {kind} job {job_id}; jobs are forgotten when the service restarts")
    return job


# --- reading the text in images -------------------------------------------------------------------------


@router.post("/ocr-jobs", status_code=202)
async def create_ocr_job(
    request: Request,
    engine: EngineDep,
    background: BackgroundTasks,
    redo: Annotated[bool, Query(description="Read every image again, failed ones included")] = False,
) -> OcrJobPublic:
    """Start reading the text in the stored images not yet read (indexer/ocr.py); poll the job for its end."""
    job = OcrJobPublic(id=uuid.uuid4().hex, status="queued")
    remember_job(request.app.state.ocr_jobs, job)
    background.add_task(run_ocr_job, request, engine, redo, job)
    return job


async def run_ocr_job(request: Request, engine: SearchEngine, redo: bool, job: OcrJobPublic) -> None:
    from indexer.ocr import ocr_store

    def done(summary) -> None:
        job.read, job.empty, job.failed, job.seconds = summary.read, summary.empty, summary.failed, summary.seconds

    def work():
        return ocr_store(engine.store, engine.settings, redo, None, False)

    await run_job(request.app.state.ocr_lock, job, work, done)


@router.get("/ocr-jobs/{job_id}", responses={404: {"model": ErrorPublic}})
def ocr_job(request: Request, job_id: Annotated[str, PathParam(max_length=32)]) -> OcrJobPublic:
    """A text-reading job: its status and, when done, how many images had text."""
    return known_job(request.app.state.ocr_jobs, job_id, "text-reading")


@router.get("/tags", responses={404: {"model": ErrorPublic}})
def tags(
    engine: EngineDep,
    label_set: Annotated[str | None, Query(max_length=tagging.MAX_LABEL_CHARS, description="Only this set")] = None,
) -> list[LabelCountPublic]:
    """The labels in use with how many images carry each, per label set."""
    counts = tagging.label_counts(engine.store, label_set or None)
    return [LabelCountPublic(label_set=s, label=label, images=n) for s, label, n in counts]


@router.get("/duplicates", responses={422: {"model": ErrorPublic}})
def duplicates(
    engine: EngineDep,
    threshold: Annotated[
        float, Query(ge=0.5, le=1.0, description="Cosine at or above which images are near copies")
    ] = 0.95,
    folder: Annotated[
        str | None, Query(max_length=MAX_FOLDER_CHARS, description="Only images under this folder")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_K, description="Groups per page")] = 20,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET, description="Groups to skip (paging)")] = 0,
) -> DuplicatesPublic:
    """Groups of copies and near copies, largest first, each with its suggested keeper first (nothing is deleted).

    Found once per store state and threshold (at 1M images that takes minutes); later pages come from memory.
    """
    groups = engine.duplicates(threshold, folder or None)
    page = [
        DuplicateGroupPublic(
            exact=g.exact,
            reclaimable_bytes=g.reclaimable,
            members=[
                DuplicatePublic(
                    id=m.id,
                    path=m.path,
                    width=m.width,
                    height=m.height,
                    bytes=m.size,
                    similarity=m.similarity,
                    taken_at=m.taken_at.isoformat() if m.taken_at else None,
                    thumbnail_url=f"/api/images/{m.id}/thumbnail",
                    image_url=f"/api/images/{m.id}/file",
                )
                for m in g.members
            ],
        )  # fmt: skip
        for g in groups[offset : offset + limit]
    ]
    return DuplicatesPublic(groups=page, total=len(groups), limit=limit, offset=offset)


ClusterK = Annotated[int | None, Query(ge=2, le=1000, description="Number of clusters (none: by auto, or size)")]
ClusterAuto = Annotated[bool, Query(description="Without k: choose it by silhouette (else sqrt(images / 50))")]
ClusterLabels = Annotated[
    str | None, Query(max_length=100_000, description="Comma-separated labels to name clusters by (default vocabulary)")
]


def clustering(engine: SearchEngine, k: int | None, labels: str | None, auto: bool):
    """The store's clusters for these arguments: found once per store state (minutes at 1M), then from memory."""
    return engine.clusters(k, tagging.parse_labels(labels) if labels else None, auto)


@router.get("/clusters", responses={422: {"model": ErrorPublic}})
def clusters(
    engine: EngineDep,
    k: ClusterK = None,
    labels: ClusterLabels = None,
    auto: ClusterAuto = False,
    typical: Annotated[int, Query(ge=0, le=50, description="Typical images per cluster")] = 8,
) -> ClustersPublic:
    """The collection in clusters (k-means of the stored vectors), largest first, named and shown by typical images."""
    result = clustering(engine, k, labels, auto)
    return ClustersPublic(
        k=result.k,
        chosen=result.chosen,
        images=result.images,
        seconds=result.seconds,
        clusters=[
            ClusterPublic(
                number=c.number,
                size=c.size,
                labels=[TagPublic(label=label, score=fit) for label, fit in c.labels],
                typical=[hit_public(h) for h in engine.hits(c.typical(typical))],
            )
            for c in result.clusters
        ],
    )


@router.get("/clusters/{number}/images", responses={404: {"model": ErrorPublic}, 422: {"model": ErrorPublic}})
def cluster_images(
    engine: EngineDep,
    number: Annotated[int, PathParam(ge=1, le=1000, description="A cluster's number (1: the largest)")],
    k: ClusterK = None,
    labels: ClusterLabels = None,
    auto: ClusterAuto = False,
    limit: Annotated[int, Query(ge=1, le=MAX_K, description="Images per page")] = 24,
    offset: OffsetQuery = 0,
) -> SearchResults:
    """A cluster's images, most typical first (score: cosine to its centroid); k, labels, auto as for /api/clusters."""
    result = clustering(engine, k, labels, auto)
    cluster = next((c for c in result.clusters if c.number == number), None)
    if cluster is None:
        raise NotFoundError(f"no cluster {number}: this clustering has {len(result.clusters)}")
    window = slice(offset, offset + limit)
    ranked = zip(cluster.members[window].tolist(), cluster.similarity[window].tolist(), strict=True)
    return results(engine.hits(list(ranked)), limit, offset)


# /api/conversations: follow-up questions with a VLM; an unknown conversation or image is a 404
router.include_router(vlm_api.router, responses={404: {"model": ErrorPublic}})
