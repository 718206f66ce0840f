"""Open a store and answer queries: by text, by image, by stored image; filters, paging, metadata, files.

Text queries rank by embedding similarity, by caption match (the store's full-text search), or by both fused (hybrid).
"""

import os
import stat
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image as PILImage
from PIL import ImageOps
from sqlalchemy import func, select

from indexer.decode import DecodeError, decode_image, read_and_hash, setup_heif
from indexer.embed import Embedder
from indexer.errors import BadInputError, NotFoundError, StorageFullError, is_disk_full
from indexer.models import canonical_name
from indexer.settings import Settings
from indexer.store import INDEXED, NO_FILTERS, Caption, Filters, Hit, Image, Root, Store, Tag, TextLine, open_store
from indexer.store.base import caption_source
from search.query import Term, check_terms, parse_query
from search.relevance import Background, sample_store

if TYPE_CHECKING:
    from search.clusters import Clustering
    from search.duplicates import DuplicateGroup

MAX_K = 1000
MAX_OFFSET = 10_000
MAX_QUERY_CHARS = 1000
SEARCH_MODES = ("embedding", "caption", "text", "hybrid")
WORD_SOURCES = ("caption", "text")  # what the words of a query can match: written captions, text read in images
SORTS = ("score", "newest", "oldest")
RELEVANCE_SAMPLE_SECONDS = 600
# Reciprocal rank fusion (Cormack et al., 2009): score = sum over rankings of 1 / (RRF_K + rank). 60 is the
# paper's constant: it keeps one ranking's top hit from outweighing agreement between both rankings.
RRF_K = 60
# Hybrid search fuses the top max(FUSION_DEPTH, k + offset) candidates of each ranking (embedding: <= MAX_K).
FUSION_DEPTH = 100
THUMB_DIR = "thumbs"
THUMB_EDGE = 384  # pixels on the long side: sharp in a ~190 px grid cell on a 2x screen
# What one request may decode (an upload, a thumbnail), far below the indexer's limit: a 24 KB 1-bit PNG can
# be 14,000 x 14,000 pixels, 590 MB as RGB. JPEGs decode at reduced size (draft) before this is counted.
REQUEST_MAX_PIXELS = 40_000_000
DECODES_AT_ONCE = 2  # decodes for requests in flight at once, so concurrent uploads cannot add up


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


