"""The index kind follows the store's size: exact up to EXACT_LIMIT, IVF above, with recall held and ids kept."""

import numpy as np
import pytest
from sqlalchemy import select

import indexer.store as store_module
from indexer.settings import Settings
from indexer.store import INDEXED, Image, Tag, open_store, utcnow
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


def test_a_reader_catches_up_with_an_indexer_without_rebuilding(tmp_path, monkeypatch):
    vectors = clustered_vectors(300, dim=32, clusters=10)
    plant_vectors(tmp_path / "s", vectors[:200]).load_index()  # the indexer's run ends by saving the index
    reader, writer = open_store(tmp_path / "s"), open_store(tmp_path / "s")
    assert reader.refresh_index().ntotal == 200

    def no_rebuild():
        raise AssertionError("rebuilt")

    monkeypatch.setattr(reader, "build_index", no_rebuild)
    with writer.session() as s:  # the indexer commits a chunk of new images (ids 201..300)
        root = s.scalar(select(Image.root_id))
        for i in range(200, 300):
            s.add(Image(id=i + 1, root_id=root, relpath=f"new/{i}.jpg", size=1, mtime_ns=0, status=INDEXED,
                        vector=vectors[i].tobytes(), indexed_at=utcnow()))  # fmt: skip
        writer.bump_version(s)
        s.commit()
    index = reader.refresh_index()
    assert index.ntotal == 300 and index.search(vectors[250:251], 1)[1][0, 0] == 251
    assert reader.index_partial

    writer.load_index()  # the indexer saves an index for this version: the reader takes it from disk
    assert reader.refresh_index() is not index and not reader.index_partial

    monkeypatch.undo()
    with writer.session() as s:  # rows deleted with no saved index to say which: a full load
        writer.delete_images(s, [1, 2])
        writer.bump_version(s)
        s.commit()
    index = reader.refresh_index()
    assert index.ntotal == 298 and not {1, 2} & set(index.search(vectors[:2], 5)[1].ravel())
