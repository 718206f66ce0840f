"""The service: one object that answers every operation the CLI and the API offer over a store.

Searches (text, image, stored image, query arithmetic; embedding, caption, read-text or fused rankings; filters,
paging, relevance cut-off, sorting), collection views (duplicates, clusters, tags), the passes that enrich a
store (tags, captions, read text) and an image's facts and files. Modes, sorts and defaults are declared here
once; the front ends translate requests into these calls and clipdex errors into their own (search/cli,
search/api). Heavy modules (torch, the tagging and clustering code) are imported by the operations that use
them, so a cold `clipdex search` stays fast.
"""

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import date, datetime
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from sqlalchemy import func, select

from indexer.decode import DecodeError, decode_image, read_and_hash, setup_heif
from indexer.enrich.labels import (
    LabelSetRequest,
    TagOptions,
    check_labels,
    check_request,
    check_templates,
    parse_labels,
    read_labels_file,
)
from indexer.errors import BadInputError, NotFoundError
from indexer.models.embedder import Embedder
from indexer.models.loading import canonical_name
from indexer.settings import Settings
from indexer.store import (
    FRAME,
    INDEXED,
    NO_FILTERS,
    SKIPPED,
    Caption,
    Filters,
    Hit,
    Image,
    Keyword,
    MetadataRead,
    Moment,
    Root,
    Store,
    Tag,
    TextLine,
    open_store,
)
from indexer.store.base import caption_source, substring_pieces
from indexer.trash import Trashed, move_to_trash, restore, trash_list
from search import media
from search.browse import Folder, count_folders, timeline
from search.duplicates import (
    MAX_DISTANCE,
    MAX_WINDOW,
    DuplicateGroup,
    DuplicateKind,
    DuplicateOptions,
    find_duplicates,
)
from search.query import Term, check_terms, parse_query
from search.relevance import Background, Calibration, sample_store

if TYPE_CHECKING:
    from indexer.enrich.captions import CaptionSummary
    from indexer.enrich.keywords import SidecarSummary
    from indexer.enrich.ocr import OcrSummary
    from indexer.enrich.tags import LabelScore, TagSummary
    from indexer.indexing import IndexSummary
    from indexer.store.copy import CopySummary
    from indexer.store.exchange import ExportSummary, ImportSummary
    from search.clusters import Clustering
    from search.vlm import VisualQA

# What the front ends take from here besides the Service: request and result types, the label-set checks, the
# duplicate kinds and options (declared beside the search for them).
__all__ = [
    "MAX_DISTANCE",
    "MAX_WINDOW",
    "DuplicateKind",
    "DuplicateOptions",
    "Filters",
    "Folder",
    "Hit",
    "ImageInfo",
    "LabelSetRequest",
    "Moment",
    "Photo",
    "SearchMode",
    "Service",
    "Sort",
    "TagOptions",
    "Trashed",
    "check_request",
    "check_templates",
    "make_filters",
    "parse_labels",
    "read_labels_file",
]


class SearchMode(StrEnum):
    """How a text query ranks: by embedding similarity, by a match of its words in captions, read text, metadata
    keywords or file and folder names, or all fused."""

    embedding = "embedding"
    caption = "caption"
    text = "text"
    keyword = "keyword"
    name = "name"
    hybrid = "hybrid"


class Sort(StrEnum):
    """Hits by score, or the best MAX_K by capture date."""

    score = "score"
    newest = "newest"
    oldest = "oldest"


DEFAULT_MODE = SearchMode.hybrid
MAX_K = 1000
MAX_OFFSET = 10_000
MAX_QUERY_CHARS = 1000
# What the words of a query can match: written captions, text read in images, the metadata's title, description and
# keywords (ranked by the store's full-text search), and file and folder names (by the share of the query found).
WORD_SOURCES = ("caption", "text", "keyword", "name")
RELEVANCE_SAMPLE_SECONDS = 600
# Reciprocal rank fusion (Cormack et al., 2009): score = sum over rankings of 1 / (RRF_K + rank). 60 is the
# paper's constant: it keeps one ranking's top hit from outweighing agreement between both rankings.
RRF_K = 60
# Hybrid search fuses the top max(FUSION_DEPTH, k + offset) candidates of each ranking (embedding: <= MAX_K).
FUSION_DEPTH = 100
DECODES_AT_ONCE = 2  # decodes for requests in flight at once, so concurrent uploads cannot add up
# In a store with videos a search ranks this many rows per hit asked for (at most MAX_ROWS): a video's kept frames
# crowd each other near the top, and each video is one hit.
FRAME_DEPTH = 4
MAX_ROWS = 4 * MAX_K
# A video's moments are its frames within this cosine of its best one: the scenes that match, not every frame ranked.
MOMENT_MARGIN = 0.05


