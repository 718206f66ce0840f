"""Background jobs that write to the store: tagging with a label set, reading the text in images.

One job of a kind runs at a time, on a worker thread so the event loop stays free; its status says how it went.
Finished jobs are remembered (MAX_FINISHED of each kind; their results live on in the store) until the service
restarts.
"""

import asyncio
import uuid
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, BackgroundTasks, Query, Request
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel

from indexer.errors import ClipdexError, NotFoundError
from search.api.deps import ServiceDep
from search.api.schemas import ErrorPublic, OcrJobPublic, TagJobCreate, TagJobPublic
from search.service import TagOptions, check_request

MAX_FINISHED = 100
KINDS = {"tagging": TagJobPublic, "text-reading": OcrJobPublic}

router = APIRouter()


class Jobs:
    """The jobs of each kind by id, and the lock that lets one job of a kind run at a time."""

    def __init__(self):
        self.known: dict[str, dict[str, BaseModel]] = {kind: {} for kind in KINDS}
        self.locks = {kind: asyncio.Lock() for kind in KINDS}

    def add(self, kind: str, job) -> None:
        """Add a job, forgetting the oldest finished ones beyond MAX_FINISHED (dicts keep their order)."""
        jobs = self.known[kind]
        finished = [j.id for j in jobs.values() if j.status in ("done", "failed")]
        for old in finished[: max(0, len(jobs) - MAX_FINISHED + 1)]:
            del jobs[old]
        jobs[job.id] = job

    def get(self, kind: str, job_id: str):
        job = self.known[kind].get(job_id)
        if job is None:
            raise NotFoundError(f"no {kind} job {job_id}; jobs are forgotten when the service restarts")
        return job

    async def run(self, kind: str, job, work: Callable[[], Any], done: Callable[[Any], None]) -> None:
        """The job's work on a worker thread, under its kind's lock; `done` records the result."""
        async with self.locks[kind]:
            job.status = "running"
            try:
                result = await run_in_threadpool(work)
            except ClipdexError as e:
                job.status, job.error = "failed", str(e)
                return
            done(result)
            job.status = "done"


def start(request: Request, background: BackgroundTasks, kind: str, job, work: Callable, done: Callable):
    """Register a queued job and run it after the response is sent."""
    jobs: Jobs = request.app.state.jobs
    jobs.add(kind, job)
    background.add_task(jobs.run, kind, job, work, done)
    return job


@router.post("/tag-jobs", status_code=202)
async def create_tag_job(
    request: Request, service: ServiceDep, body: TagJobCreate, background: BackgroundTasks
) -> TagJobPublic:
    """Start tagging the whole store with a label set (replacing a set of that name); poll the job for its end."""
    options = TagOptions(body.top_k, body.threshold, body.multi_label)
    spec = check_request(body.labels, body.templates, options, body.name)
    job = TagJobPublic(id=uuid.uuid4().hex, status="queued", label_set=spec.name, labels=len(spec.labels))

    def done(summary) -> None:
        job.images, job.tags, job.seconds, job.counts = summary.images, summary.tags, summary.seconds, summary.counts

    return start(request, background, "tagging", job, lambda: service.tag(spec), done)


@router.get("/tag-jobs/{job_id}", responses={404: {"model": ErrorPublic}})
def tag_job(request: Request, job_id: Annotated[str, PathParam(max_length=32)]) -> TagJobPublic:
    """A tagging job: its status and, when done, how many images and tags it made."""
    return request.app.state.jobs.get("tagging", job_id)


@router.post("/ocr-jobs", status_code=202)
async def create_ocr_job(
    request: Request,
    service: ServiceDep,
    background: BackgroundTasks,
    redo: Annotated[bool, Query(description="Read every image again, failed ones included")] = False,
) -> OcrJobPublic:
    """Start reading the text in the stored images not yet read; poll the job for its end."""
    job = OcrJobPublic(id=uuid.uuid4().hex, status="queued")

    def done(summary) -> None:
        job.read, job.empty, job.failed, job.seconds = summary.read, summary.empty, summary.failed, summary.seconds

    return start(request, background, "text-reading", job, lambda: service.read_text(redo), done)


@router.get("/ocr-jobs/{job_id}", responses={404: {"model": ErrorPublic}})
def ocr_job(request: Request, job_id: Annotated[str, PathParam(max_length=32)]) -> OcrJobPublic:
    """A text-reading job: its status and, when done, how many images had text."""
    return request.app.state.jobs.get("text-reading", job_id)
