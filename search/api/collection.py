"""The collection as a whole: zero-shot classification and tags, duplicates, clusters."""

from dataclasses import asdict
from typing import Annotated

from fastapi import APIRouter, File, Form, Query, UploadFile
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool

from indexer.enrich.labels import MAX_LABEL_CHARS
from indexer.errors import NotFoundError
from search.api.deps import MAX_FOLDER_CHARS, MAX_UPLOAD_BYTES, OffsetQuery, ServiceDep, read_upload
from search.api.schemas import (
    ClassifyResults,
    ClusterPublic,
    ClustersPublic,
    DuplicateGroupPublic,
    DuplicatePublic,
    DuplicatesPublic,
    ErrorPublic,
    LabelCountPublic,
    SearchResults,
    TagPublic,
    hit_public,
    results,
)
from search.service import (
    MAX_DISTANCE,
    MAX_K,
    MAX_OFFSET,
    MAX_WINDOW,
    DuplicateKind,
    DuplicateOptions,
    Service,
    check_templates,
    parse_labels,
)

router = APIRouter()


@router.post("/classify", responses={413: {"model": ErrorPublic}, 415: {"model": ErrorPublic}})
async def classify(
    service: ServiceDep,
    file: Annotated[UploadFile, File(description=f"An image file, at most {MAX_UPLOAD_BYTES // 2**20} MiB")],
    labels: Annotated[str, Form(max_length=100_000, description="Comma-separated labels: cat,dog,beach")],
    template: Annotated[list[str] | None, Form(description="Prompt templates with {} (default: an ensemble)")] = None,
    multi_label: Annotated[bool, Form(description="Score each label on its own")] = False,
) -> ClassifyResults:
    """Zero-shot classify an uploaded image against the given labels: every label, ranked, with its score."""
    data = await read_upload(file)
    label_list = parse_labels(labels)
    check_templates(template)  # before the upload is decoded
    ranked, scoring = await run_in_threadpool(service.classify, data, label_list, template, multi_label)
    return ClassifyResults(labels=[TagPublic(label=r.label, score=r.score) for r in ranked], scoring=scoring)


@router.get("/tags", responses={404: {"model": ErrorPublic}})
def tags(
    service: ServiceDep,
    label_set: Annotated[str | None, Query(max_length=MAX_LABEL_CHARS, description="Only this set")] = None,
) -> list[LabelCountPublic]:
    """The labels in use with how many images carry each, per label set."""
    counts = service.tags(label_set or None)
    return [LabelCountPublic(label_set=s, label=label, images=n) for s, label, n in counts]


DEFAULTS = DuplicateOptions()


@router.get("/duplicates", responses={422: {"model": ErrorPublic}})
def duplicates(
    service: ServiceDep,
    kind: Annotated[
        list[DuplicateKind] | None, Query(description="Only these kinds (repeatable; default: all)")
    ] = None,
    distance: Annotated[
        int, Query(ge=0, le=MAX_DISTANCE, description="pHash bits a copy of the same picture may differ by")
    ] = DEFAULTS.distance,
    similarity: Annotated[
        float, Query(ge=0.5, le=1.0, description="Cosine at or above which shots are similar")
    ] = DEFAULTS.similarity,
    window: Annotated[
        float, Query(ge=0, le=MAX_WINDOW, description="Seconds apart similar shots may be taken")
    ] = DEFAULTS.window,
    folder: Annotated[
        str | None, Query(max_length=MAX_FOLDER_CHARS, description="Only images under this folder")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_K, description="Groups per page")] = 20,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET, description="Groups to skip (paging)")] = 0,
) -> DuplicatesPublic:
    """Groups of exact copies, copies of one picture and similar shots, strongest kind then largest first, each
    with its suggested keeper first (nothing is deleted: POST /api/trash moves the ones to drop aside).

    Found once per store state and options (at 1M images that takes minutes); later pages come from memory.
    """
    options = DuplicateOptions(tuple(kind or DuplicateKind), distance, similarity, window, folder or None)
    groups = service.duplicates(options)
    page = [
        DuplicateGroupPublic(
            kind=g.kind,
            reclaimable_bytes=g.reclaimable,
            members=[
                DuplicatePublic(
                    **asdict(m) | {"taken_at": m.taken_at.isoformat() if m.taken_at else None},
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


def clustering(service: Service, k: int | None, labels: str | None, auto: bool):
    """The store's clusters for these arguments: found once per store state (minutes at 1M), then from memory."""
    return service.clusters(k, parse_labels(labels) if labels else None, auto)


@router.get("/clusters", responses={422: {"model": ErrorPublic}})
def clusters(
    service: ServiceDep,
    k: ClusterK = None,
    labels: ClusterLabels = None,
    auto: ClusterAuto = False,
    typical: Annotated[int, Query(ge=0, le=50, description="Typical images per cluster")] = 8,
) -> ClustersPublic:
    """The collection in clusters (k-means of the stored vectors), largest first, named and shown by typical images."""
    result = clustering(service, k, labels, auto)
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
                typical=[hit_public(h) for h in service.hits(c.typical(typical))],
            )
            for c in result.clusters
        ],
    )


@router.get("/clusters/{number}/images", responses={404: {"model": ErrorPublic}, 422: {"model": ErrorPublic}})
def cluster_images(
    service: ServiceDep,
    number: Annotated[int, PathParam(ge=1, le=1000, description="A cluster's number (1: the largest)")],
    k: ClusterK = None,
    labels: ClusterLabels = None,
    auto: ClusterAuto = False,
    limit: Annotated[int, Query(ge=1, le=MAX_K, description="Images per page")] = 24,
    offset: OffsetQuery = 0,
) -> SearchResults:
    """A cluster's images, most typical first (score: cosine to its centroid); k, labels, auto as for /api/clusters."""
    result = clustering(service, k, labels, auto)
    cluster = next((c for c in result.clusters if c.number == number), None)
    if cluster is None:
        raise NotFoundError(f"no cluster {number}: this clustering has {len(result.clusters)}")
    window = slice(offset, offset + limit)
    ranked = zip(cluster.members[window].tolist(), cluster.similarity[window].tolist(), strict=True)
    return results(service.hits(list(ranked)), limit, offset)