@dataclass
class ImageInfo:
    """What the store knows about one indexed image."""

    id: int
    path: str
    size: int
    width: int | None
    height: int | None
    format: str | None
    taken_at: datetime | None
    captions: list[str] = field(default_factory=list)
    tags: list[tuple[str, float]] = field(default_factory=list)  # (label, score), best first
    text: list[TextLine] = field(default_factory=list)  # lines read in it (OCR), with their boxes
    # What other programs wrote in its metadata (XMP, IPTC, sidecars: indexer/enrich/keywords.py)
    title: str | None = None
    description: str | None = None
    keywords: list[str] = field(default_factory=list)
    media: str = "image"  # "image" or "video"
    duration_s: float | None = None  # a video's length, where its container says
    timestamp_s: float | None = None  # a video: the second of its first kept frame (what its thumbnail shows)
    frames: list[float] = field(default_factory=list)  # a video: the second of every kept frame, in time order
    motion: bool = False  # a Live Photo: its movie plays from Service.motion_file


@dataclass
class Photo:
    """A photo of the collection browsed without a query: its hit (score 0) and the date it is shown under: its
    capture time, else its file's modification time (UTC)."""

    hit: Hit
    date: datetime


class Service:
    """Every operation over one store; the embedding model loads on the first operation that needs it.

    `serving`: a long-running service (clipdex serve), which trades start-up time for faster answers.
    """

    def __init__(self, settings: Settings, serving: bool = False):
        self.settings = settings
        self.serving = serving
        model = canonical_name(settings.model) if settings.model else None
        self.store: Store = open_store(
            settings.store, model=model, index_memory=settings.index_memory, lock_timeout=settings.lock_timeout
        )
        self.store.serving = serving  # answer at once; the index proves itself meanwhile
        self._embedder: Embedder | None = None
        self._text_tower = None
        self._decode_slots = threading.BoundedSemaphore(DECODES_AT_ONCE)
        # Embeds one query text; the service puts its micro-batcher here. None: the model, directly.
        self.text_encoder: Callable[[str], np.ndarray] | None = None
        # Paging through a text query re-asks for the same vector: keep the recent ones.
        self.embed_text = lru_cache(maxsize=1024)(self._embed_text)
        # The last result of each long job (duplicates, clusters), keyed by its arguments and the store's state.
        self._remembered: dict[str, tuple] = {}
        self._background: tuple[float, Background | None] = (0.0, None)
        self._visual_qa: VisualQA | None = None

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            from indexer.models.runtimes import make_embedder

            self._embedder = make_embedder(self.store.model, self.settings, self.serving)
        return self._embedder

    @property
    def text_tower(self):
        """What embeds query texts: settings.text_model once it is known to share the store's space
        (indexer/models/paired_text.py), else the store model's own text tower."""
        if self._text_tower is None:
            if self.settings.text_model:
                from indexer.models.paired_text import paired_text_model

                self._text_tower = paired_text_model(
                    self.store, self.settings.text_model, self.settings.device, lambda: self.embedder
                )
            else:
                self._text_tower = self.embedder
        return self._text_tower

    def _embed_text(self, query: str) -> np.ndarray:
        return self.text_encoder(query) if self.text_encoder else self.text_tower.embed_texts([query])[0]

    def embed_query(self, query: str) -> np.ndarray:
        """The unit vector of a query text, after checking it is neither empty nor over-long."""
        query = query.strip()
        if not query:
            raise BadInputError("the query text is empty")
        if len(query) > MAX_QUERY_CHARS:
            raise BadInputError(f"the query text is over {MAX_QUERY_CHARS} characters")
        return self.embed_text(query)

    def embed_image(self, data: bytes) -> np.ndarray:
        """The unit vector of an image file's content; a file that is not a usable image is BadInputError."""
        setup_heif()
        try:
            with self._decode_slots:
                decoded = decode_image(
                    data, self.embedder.prep, min(self.settings.max_pixels, media.REQUEST_MAX_PIXELS)
                )
        except DecodeError as e:
            raise BadInputError(f"the query image cannot be used: {e.reason}") from None
        return self.embedder.embed_pixels([decoded.pixels])[0]

    def image_vector(self, target: str) -> tuple[np.ndarray, int | None]:
        """The vector of a stored image (by id or path, with its id), or of any image file (embedded, no id)."""
        if target.isdigit():
            image_id = int(target)
            vector = self.store.vector(image_id) if 0 < image_id < 2**63 else None  # beyond SQLite's integers
            if vector is None:
                raise NotFoundError(f"no indexed image with id {image_id}")
            return vector, image_id
        path = Path(target).expanduser()
        image_id = self.store.find_path(path)
        if image_id is not None:
            return self.store.vector(image_id), image_id
        if not path.is_file():
            raise NotFoundError(f"{target} is neither a stored image id nor an image file")
        try:
            data, _ = read_and_hash(path)
        except DecodeError as e:
            raise BadInputError(f"cannot read {path}: {e.reason}") from None
        return self.embed_image(data), None

    def query_vector(self, terms: list[Term]) -> tuple[np.ndarray, tuple[int, ...]]:
        """The unit vector of weighted terms (search/query.py), and the stored images among the ideas to find:
        they are left out of the hits, being their own best matches."""
        total, own = np.zeros(self.store.dim, dtype=np.float32), []
        for term in check_terms(terms):
            if term.text is not None:
                vector = self.embed_query(term.text)
            else:
                vector, image_id = self.image_vector(term.image)
                if image_id is not None and term.weight > 0:
                    own.append(image_id)
            total += np.float32(term.weight) * vector
        norm = float(np.linalg.norm(total))
        if norm < 1e-3:
            raise BadInputError("the query's terms cancel each other out: nothing is left to look for")
        return total / norm, tuple(own)

    def search_image(
        self, data: bytes, k: int = 10, offset: int = 0, filters: Filters = NO_FILTERS, relevant: bool = False
    ) -> list[Hit]:
        """Images that look like the given image file content."""
        return self.search_vector(self.embed_image(data), k, offset, filters=filters, relevant=relevant)

    def similar(
        self, target: int | str, k: int = 10, offset: int = 0, filters: Filters = NO_FILTERS, relevant: bool = False
    ) -> list[Hit]:
        """Images most like a stored one (by id or path; not itself) or like any image file."""
        vector, image_id = self.image_vector(str(target))
        exclude = () if image_id is None else (image_id,)
        return self.search_vector(vector, k, offset, exclude, filters, relevant)

    def search_vector(
        self,
        vector: np.ndarray,
        k: int,
        offset: int = 0,
        exclude: tuple[int, ...] = (),
        filters: Filters = NO_FILTERS,
        relevant: bool = False,
    ) -> list[Hit]:
        """Top-k stored images by cosine similarity to a unit vector, after skipping `offset` hits.

        `relevant`: only the hits that stand out from what this vector scores on the store's typical image
        (search/relevance.py), each with its relevance; every hit in a store of under MIN_POPULATION images.
        """
        return self.vector_hits(*self.rank_vector(vector, k, offset, exclude, filters, relevant))

    def vector_hits(
        self, page: list[tuple[int, float]], moments: dict[int, list[Moment]], calibration: Calibration | None
    ) -> list[Hit]:
        """Hits for a page of rank_vector's ranking, each with its relevance when calibrated."""
        hits = self.hits(page, moments=moments)
        if calibration is not None:
            for hit in hits:
                hit.relevance = calibration.relevance(hit.score)
        return hits

    def rank_vector(
        self,
        vector: np.ndarray,
        k: int,
        offset: int = 0,
        exclude: tuple[int, ...] = (),
        filters: Filters = NO_FILTERS,
        relevant: bool = False,
    ) -> tuple[list[tuple[int, float]], dict[int, list[Moment]], Calibration | None]:
        """search_vector's ranking without the hits' rows: the page's (id, cosine) pairs, the moments found in its
        videos, and the relevance calibration (None when not asked for, or in a store too small to tell)."""
        check_page(k, offset)
        calibration = self.background().calibrate(vector) if relevant else None
        if calibration is not None:
            cut = max(calibration.cut, filters.min_score if filters.min_score is not None else -1.0)
            filters = replace(filters, min_score=cut)
        if not self.store.has_frames():
            return self.store.search(vector, k, offset, filters, exclude), {}, calibration
        # A video's frames crowd each other near the top: rank deeper, then each video once, with its moments.
        ranked = self.store.search(vector, min(MAX_ROWS, (k + offset) * FRAME_DEPTH), 0, filters)
        items, moments = self.by_item(ranked, exclude)
        for item, found in moments.items():  # the scenes that match, not every frame ranked
            moments[item] = [m for m in found if m.score >= found[0].score - MOMENT_MARGIN]
        return items[offset : offset + k], moments, calibration

    def by_item(
        self, ranked: Sequence[tuple[int, float]], exclude: tuple[int, ...] = ()
    ) -> tuple[list[tuple[int, float]], dict[int, list[Moment]]]:
        """A ranking of rows (best first) as a ranking of items: a video's frames answer as the video, at its best
        score, with the moments found (best first); items in `exclude`, or whose frame is in it, are left out."""
        at = self.store.moments([i for i, _ in ranked] + list(exclude))
        left_out = {at.get(i, (i, None))[0] for i in exclude}
        items: dict[int, float] = {}
        moments: dict[int, list[Moment]] = {}
        for row, score in ranked:
            item, ms = at.get(row, (row, None))
            if item in left_out:
                continue
            items.setdefault(item, score)
            if ms is not None:
                moments.setdefault(item, []).append(Moment(id=row, timestamp_s=ms / 1000, score=score))
        return list(items.items()), moments

    def background(self) -> Background:
        """The sample of stored vectors that relevance is measured against, drawn again every
        RELEVANCE_SAMPLE_SECONDS: a collection's make-up changes slowly."""
        drawn_at, background = self._background
        if background is None or time.monotonic() - drawn_at > RELEVANCE_SAMPLE_SECONDS:
            background = sample_store(self.store)
            self._background = (time.monotonic(), background)
        return background

    def hits(
        self,
        ranked: list[tuple[int, float]],
        matched: dict[int, str] | None = None,
        moments: dict[int, list[Moment]] | None = None,
    ) -> list[Hit]:
        """Hits for ranked (id, score) pairs, with paths, captions and capture times from one query; `matched`
        are captions that matched the query, shown instead of an image's newest one; `moments`, the videos' frames
        found (by_item). Ids gone from the store are left out."""
        rows = self.store.hit_rows([i for i, _ in ranked])
        matched, moments = matched or {}, moments or {}
        hits = []
        for i, score in ranked:
            if i in rows:
                row, found = rows[i], moments.get(i)
                start = found[0].timestamp_s if found else None if row.timestamp_ms is None else row.timestamp_ms / 1000
                hits.append(
                    Hit(
                        id=i, path=row.path, score=score, caption=matched.get(i) or row.caption,
                        taken_at=row.taken_at, timestamp_s=start, moments=found,
                        duration_s=None if row.duration_ms is None else row.duration_ms / 1000,
                    )
                )  # fmt: skip
        return hits

    def search(
        self,
        query: str,
        mode: str = DEFAULT_MODE,
        k: int = 10,
        offset: int = 0,
        filters: Filters = NO_FILTERS,
        like: Sequence[str] = (),
        relevant: bool = False,
        sort: str = "score",
    ) -> list[Hit]:
        """A search written in the query grammar (search/query.py), plus images to look like (ids, paths, files)."""
        terms = parse_query(query) + [Term(1.0, image=target) for target in like]
        return self.search_terms(terms, mode, k, offset, filters, relevant, sort)

    def search_terms(
        self,
        terms: list[Term],
        mode: str = DEFAULT_MODE,
        k: int = 10,
        offset: int = 0,
        filters: Filters = NO_FILTERS,
        relevant: bool = False,
        sort: str = "score",
    ) -> list[Hit]:
        """Search ranked by embedding similarity, caption match, match of the text read in the images, or all of
        them fused (hybrid); hits carry a caption, or the text that matched, when they have one.

        Row filters apply in every mode; min_score (a cosine) and `relevant` to the embedding ranking (in hybrid
        mode too, where the text matches join it uncut). Several
        terms, or an image, need the embedding ranking: hybrid matches captions on the words of the terms to find.
        `sort` "newest"/"oldest" orders the best MAX_K hits (those past the cut-off) by capture time, undated last.
        """
        check_page(k, offset)
        if mode not in SearchMode.__members__:
            raise BadInputError(f"unknown search mode {mode!r}; use one of {', '.join(SearchMode)}")
        if sort not in Sort.__members__:
            raise BadInputError(f"unknown sort {sort!r}; use one of {', '.join(Sort)}")
        if mode in WORD_SOURCES and filters.min_score is not None:
            raise BadInputError(
                f"min_score is a cosine similarity: use it with the embedding or hybrid mode, not {mode}"
            )
        if sort != "score":
            hits = self.search_terms(terms, mode, MAX_K, 0, filters, relevant)
            dated = sorted((h for h in hits if h.taken_at), key=lambda h: h.taken_at, reverse=sort == "newest")
            return (dated + [h for h in hits if not h.taken_at])[offset : offset + k]
        words = " ".join(t.text for t in check_terms(terms) if t.text is not None and t.weight > 0)
        if mode in WORD_SOURCES:
            if len(terms) > 1 or not words:
                raise BadInputError(f"{mode} search matches words: combining terms or images needs embedding or hybrid")
            return self.search_captions(words, k, offset, filters, mode)
        vector, exclude = self.query_vector(terms)
        present = self.store.text_sources() | {"name"} if words else set()
        sources = [source for source in WORD_SOURCES if source in present]
        if mode == "embedding" or not sources:
            return self.search_vector(vector, k, offset, exclude, filters, relevant)
        return self.search_hybrid(vector, words, sources, k, offset, filters, exclude, relevant)

    def search_captions(
        self, query: str, k: int = 10, offset: int = 0, filters: Filters = NO_FILTERS, source: str = "caption"
    ) -> list[Hit]:
        """Images whose text of one source (WORD_SOURCES) matches the query's words; the score is the store's
        full-text relevance (higher is better; for names, the share of the query found), and each hit shows the
        text that matched (names: none, the path shows)."""
        check_page(k, offset)
        depth = k + offset if source == "name" or not self.store.has_frames() else (k + offset) * FRAME_DEPTH
        matches = self.match_captions(query, depth, filters, source)
        items, moments = self.by_item([(i, score) for i, score, _ in matches])
        page = items[offset : offset + k]
        texts = {} if source == "name" else {i: text for i, _, text in matches}
        shown = {item: texts.get(moments[item][0].id if item in moments else item) for item, _ in page}
        return self.hits(page, shown, moments)

    def search_hybrid(
        self,
        vector: np.ndarray,
        words: str,
        sources: list[str],
        k: int = 10,
        offset: int = 0,
        filters: Filters = NO_FILTERS,
        exclude: tuple[int, ...] = (),
        relevant: bool = False,
    ) -> list[Hit]:
        """Reciprocal rank fusion of the embedding ranking of `vector` and the rankings of `words` in each of
        `sources` (captions, read text, metadata; names as below); the score is the fused one.

        An image only some rankings found gets their shares; equal scores go to the better embedding rank.
        `relevant` and min_score cut the embedding ranking only: text that matches the words is itself evidence. A
        hit shows the caption or other text that matched, the caption first.

        Names rank in tiers: every candidate whose path (within its folder) holds the same share of the query's
        pieces gets the same rank, best share first. A piece in every path (a folder "Photos") then lifts every
        candidate alike and changes no order, while a folder "Paris 2019" lifts its pictures for "paris".
        """
        check_page(k, offset)
        depth = max(FUSION_DEPTH, k + offset)
        # The embedding ranking without its rows: only the fused page's are fetched (100 rows took ~3 ms).
        by_embedding, moments, calibration = self.rank_vector(vector, min(depth, MAX_K), 0, exclude, filters, relevant)
        rankings = [{image_id: rank for rank, (image_id, _) in enumerate(by_embedding, 1)}]
        matched: dict[int, str] = {}
        for source in reversed([source for source in sources if source != "name"]):  # captions last: theirs wins
            by_words = self.match_captions(words, depth, filters, source)
            items, found = self.by_item([(i, score) for i, score, _ in by_words], exclude)
            rankings.append({item: rank for rank, (item, _) in enumerate(items, 1)})
            texts = {i: text for i, _, text in by_words}
            matched.update({item: texts[found[item][0].id if item in found else item] for item, _ in items})
            for item, more in found.items():  # a frame whose text matched is a moment too
                known = {m.id for m in moments.get(item, ())}
                moments[item] = moments.get(item, []) + [m for m in more if m.id not in known]
        if "name" in sources:
            named = [image_id for image_id, _, _ in self.store.match_names(words, depth, filters)]
            candidates = set().union(*rankings, named) - set(exclude)
            rankings.append(name_tiers(words, self.store.relpaths(list(candidates))))
        if not any(rankings[1:]):  # no word matched anything: the embedding ranking, with its cosines
            return self.vector_hits(by_embedding[offset : offset + k], moments, calibration)
        fused: dict[int, float] = {}
        for ranking in rankings:
            for image_id, rank in ranking.items():
                fused[image_id] = fused.get(image_id, 0.0) + 1 / (RRF_K + rank)
        no_rank = depth + 1
        order = sorted(fused, key=lambda i: (-fused[i], *(ranking.get(i, no_rank) for ranking in rankings)))
        hits = self.hits([(i, fused[i]) for i in order[offset : offset + k]], matched, moments)
        if calibration is not None:
            cosines = dict(by_embedding)
            for hit in hits:
                hit.relevance = calibration.relevance(cosines[hit.id]) if hit.id in cosines else None
        return hits

    def match_captions(
        self, query: str, limit: int, filters: Filters = NO_FILTERS, source: str = "caption"
    ) -> list[tuple[int, float, str]]:
        """(image id, relevance, matching text) of the images whose text of one source shares words with the query."""
        query = query.strip()
        if not query:
            raise BadInputError("the query text is empty")
        if source == "name":
            return self.store.match_names(query, limit, filters)
        if source == "text":  # split as the stored text is: "A4" finds "A4" read as "A 4"
            from indexer.enrich.ocr import searchable

            query = searchable(query)
        return self.store.match_captions(query, limit, filters, source)

    # --- the collection: browsing, duplicates, clusters, tags -----------------------------------------------

    def browse(self, filters: Filters = NO_FILTERS, before: int | None = None, k: int = 24) -> list[Photo]:
        """The indexed images meeting the row filters, newest first, k after the image `before` (None: from the
        newest): keyset pages, as fast deep in the collection as at its top (search/browse.py)."""
        check_page(k, 0)
        dated = timeline(self.store, filters, before, k)
        dates = dict(dated)
        return [Photo(hit, dates[hit.id]) for hit in self.hits([(i, 0.0) for i, _ in dated])]

    def folders(self) -> list[Folder]:
        """The indexed roots and the folders under them with how many indexed images each holds, parents first;
        counted once per store state."""
        return self.remembered("folders", (), lambda: count_folders(self.store))

    def duplicates(self, options: DuplicateOptions) -> list[DuplicateGroup]:
        """The store's duplicate groups (search/duplicates.py), strongest kind first, each with its keeper first."""
        return self.remembered("duplicates", (options,), lambda: find_duplicates(self.store, options))

    def move_to_trash(self, image_ids: list[int]) -> list[Trashed]:
        """Move the files of these images into their roots' trash folders; they leave the store (indexer/trash.py)."""
        return move_to_trash(self.store, image_ids, self.settings.lock_timeout)

    def write_sidecars(
        self, tags: bool = True, captions: bool = True, dry_run: bool = False, folder: str | None = None
    ) -> "SidecarSummary":
        """Merge the images' tags and captions into their XMP sidecars, for digiKam, darktable and Lightroom
        (indexer/enrich/keywords.py); `folder` limits it to the images under one folder."""
        from indexer.enrich.keywords import write_sidecars

        if not (tags or captions):
            raise BadInputError("nothing to write: ask for tags, captions or both")
        return write_sidecars(self.store, tags, captions, dry_run, folder)

    def trash_list(self) -> list[Trashed]:
        """The files in the trash folders, oldest move first."""
        return trash_list(self.store)

    def restore(self, which: list[str] | None = None) -> list[Trashed]:
        """Move trashed files back where they were (trash ids or paths, or all); `clipdex index` finds them again."""
        return restore(self.store, which, self.settings.lock_timeout)

    def clusters(
        self, k: int | None = None, labels: list[str] | None = None, auto: bool = False, show_progress: bool = False
    ) -> "Clustering":
        """The store's clusters (search/clusters.py), named by `labels` (None: the default vocabulary)."""
        from search.clusters import cluster_store

        args = (k, tuple(labels or ()), auto)
        return self.remembered(
            "clusters", args, lambda: cluster_store(self.store, self.text_tower, k, labels, auto, show_progress)
        )

    def classify(
        self, data: bytes, labels: Sequence[str], templates: Sequence[str] | None = None, multi_label: bool = False
    ) -> tuple[list["LabelScore"], str]:
        """The labels of an image file, ranked with their scores, and how they were scored ("softmax" or
        "sigmoid"): the zero-shot pipeline (indexer/enrich/tags.py) for one image."""
        from indexer.enrich.tags import build_classifier, rank_labels

        labels, templates = check_labels(labels), check_templates(templates)
        vector = self.embed_image(data)
        classifier = build_classifier(self.embedder, labels, templates, multi_label)
        return rank_labels(classifier, vector), classifier.activation

    def tag(self, request: "LabelSetRequest", show_progress: bool = False) -> "TagSummary":
        """Tag every stored image with a checked label set (indexer/enrich/tags.py check_request) and save it."""
        from indexer.enrich.tags import build_classifier, tag_store

        _ = self.embedder  # loaded before the clock starts: label_seconds times the prompts alone
        clock = time.perf_counter()
        classifier = build_classifier(self.embedder, request.labels, request.templates, request.options.multi_label)
        label_seconds = time.perf_counter() - clock
        summary = tag_store(self.store, classifier, request.templates, request.options, request.name, show_progress)
        summary.label_seconds = label_seconds
        return summary

    def tags(self, label_set: str | None = None) -> list[tuple[str, str, int]]:
        """(label set, label, images) for every label in use, most used first."""
        from indexer.enrich.tags import label_counts

        return label_counts(self.store, label_set)

    # --- passes that add to the store: captions, read text -----------------------------------------------

    def caption(self, redo: bool = False, show_progress: bool = False) -> "CaptionSummary":
        """Caption the stored images that lack a caption from the configured captioner (all with `redo`)."""
        from indexer.enrich.captions import caption_store

        return caption_store(self.store, self.settings, redo, None, show_progress)

    def read_text(self, redo: bool = False, show_progress: bool = False) -> "OcrSummary":
        """Read the text in the stored images not yet read (all with `redo`): indexer/enrich/ocr.py."""
        from indexer.enrich.ocr import ocr_store

        return ocr_store(self.store, self.settings, redo, None, show_progress)

    def remembered(self, name: str, args: tuple, compute: Callable):
        """compute() for `args`, worked out again only once the store has changed: pages of a result that takes
        minutes at 1M images (duplicates, clusters) come from memory."""
        with self.store.session() as s:
            state = s.execute(select(func.count(), func.max(Image.indexed_at)).where(Image.status == INDEXED)).one()
        key = (args, tuple(state))
        if self._remembered.get(name, (None, None))[0] != key:
            self._remembered[name] = (key, compute())
        return self._remembered[name][1]

    def image_info(self, image_id: int) -> ImageInfo:
        """Path, file facts, captions, tags, read text and metadata of an indexed image or video (and a video's
        length and kept frames, a Live Photo's movie)."""
        with self.store.session() as s:
            row = s.execute(
                select(Image, Root.path).join(Root).where(Image.id == image_id, Image.status == INDEXED)
            ).first()
            if row is None:
                raise NotFoundError(f"no indexed image with id {image_id}")
            image, root = row
            captions = s.scalars(
                select(Caption.text)
                .where(Caption.image_id == image_id, caption_source("caption"))
                .order_by(Caption.created_at.desc())
            ).all()
            text = s.scalars(select(TextLine).where(TextLine.image_id == image_id).order_by(TextLine.id)).all()
            tags = s.execute(
                select(Tag.label, Tag.score).where(Tag.image_id == image_id).order_by(Tag.score.desc())
            ).all()
            metadata = s.get(MetadataRead, image_id)
            keywords = s.scalars(select(Keyword.keyword).where(Keyword.image_id == image_id).order_by(Keyword.id))
        video = image.timestamp_ms is not None  # only a video's row carries the second it shows
        frames = [image.timestamp_ms] + [ms for _, ms in self.store.frames(image_id)] if video else []
        return ImageInfo(
            id=image.id,
            path=str(Path(root) / image.relpath),
            size=image.size,
            width=image.width,
            height=image.height,
            format=image.format,
            taken_at=image.taken_at,
            captions=list(captions),
            tags=[(label, float(score)) for label, score in tags],
            text=list(text),
            title=metadata.title if metadata else None,
            description=metadata.description if metadata else None,
            keywords=list(keywords),
            media="video" if video else "image",
            duration_s=image.duration_ms / 1000 if image.duration_ms is not None else None,
            timestamp_s=image.timestamp_ms / 1000 if video else None,
            frames=[ms / 1000 for ms in frames],
            motion=bool(image.motion_relpath),
        )

    def image_file(self, image_id: int) -> Path:
        """The file of an indexed image or video, if it is still the file that was indexed (search/media.py)."""
        return media.image_file(self.store, image_id)

    def motion_file(self, image_id: int) -> Path:
        """The movie of a Live Photo, from beside its still (search/media.py)."""
        return media.motion_file(self.store, image_id)

    def thumbnail(self, image_id: int) -> Path:
        """A JPEG thumbnail of an indexed image, or of the frame a video or one of its kept frames shows, made once
        and cached in the store (search/media.py)."""
        cache_dir = self.store.local_dir or self.settings.cache_dir
        return media.thumbnail(self.store, cache_dir, image_id, self._decode_slots)

    @property
    def visual_qa(self) -> "VisualQA":
        """Follow-up questions about stored images (search/vlm.py); its VLM loads with the first question."""
        if self._visual_qa is None:
            from search.vlm import VisualQA

            self._visual_qa = VisualQA(self.store, self.settings)
        return self._visual_qa

    def stats(self, skipped_files: bool = False) -> dict:
        """Counts, model, roots of the store and the runtime its model runs in here (and why); with
        `skipped_files`, each skipped file and why."""
        from indexer.models.paired_text import paired_names
        from indexer.models.runtimes import runtime_status

        counts = self.store.counts()
        return {
            "store": self.store.location,
            "model": self.store.model,
            "text_models": [name for name, _ in paired_names(self.store)],
            "dim": self.store.dim,
            "indexed": counts.get(INDEXED, 0),
            "videos": self.store.count_videos(),  # of the indexed items
            "frames": counts.get(FRAME, 0),  # the videos' kept frames besides their first
            "skipped": counts.get(SKIPPED, 0),
            "roots": self.store.roots(),
            "runtime": runtime_status(self.store.model, self.settings).to_json(),
        } | ({"skipped_files": [{"path": p, "reason": r} for p, r in self.store.skipped()]} if skipped_files else {})


