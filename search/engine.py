"""Open a store and answer queries: by text, by image, by stored image."""

from pathlib import Path

import faiss
import numpy as np

from indexer.decode import DecodeError, decode_image, read_and_hash, setup_heif
from indexer.embed import Embedder, make_embedder
from indexer.errors import BadInputError, NotFoundError
from indexer.models import canonical_name
from indexer.settings import Settings
from indexer.store import Hit, Store, open_store
from search.tagging import tagged_ids

MAX_K = 1000
MAX_QUERY_CHARS = 1000


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

    def search_text(self, query: str, k: int = 10, offset: int = 0, tag: str | None = None) -> list[Hit]:
        """Images that best match a description (only those tagged `tag`, when given)."""
        query = query.strip()
        if not query:
            raise BadInputError("the query text is empty")
        if len(query) > MAX_QUERY_CHARS:
            raise BadInputError(f"the query text is over {MAX_QUERY_CHARS} characters")
        return self.search_vector(self.embedder.embed_texts([query])[0], k, offset, tag=tag)

    def search_image(self, data: bytes, k: int = 10, offset: int = 0, tag: str | None = None) -> list[Hit]:
        """Images that look like the given image file content."""
        return self.search_vector(self.embed_image(data), k, offset, tag=tag)

    def embed_image(self, data: bytes) -> np.ndarray:
        """The unit vector of an image file's content."""
        setup_heif()
        try:
            decoded = decode_image(data, self.embedder.prep, self.settings.max_pixels)
        except DecodeError as e:
            raise BadInputError(f"the query image cannot be used: {e.reason}") from None
        return self.embedder.embed_pixels(decoded.pixels[None])[0]

    def similar(self, image_id: int, k: int = 10, offset: int = 0, tag: str | None = None) -> list[Hit]:
        """Stored images most like a stored one, leaving out the image itself."""
        vector = self.store.vector(image_id)
        if vector is None:
            raise NotFoundError(f"no indexed image with id {image_id}")
        return self.search_vector(vector, k, offset, exclude=image_id, tag=tag)

    def similar_to(self, target: str, k: int = 10, offset: int = 0, tag: str | None = None) -> list[Hit]:
        """`similar` for an id or a path: a stored path uses its stored vector, another file is embedded."""
        if target.isdigit():
            return self.similar(int(target), k, offset, tag)
        path = Path(target).expanduser()
        image_id = self.store.find_path(path)
        if image_id is not None:
            return self.similar(image_id, k, offset, tag)
        if not path.is_file():
            raise NotFoundError(f"{target} is neither a stored image id nor an image file")
        try:
            data, _ = read_and_hash(path)
        except DecodeError as e:
            raise BadInputError(f"cannot read {path}: {e.reason}") from None
        return self.search_image(data, k, offset, tag)

    def search_vector(
        self, vector: np.ndarray, k: int, offset: int = 0, exclude: int | None = None, tag: str | None = None
    ) -> list[Hit]:
        """Top-k stored images by cosine similarity to a unit vector, after skipping `offset` hits.

        With `tag`, only images carrying that zero-shot tag are searched (a FAISS id selector, so the
        top-k is exact among them rather than a filtered over-fetch).
        """
        if not 1 <= k <= MAX_K:
            raise BadInputError(f"k must be between 1 and {MAX_K}")
        if offset < 0:
            raise BadInputError("offset must not be negative")
        index = self.store.load_index()
        want = k + offset + (exclude is not None)
        params = None
        if tag is not None:
            params = faiss.SearchParameters(sel=faiss.IDSelectorBatch(tagged_ids(self.store, tag)))
        query = np.asarray(vector, dtype=np.float32).reshape(1, -1)
        scores, ids = index.search(query, min(want, max(index.ntotal, 1)), params=params)
        pairs = [(int(i), float(s)) for i, s in zip(ids[0], scores[0], strict=True) if i != -1 and i != exclude]
        pairs = pairs[offset : offset + k]
        paths = self.store.paths([i for i, _ in pairs])
        return [Hit(id=i, path=paths[i], score=s) for i, s in pairs if i in paths]

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
