"""Row filters on searches (folder, capture dates, tag, keyword, minimum score), as SQL every backend runs."""

from dataclasses import dataclass, replace
from datetime import date, datetime, time

from sqlalchemy import Select, func, select

from indexer.store.schema import INDEXED, SEARCHED, Image, Keyword, Root, Tag


@dataclass(frozen=True)
class Filters:
    """Conditions a hit must meet besides its score; None means no condition."""

    folder: str | None = None  # an absolute folder, or a folder relative to an indexed root
    taken_from: date | None = None  # capture date, inclusive; images without one are left out
    taken_to: date | None = None
    tag: str | None = None  # a zero-shot label given to the image (case-insensitive)
    min_score: float | None = None
    keyword: str | None = None  # a keyword from the image's metadata (case-insensitive)

    @property
    def selects_rows(self) -> bool:
        """True when the filters narrow the set of images (min_score only cuts the ranked list)."""
        return any(v is not None for v in (self.folder, self.taken_from, self.taken_to, self.tag, self.keyword))

    @property
    def rows_only(self) -> "Filters":
        """These filters without min_score."""
        return replace(self, min_score=None)


NO_FILTERS = Filters()


def matching_ids(filters: Filters, frames: bool = False) -> Select:
    """SELECT of the ids of indexed images that meet the row filters (with `frames`, and of videos' kept frames)."""
    return filtered(select(Image.id), filters, frames)


def filtered(query: Select, filters: Filters, frames: bool = False) -> Select:
    """`query`, which selects from images (or joins them), kept to the indexed images that meet the row filters;
    with `frames`, videos' kept frames too (what searches rank), which meet them when their video does: a frame
    row has its video's folder and dates, and tags and keywords are given to the video."""
    query = query.where(Image.status.in_(SEARCHED) if frames else Image.status == INDEXED)
    item = func.coalesce(Image.video_id, Image.id) if frames else Image.id
    if filters.folder is not None:
        query = query.join(Root, Root.id == Image.root_id).where(folder_condition(filters.folder))
    if filters.taken_from is not None:
        query = query.where(Image.taken_at >= datetime.combine(filters.taken_from, time.min))
    if filters.taken_to is not None:
        query = query.where(Image.taken_at <= datetime.combine(filters.taken_to, time.max))
    if filters.tag is not None:
        tagged = select(Tag.image_id).where(func.lower(Tag.label) == filters.tag.strip().lower())
        query = query.where(item.in_(tagged))
    if filters.keyword is not None:
        keyworded = select(Keyword.image_id).where(Keyword.folded == filters.keyword.strip().lower())
        query = query.where(item.in_(keyworded))
    return query


def folder_condition(folder: str):
    """SQL condition: the image lies under `folder`, an absolute path or a path relative to its root."""
    prefix = folder.strip().rstrip("/") + "/"
    column = Root.path + "/" + Image.relpath if prefix.startswith("/") else Image.relpath
    return column.startswith(prefix, autoescape=True)
