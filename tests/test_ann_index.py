"""The index kind follows the store's size: exact up to EXACT_LIMIT, IVF above, with recall held and ids kept."""

import numpy as np
import pytest

import indexer.store as store_module
from indexer.settings import Settings
from indexer.store import Tag, open_store
from search.engine import Filters, SearchEngine
from tests.planted import clustered_vectors, plant_vectors


@pytest.fixture
def small_limit(monkeypatch):
    monkeypatch.setattr(store_module, "EXACT_LIMIT", 1000)


def exact_top(vectors: np.ndarray, query: np.ndarray, k: int, allowed=None) -> list[int]:
    """Ids (row + 1, as planted) of the k best rows by inner product."""
    scores = vectors @ query
    order = [int(i) + 1 for i in np.argsort(-scores)]
    return [i for i in order if allowed is None or i in allowed][:k]


def test_large_store_gets_ivf_with_recall_and_id_semantics(tmp_path, small_limit):
    vectors = clustered_vectors(6000, dim=64, clusters=40)
    store = plant_vectors(tmp_path / "s", vectors[:5000])
    index = store.load_index()
    assert isinstance(index, store_module.faiss.IndexIVF) and index.nprobe < index.nlist
    held_out = vectors[5000:5100]
    _, found = index.search(held_out, 10)
    truth = np.array([exact_top(vectors[:5000], q, 10) for q in held_out])
    assert store_module.recall_at(found, truth) >= 0.95

    # reopened from disk: same kind, same calibrated nprobe
    again = open_store(tmp_path / "s").load_index()
    assert (type(again), again.nprobe, again.ntotal) == (type(index), index.nprobe, 5000)

    # the pipeline's id operations work on it
    index.remove_ids(np.arange(1, 11, dtype=np.int64))
    index.add_with_ids(vectors[5000:5001], np.array([9999], dtype=np.int64))
    _, ids = index.search(vectors[:10], 5)
    assert not set(ids.ravel()) & set(range(1, 11))
    assert index.search(vectors[5000:5001], 1)[1][0, 0] == 9999


def test_a_few_allowed_ids_are_all_found_through_ivf(tmp_path, small_limit):
    vectors = clustered_vectors(5000, dim=64, clusters=40)
    store = plant_vectors(tmp_path / "s", vectors)
    allowed = set(range(100, 4000, 250))  # 16 ids scattered over every cluster
    with store.session() as s:
        s.add_all(Tag(image_id=i, label_set="set", label="rare", score=1.0, model="m") for i in allowed)
        s.commit()
    engine = SearchEngine(Settings(store=tmp_path / "s"))
    assert isinstance(engine.index(), store_module.faiss.IndexIVF)
    hits = engine.search_vector(vectors[7], 10, filters=Filters(tag="rare"))
    assert [h.id for h in hits] == exact_top(vectors, vectors[7], 10, allowed)
    paged = engine.search_vector(vectors[7], 10, offset=10, filters=Filters(tag="rare"))
    assert [h.id for h in paged] == exact_top(vectors, vectors[7], 16, allowed)[10:]


def test_a_flat_index_that_outgrew_its_size_is_rebuilt(tmp_path, monkeypatch):
    vectors = clustered_vectors(3000, dim=64, clusters=20)
    store = plant_vectors(tmp_path / "s", vectors)
    assert not isinstance(store.load_index(), store_module.faiss.IndexIVF)  # 3000 is under the default limit
    monkeypatch.setattr(store_module, "EXACT_LIMIT", 1000)
    assert isinstance(open_store(tmp_path / "s").load_index(), store_module.faiss.IndexIVF)