def name_tiers(words: str, relpaths: dict[int, str]) -> dict[int, int]:
    """{image id: rank} of the paths holding any of the query's pieces, ranked by the share they hold: equal shares,
    equal ranks (search_hybrid)."""
    pieces = substring_pieces(words)
    shares = {i: sum(piece in path.lower() for piece in pieces) for i, path in relpaths.items()}
    tiers = sorted({share for share in shares.values() if share}, reverse=True)
    return {i: tiers.index(share) + 1 for i, share in shares.items() if share}


def make_filters(
    folder: str | None = None,
    taken_from: date | None = None,
    taken_to: date | None = None,
    tag: str | None = None,
    min_score: float | None = None,
    keyword: str | None = None,
) -> Filters:
    """Filters from a request: empty strings (an empty form field) mean no filter; the dates must be in order."""
    if taken_from and taken_to and taken_from > taken_to:
        raise BadInputError("taken_from is after taken_to")
    if min_score is not None and not -1 <= min_score <= 1:
        raise BadInputError("min_score is a cosine similarity: between -1 and 1")
    return Filters(
        folder=folder or None,
        taken_from=taken_from,
        taken_to=taken_to,
        tag=tag or None,
        min_score=min_score,
        keyword=keyword or None,
    )


# --- what comes before a Service: building a store, copying one, choosing a model ----------------------------


