"""Finding images: by words and query arithmetic, by an uploaded image, by a stored image."""

from typing import Annotated

from fastapi import APIRouter, File, Query, UploadFile
from fastapi.concurrency import run_in_threadpool

from indexer.errors import BadInputError
from search.api.deps import MAX_UPLOAD_BYTES, FiltersDep, ImageId, KQuery, OffsetQuery, ServiceDep, read_upload
from search.api.schemas import ErrorPublic, QueryCreate, SearchResults, StoredId, results
from search.query import MAX_TERMS, Term
from search.service import DEFAULT_MODE, MAX_QUERY_CHARS, SearchMode, Sort

router = APIRouter()

RelevantQuery = Annotated[
    bool,
    Query(
        description="Only hits that stand out from what this query scores on a typical stored image, each with its "
        "relevance; none when nothing does"
    ),
]
SortQuery = Annotated[
    Sort, Query(description="By score, or the best 1000 hits (past any cut-off) by capture date, undated last")
]


@router.get("/search", responses={422: {"model": ErrorPublic}})
async def search_text(
    service: ServiceDep,
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
            description="Rank by embedding similarity (scores are cosines); by a match of the words in captions, read "
            "text or metadata (text relevance) or in file and folder names (the share of the query found); or all "
            "by reciprocal rank fusion (hybrid). min_score and relevant cut the embedding ranking"
        ),
    ] = DEFAULT_MODE,
    relevant: RelevantQuery = False,
    sort: SortQuery = Sort.score,
) -> SearchResults:
    """Images that best match a description, optionally combined with stored images."""
    like_ids = [str(i) for i in like or []]
    hits = await run_in_threadpool(service.search, q, mode, k, offset, filters, like_ids, relevant, sort)
    return results(hits, k, offset)


@router.post("/search/query", responses={404: {"model": ErrorPublic}, 422: {"model": ErrorPublic}})
async def search_query(
    service: ServiceDep, filters: FiltersDep, body: QueryCreate, k: KQuery = 24, offset: OffsetQuery = 0
) -> SearchResults:
    """A combined query in structured form: weighted texts and stored images, negative weights to move away."""
    terms = []
    for term in body.terms:
        if (term.text is None) == (term.image_id is None):
            raise BadInputError("each term has either a text or an image_id")
        terms.append(Term(term.weight, text=term.text, image=None if term.image_id is None else str(term.image_id)))
    hits = await run_in_threadpool(service.search_terms, terms, body.mode, k, offset, filters, body.relevant, body.sort)
    return results(hits, k, offset)


@router.post(
    "/search/image",
    responses={413: {"model": ErrorPublic}, 415: {"model": ErrorPublic}, 422: {"model": ErrorPublic}},
)
async def search_image(
    service: ServiceDep,
    filters: FiltersDep,
    file: Annotated[UploadFile, File(description=f"An image file, at most {MAX_UPLOAD_BYTES // 2**20} MiB")],
    k: KQuery = 24,
    offset: OffsetQuery = 0,
    relevant: RelevantQuery = False,
) -> SearchResults:
    """Images that look like an uploaded image."""
    data = await read_upload(file)
    hits = await run_in_threadpool(service.search_image, data, k, offset, filters, relevant)
    return results(hits, k, offset)


@router.get("/images/{image_id}/similar", responses={404: {"model": ErrorPublic}})
def similar(
    service: ServiceDep,
    filters: FiltersDep,
    image_id: ImageId,
    k: KQuery = 24,
    offset: OffsetQuery = 0,
    relevant: RelevantQuery = False,
) -> SearchResults:
    """Stored images most like a stored one (not itself)."""
    return results(service.similar(image_id, k, offset, filters, relevant), k, offset)