class SearchEngine:
    """Queries over one store; the embedding model loads on the first query that needs it.

    `serving`: the engine of a long-running service, which trades start-up time for faster answers.
    """

    def __init__(self, settings: Settings, serving: bool = False):
        self.settings = settings
        self.serving = serving
        model = canonical_name(settings.model) if settings.model else None
        self.store: Store = open_store(
            settings.store, model=model, index_memory=settings.index_memory, lock_timeout=settings.lock_timeout
        )
        self.store.check_in_background = serving  # answer at once; the index proves itself meanwhile
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

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            from indexer.runtimes import make_embedder

            self._embedder = make_embedder(self.store.model, self.settings, self.serving)
        return self._embedder

    @property
    def text_tower(self):
        """What embeds query texts: settings.text_model once it is known to share the store's space
        (search/text_models.py), else the store model's own text tower."""
        if self._text_tower is None:
            if self.settings.text_model:
                from search.text_models import paired_text_model

                self._text_tower = paired_text_model(
                    self.store, self.settings.text_model, self.settings.device, lambda: self.embedder
                )
            else:
                self._text_tower = self.embedder
        return self._text_tower

    def search_text(self, query: str, k: int = 10, offset: int = 0, filters: Filters = NO_FILTERS) -> list[Hit]:
        """Images that best match a description (one idea: no query arithmetic)."""
        return self.search_vector(self.embed_query(query), k, offset, filters=filters)

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
                decoded = decode_image(data, self.embedder.prep, min(self.settings.max_pixels, REQUEST_MAX_PIXELS))
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
        check_page(k, offset)
        calibration = self.background().calibrate(vector) if relevant else None
        if calibration is None:  # not asked for, or a store too small to tell (search/relevance.py)
            return self.hits(self.store.search(vector, k, offset, filters, exclude))
        cut = max(calibration.cut, filters.min_score if filters.min_score is not None else -1.0)
        hits = self.hits(self.store.search(vector, k, offset, replace(filters, min_score=cut), exclude))
        for hit in hits:
            hit.relevance = calibration.relevance(hit.score)
        return hits

    def background(self) -> Background:
        """The sample of stored vectors that relevance is measured against, drawn again every
        RELEVANCE_SAMPLE_SECONDS: a collection's make-up changes slowly."""
        drawn_at, background = self._background
        if background is None or time.monotonic() - drawn_at > RELEVANCE_SAMPLE_SECONDS:
            background = sample_store(self.store)
            self._background = (time.monotonic(), background)
        return background

    def hits(self, ranked: list[tuple[int, float]], matched: dict[int, str] | None = None) -> list[Hit]:
        """Hits for ranked (id, score) pairs, with paths, captions and capture times from one query; `matched`
        are captions that matched the query, shown instead of an image's newest one. Ids gone from the store are
        left out."""
        rows = self.store.hit_rows([i for i, _ in ranked])
        matched = matched or {}
        return [
            Hit(id=i, path=rows[i][0], score=score, caption=matched.get(i) or rows[i][1], taken_at=rows[i][2])
            for i, score in ranked
            if i in rows
        ]

    def search(
        self,
        query: str,
        mode: str = "hybrid",
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
        mode: str = "hybrid",
        k: int = 10,
        offset: int = 0,
        filters: Filters = NO_FILTERS,
        relevant: bool = False,
        sort: str = "score",
    ) -> list[Hit]:
        """Search ranked by embedding similarity, caption match, match of the text read in the images, or all of
        them fused (hybrid); hits carry a caption, or the text that matched, when they have one.

        Row filters apply in every mode; min_score (a cosine) and `relevant` to the embedding ranking. Several
        terms, or an image, need the embedding ranking: hybrid matches captions on the words of the terms to find.
        `sort` "newest"/"oldest" orders the best MAX_K hits (those past the cut-off) by capture time, undated last.
        """
        check_page(k, offset)
        if mode not in SEARCH_MODES:
            raise BadInputError(f"unknown search mode {mode!r}; use one of {', '.join(SEARCH_MODES)}")
        if sort not in SORTS:
            raise BadInputError(f"unknown sort {sort!r}; use one of {', '.join(SORTS)}")
        if mode != "embedding" and filters.min_score is not None:
            raise BadInputError(f"min_score is a cosine similarity: use it with the embedding mode, not {mode}")
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
        sources = [source for source in WORD_SOURCES if words and self.store.has_captions(source)]
        if mode == "embedding" or not sources:
            return self.search_vector(vector, k, offset, exclude, filters, relevant)
        return self.search_hybrid(vector, words, sources, k, offset, filters, exclude, relevant)

    def search_captions(
        self, query: str, k: int = 10, offset: int = 0, filters: Filters = NO_FILTERS, source: str = "caption"
    ) -> list[Hit]:
        """Images whose captions (source "caption") or read text ("text") match the query's words; the score is
        the store's full-text relevance (higher is better), and each hit shows the text that matched."""
        check_page(k, offset)
        matches = self.match_captions(query, k + offset, filters, source)[offset:]
        return self.hits([(i, score) for i, score, _ in matches], {i: text for i, _, text in matches})

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
        """Reciprocal rank fusion of the embedding ranking of `vector` and the full-text rankings of `words` in
        each of `sources` (captions, read text); the score is the fused one.

        An image only some rankings found gets their shares; equal scores go to the better embedding rank.
        `relevant` cuts the embedding ranking only: text that matches the words is itself evidence. A hit shows
        the caption or read text that matched, the caption first.
        """
        check_page(k, offset)
        depth = max(FUSION_DEPTH, k + offset)
        by_embedding = self.search_vector(vector, min(depth, MAX_K), 0, exclude, filters.rows_only, relevant)
        rankings = [{hit.id: rank for rank, hit in enumerate(by_embedding, 1)}]
        matched: dict[int, str] = {}
        for source in reversed(sources):  # captions last: their matched text wins
            by_words = [m for m in self.match_captions(words, depth, filters, source) if m[0] not in exclude]
            rankings.append({image_id: rank for rank, (image_id, _, _) in enumerate(by_words, 1)})
            matched.update({image_id: text for image_id, _, text in by_words})
        fused: dict[int, float] = {}
        for ranking in rankings:
            for image_id, rank in ranking.items():
                fused[image_id] = fused.get(image_id, 0.0) + 1 / (RRF_K + rank)
        no_rank = depth + 1
        order = sorted(fused, key=lambda i: (-fused[i], *(ranking.get(i, no_rank) for ranking in rankings)))
        hits = self.hits([(i, fused[i]) for i in order[offset : offset + k]], matched)
        relevance = {hit.id: hit.relevance for hit in by_embedding}
        for hit in hits:
            hit.relevance = relevance.get(hit.id)
        return hits

    def match_captions(
        self, query: str, limit: int, filters: Filters = NO_FILTERS, source: str = "caption"
    ) -> list[tuple[int, float, str]]:
        """(image id, relevance, matching caption or read text) of the images whose text shares words with the query."""
        query = query.strip()
        if not query:
            raise BadInputError("the query text is empty")
        if source == "text":  # split as the stored text is: "A4" finds "A4" read as "A 4"
            from indexer.ocr import searchable

            query = searchable(query)
        return self.store.match_captions(query, limit, filters, source)

    def duplicates(self, threshold: float, folder: str | None = None) -> list["DuplicateGroup"]:
        """The store's duplicate groups (search/duplicates.py)."""
        from search.duplicates import find_duplicates

        args = (threshold, folder)
        return self.remembered("duplicates", args, lambda: find_duplicates(self.store, *args))

    def clusters(self, k: int | None = None, labels: list[str] | None = None, auto: bool = False) -> "Clustering":
        """The store's clusters (search/clusters.py cluster_store)."""
        from search.clusters import cluster_store

        args = (k, tuple(labels or ()), auto)
        return self.remembered("clusters", args, lambda: cluster_store(self, k, labels, auto))

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
        """Path, file facts, captions and tags of an indexed image."""
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
        )

    def image_file(self, image_id: int) -> Path:
        """The file of an indexed image, if it is still the file that was indexed (only ids are accepted).

        A file swapped since (for a symlink to /etc/passwd, or a 400 MP picture) is not served: it must be a
        regular file with the size and mtime the store recorded, and open as an image. The row stays for
        the next index run to fix.
        """
        with self.store.engine.connect() as conn:
            row = conn.execute(
                select(Root.path, Image.relpath, Image.size, Image.mtime_ns)
                .join(Root)
                .where(Image.id == image_id, Image.status == INDEXED)
            ).first()
        if row is None:
            raise NotFoundError(f"no indexed image with id {image_id}")
        path = Path(row.path) / row.relpath
        try:
            st = path.stat()
        except OSError:
            raise NotFoundError(f"image {image_id}'s file {path} is gone; re-index its folder") from None
        if not stat.S_ISREG(st.st_mode) or (st.st_size, st.st_mtime_ns) != (row.size, row.mtime_ns):
            raise NotFoundError(f"image {image_id}'s file {path} changed since it was indexed; re-index its folder")
        setup_heif()
        try:
            with PILImage.open(path):  # reads the header only
                pass
        except (OSError, ValueError, PILImage.DecompressionBombError):
            raise NotFoundError(f"image {image_id}'s file {path} is no longer an image; re-index its folder") from None
        return path

    def thumbnail(self, image_id: int) -> Path:
        """A JPEG thumbnail of an indexed image, made once and cached in the store by content hash."""
        source = self.image_file(image_id)
        with self.store.session() as s:
            content_hash = s.scalar(select(Image.hash).where(Image.id == image_id))
        thumb = (self.store.local_dir or self.settings.cache_dir) / THUMB_DIR / f"{content_hash or image_id}.jpg"
        if not thumb.exists():
            small = self.decode_thumbnail(image_id, source)
            thumb.parent.mkdir(parents=True, exist_ok=True)
            tmp = thumb.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
            try:  # written whole under a temporary name, then renamed: never a truncated thumbnail
                small.save(tmp, "JPEG", quality=82)
                os.replace(tmp, thumb)
            except OSError as e:
                tmp.unlink(missing_ok=True)
                if is_disk_full(e):
                    raise StorageFullError(f"no room for thumbnails in {thumb.parent}: {e.strerror}") from None
                raise
        return thumb

    def decode_thumbnail(self, image_id: int, source: Path) -> PILImage.Image:
        """The image at thumbnail size, decoded within REQUEST_MAX_PIXELS (JPEGs at reduced size)."""
        try:
            with self._decode_slots, PILImage.open(source) as img:
                img.draft("RGB", (THUMB_EDGE, THUMB_EDGE))
                if img.width * img.height > REQUEST_MAX_PIXELS:
                    raise BadInputError(
                        f"image {image_id} is {img.width}x{img.height} pixels, too large for a thumbnail "
                        f"(at most {REQUEST_MAX_PIXELS:,} pixels); open the file itself"
                    )
                small = ImageOps.exif_transpose(img).convert("RGB")
                small.thumbnail((THUMB_EDGE, THUMB_EDGE))
                return small
        except (OSError, PILImage.DecompressionBombError) as e:
            raise BadInputError(f"image {image_id} can no longer be read ({e}); re-index its folder") from None

    def stats(self) -> dict:
        """Counts, model and roots of the store."""
        from search.text_models import paired_names

        counts = self.store.counts()
        return {
            "store": self.store.location,
            "model": self.store.model,
            "text_models": [name for name, _ in paired_names(self.store)],
            "dim": self.store.dim,
            "indexed": counts.get("indexed", 0),
            "skipped": counts.get("skipped", 0),
            "roots": self.store.roots(),
        }


def check_page(k: int, offset: int) -> None:
    if not 1 <= k <= MAX_K:
        raise BadInputError(f"k must be between 1 and {MAX_K}")
    if not 0 <= offset <= MAX_OFFSET:
        raise BadInputError(f"offset must be between 0 and {MAX_OFFSET}")