def index_folder(
    folder: Path, settings: Settings, show_progress: bool, caption: bool = False, ocr: bool = False, retag: bool = False
) -> "IndexSummary":
    """Bring the store up to date with a folder, and optionally caption, read and tag what changed
    (indexer/indexing.py); the store is made on the first run."""
    from indexer.indexing import index_folder

    return index_folder(folder, settings, show_progress, caption=caption, ocr=ocr, retag=retag)


def copy_store(source: str, destination: str, settings: Settings, show_progress: bool) -> "CopySummary":
    """Copy a store, vectors, captions and tags included, into a new directory or an empty database; a re-run
    continues an interrupted copy (indexer/store/copy.py)."""
    from indexer.store.copy import copy_store

    src = open_store(source)
    dst = open_store(destination, model=src.model, dim=src.dim, create=True)
    return copy_store(src, dst, settings.lock_timeout, show_progress)


def import_embeddings(
    source: Path, model: str | None, settings: Settings, root: Path | None, show_progress: bool
) -> "ImportSummary":
    """Add embeddings made elsewhere, in clip-retrieval's layout, to the store (made when missing); a re-run adds only
    what the store lacks (indexer/store/exchange.py)."""
    from indexer.store.exchange import import_embeddings

    return import_embeddings(source, canonical_name(model) if model else None, settings, root, show_progress)


