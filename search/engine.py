"""Open a store and answer queries: by text (embedding, caption or hybrid ranking), by image, by stored image."""

import re
from pathlib import Path

import numpy as np

from indexer.decode import DecodeError, decode_image, read_and_hash, setup_heif
from indexer.embed import Embedder, make_embedder
from indexer.errors import BadInputError, NotFoundError
from indexer.models import canonical_name
from indexer.settings import Settings
from indexer.store import Hit, Store, open_store

MAX_K = 1000
MAX_QUERY_CHARS = 1000
SEARCH_MODES = ("embedding", "caption", "hybrid")
# Reciprocal rank fusion (Cormack et al., 2009): score = sum over rankings of 1 / (RRF_K + rank). 60 is the
# paper's constant: it keeps one ranking's top hit from outweighing agreement between both rankings.
RRF_K = 60
# Hybrid search fuses the top max(FUSION_DEPTH, k + offset) candidates of each ranking.
FUSION_DEPTH = 100


def fts_query(text: str) -> str | None:
    """A free-text query as an FTS5 query: its words, quoted (no FTS5 syntax from users), joined by OR."""
    words = re.findall(r"\w+", text.lower())
    return " OR ".join(f'"{word}"' for word in words) or None


class SearchEngine:
    """Queries over one store; the embedding model loads on the first query that needs it."""

    def __init__(self, settings: Settings):
        self.settings = settings
        model = canonical_name(settings.model) if settings.model else None
        self.store: Store = open_store(settings.store, model=model)
        self._embedder: Embedder | None = None

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            self._embedder = make_embedder(self.store.model, self.settings)
        return self._embedder

    def search_text(self, query: str, k: int = 10, offset: int = 0) -> list[Hit]:
        """Images that best match a description."""
        query = query.strip()
        if not query:
            raise BadInputError("the query text is empty")
        if len(query) > MAX_QUERY_CHARS:
            raise BadInputError(f"the query text is over {MAX_QUERY_CHARS} characters")
        return self.search_vector(self.embedder.embed_texts([query])[0], k, offset)

    def search_image(self, data: bytes, k: int = 10, offset: int = 0) -> list[Hit]:
        """Images that look like the given image file content."""
        setup_heif()
        try:
            decoded = decode_image(data, self.embedder.prep, self.settings.max_pixels)
        except DecodeError as e:
            raise BadInputError(f"the query image cannot be used: {e.reason}") from None
        vector = self.embedder.embed_pixels(decoded.pixels[None])[0]
        return self.search_vector(vector, k, offset)

    def similar(self, image_id: int, k: int = 10, offset: int = 0) -> list[Hit]:
        """Stored images most like a stored one, leaving out the image itself."""
        vector = self.store.vector(image_id)
        if vector is None:
            raise NotFoundError(f"no indexed image with id {image_id}")
        return self.search_vector(vector, k, offset, exclude=image_id)

    def similar_to(self, target: str, k: int = 10, offset: int = 0) -> list[Hit]:
        """`similar` for an id or a path: a stored path uses its stored vector, another file is embedded."""
        if target.isdigit():
            return self.similar(int(target), k, offset)
        path = Path(target).expanduser()
        image_id = self.store.find_path(path)
        if image_id is not None:
            return self.similar(image_id, k, offset)
        if not path.is_file():
            raise NotFoundError(f"{target} is neither a stored image id nor an image file")
        try:
            data, _ = read_and_hash(path)
        except DecodeError as e:
            raise BadInputError(f"cannot read {path}: {e.reason}") from None
        return self.search_image(data, k, offset)

    def search_vector(self, vector: np.ndarray, k: int, offset: int = 0, exclude: int | None = None) -> list[Hit]:
        """Top-k stored images by cosine similarity to a unit vector, after skipping `offset` hits."""
        if not 1 <= k <= MAX_K:
            raise BadInputError(f"k must be between 1 and {MAX_K}")
        if offset < 0:
            raise BadInputError("offset must not be negative")
        index = self.store.load_index()
        want = k + offset + (exclude is not None)
        scores, ids = index.search(np.asarray(vector, dtype=np.float32).reshape(1, -1), min(want, max(index.ntotal, 1)))
        pairs = [(int(i), float(s)) for i, s in zip(ids[0], scores[0], strict=True) if i != -1 and i != exclude]
        pairs = pairs[offset : offset + k]
        paths = self.store.paths([i for i, _ in pairs])
        return [Hit(id=i, path=paths[i], score=s) for i, s in pairs if i in paths]

    def search(self, query: str, mode: str = "hybrid", k: int = 10, offset: int = 0) -> list[Hit]:
        """Text search ranked by embedding similarity, caption match, or both; hits carry their caption."""
        if mode == "embedding":
            hits = self.search_text(query, k, offset)
        elif mode == "caption":
            hits = self.search_captions(query, k, offset)
        elif mode == "hybrid":
            hits = self.search_hybrid(query, k, offset)
        else:
            raise BadInputError(f"unknown search mode {mode!r}; use one of {', '.join(SEARCH_MODES)}")
        captions = self.store.captions([hit.id for hit in hits if hit.caption is None])
        for hit in hits:
            hit.caption = hit.caption or captions.get(hit.id)
        return hits

    def search_captions(self, query: str, k: int = 10, offset: int = 0) -> list[Hit]:
        """Images whose captions match the query's words, by FTS5 bm25; the score is minus bm25 (higher is better)."""
        check_page(k, offset)
        matches = self.match_captions(query, k + offset)[offset:]
        paths = self.store.paths([image_id for image_id, _, _ in matches])
        return [Hit(id=i, path=paths[i], score=score, caption=text) for i, score, text in matches if i in paths]

    def search_hybrid(self, query: str, k: int = 10, offset: int = 0) -> list[Hit]:
        """Reciprocal rank fusion of the embedding ranking and the caption ranking; the score is the fused one.

        An image only one ranking found gets that ranking's share; equal scores go to the better embedding rank.
        In a store without captions this is embedding search, with cosine scores.
        """
        check_page(k, offset)
        if not self.store.has_captions():
            return self.search_text(query, k, offset)
        depth = max(FUSION_DEPTH, k + offset)
        by_embedding = self.nearest(self.embedder.embed_texts([clean_query(query)])[0], depth)
        by_caption = self.match_captions(query, depth)
        embedding_rank = {image_id: rank for rank, image_id in enumerate(by_embedding, 1)}
        caption_rank = {image_id: rank for rank, (image_id, _, _) in enumerate(by_caption, 1)}
        fused = {
            image_id: sum(
                1 / (RRF_K + rank) for rank in (embedding_rank.get(image_id), caption_rank.get(image_id)) if rank
            )
            for image_id in embedding_rank | caption_rank
        }
        no_rank = depth + 1
        order = sorted(fused, key=lambda i: (-fused[i], embedding_rank.get(i, no_rank), caption_rank.get(i, no_rank)))
        page = order[offset : offset + k]
        paths = self.store.paths(page)
        captions = {image_id: text for image_id, _, text in by_caption}
        return [Hit(id=i, path=paths[i], score=fused[i], caption=captions.get(i)) for i in page if i in paths]

    def match_captions(self, query: str, limit: int) -> list[tuple[int, float, str]]:
        """(image id, relevance, matching caption) of the images whose captions share words with the query."""
        fts = fts_query(clean_query(query))
        return self.store.match_captions(fts, limit) if fts else []

    def nearest(self, vector: np.ndarray, n: int) -> list[int]:
        """Ids of the n stored images nearest to a unit vector, nearest first."""
        index = self.store.load_index()
        _, ids = index.search(np.asarray(vector, dtype=np.float32).reshape(1, -1), min(n, max(index.ntotal, 1)))
        return [int(i) for i in ids[0] if i != -1]

    def stats(self) -> dict:
        """Counts, model and roots of the store."""
        counts = self.store.counts()
        return {
            "store": str(self.store.path),
            "model": self.store.model,
            "dim": self.store.dim,
            "indexed": counts.get("indexed", 0),
            "skipped": counts.get("skipped", 0),
            "roots": self.store.roots(),
        }


def clean_query(query: str) -> str:
    """The query text stripped, refused when empty or too long."""
    query = query.strip()
    if not query:
        raise BadInputError("the query text is empty")
    if len(query) > MAX_QUERY_CHARS:
        raise BadInputError(f"the query text is over {MAX_QUERY_CHARS} characters")
    return query


def check_page(k: int, offset: int) -> None:
    if not 1 <= k <= MAX_K:
        raise BadInputError(f"k must be between 1 and {MAX_K}")
    if offset < 0:
        raise BadInputError("offset must not be negative")