def export_embeddings(destination: Path, settings: Settings, shard_size: int, show_progress: bool) -> "ExportSummary":
    """Write the store's indexed images in clip-retrieval's layout, for autofaiss, clip-retrieval and the like
    (indexer/store/exchange.py)."""
    from indexer.store.exchange import export_embeddings

    store = open_store(settings.store)
    return export_embeddings(store, destination, settings.lock_timeout, shard_size, show_progress)


def model_catalogue() -> tuple[list[dict], dict]:
    """The embedding models to choose from, each with the cost measured here, and where those figures come from
    (indexer/models/catalog.py)."""
    from indexer.models.catalog import CATALOG, measured

    figures = measured()
    rows = [{**asdict(e), **figures["models"].get(e.id, {})} for e in CATALOG]
    for row in rows:
        for key in ("kind", "vision", "text", "vocab_size", "image_size", "patch_size", "max_patches", "extra"):
            del row[key]  # how bench/models.py rebuilds it, not what a user chooses by
    return rows, {k: v for k, v in figures.items() if k != "models"}


def measured_runtimes(settings: Settings) -> dict:
    """The CPU runtimes measured on this CPU for each model used here: per tower, each candidate's rate and
    agreement with fp32 and the choice (indexer/models/runtime_choice.py)."""
    from indexer.models.cpu import cpu_id
    from indexer.models.runtime_choice import measured_here

    measured = [{"model": name, **choice.to_json()} for name, choice in measured_here(settings.cache_dir)]
    return {"cpu": cpu_id(), "measured": measured}


def check_page(k: int, offset: int) -> None:
    if not 1 <= k <= MAX_K:
        raise BadInputError(f"k must be between 1 and {MAX_K}")
    if not 0 <= offset <= MAX_OFFSET:
        raise BadInputError(f"offset must be between 0 and {MAX_OFFSET}")
