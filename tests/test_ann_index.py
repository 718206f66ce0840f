"""The index follows the collection and the memory budget, keeps recall on text-like queries, and catches up.

Kinds: exact up to EXACT_LIMIT, IVF-flat while full vectors fit the budget, then compressed codes re-ranked
from the vector file. Readers and writers bring a saved index up to the database without rebuilding it.
"""

import numpy as np
import pytest

import indexer.store.ann as ann
import indexer.store.embedded as embedded
from indexer.settings import Settings
from indexer.store import Tag, open_store
from indexer.store.ann import Kind, choose, outgrown
from indexer.store.vectors import VectorFile
from search.service import Filters, Service
from tests.support.planted import ClipLike, plant_vectors


@pytest.fixture
def small_limit(monkeypatch):
    monkeypatch.setattr(ann, "EXACT_LIMIT", 1000)


def exact_top(vectors: np.ndarray, query: np.ndarray, k: int, allowed=None) -> list[int]:
    """Ids (row + 1, as planted) of the k best rows by inner product."""
    order = [int(i) + 1 for i in np.argsort(-(vectors @ query), kind="stable")]
    return [i for i in order if allowed is None or i in allowed][:k]


def recall(store, vectors: np.ndarray, queries: np.ndarray, k: int = 10, **search) -> float:
    found = [[i for i, _ in store.search(q, k, **search)] for q in queries]
    return ann.recall_at(found, [exact_top(vectors, q, k) for q in queries])


def test_the_budget_picks_the_most_accurate_kind_that_fits():
    mb = 1_000_000
    assert choose(10_000, 512, 1024 * mb).spec == "Flat"
    assert choose(100_000, 512, 1024 * mb).spec == "IVF632,Flat"  # 206 MB of float32 vectors
    assert choose(1_000_000, 512, 1024 * mb).spec == "IVF2000,SQ8"  # 2 GB as float32, 520 MB as bytes
    assert choose(2_000_000, 512, 1024 * mb).spec == "IVF2828,SQ4"  # 528 MB of 4-bit scalar codes
    assert choose(10_000_000, 512, 1024 * mb).spec == "IVF4096,PQ128x4fsr"  # 720 MB of 4-bit codes and ids
    assert choose(10_000_000, 512, 500 * mb).spec == "IVF4096,PQ64x4fsr"
    # None fits in memory: 8-bit codes on disk, in twice the lists (4 sqrt(count)), past MAX_LISTS
    assert choose(10_000_000, 512, 100 * mb).spec == "IVF12649,PQ64"
    assert Kind.parse("IVF4096,PQ64", 512).memory(10_000_000) == 4096 * 512 * 4 + 256 * 512 * 4 + 1_250_000
    assert Kind.parse("IVF4096,PQ64x4fsr", 512).memory(10_000_000) == 4096 * 512 * 4 + 40 * 10_000_000


def test_rebuilds_wait_for_real_growth_or_a_broken_budget():
    gb = 2**30
    assert not outgrown("Flat", 0, 30_000, 512, gb)  # twice EXACT_LIMIT before a flat index goes
    assert outgrown("Flat", 0, 50_000, 512, gb)
    assert not outgrown("IVF632,Flat", 100_000, 390_000, 512, gb)  # under 4x growth: same quantiser
    assert outgrown("IVF632,Flat", 100_000, 410_000, 512, gb)
    assert outgrown("IVF632,Flat", 100_000, 300_000, 512, 100_000_000)  # no longer fits a smaller budget
    assert outgrown("IVF2000,SQ8", 1_000_000, 1_000_000, 512, 8 * gb)  # a raised budget fits IVF-flat twice


def test_a_compressed_index_keeps_recall_on_text_like_and_image_like_queries(tmp_path, small_limit, monkeypatch):
    model = ClipLike(dim=64, clusters=200)
    vectors = model.images(30_000)
    store = plant_vectors(tmp_path / "s", vectors, index_memory=30_000 * 24)  # room for 4-bit codes only
    store.save_probes(model.texts(200, seed=3))  # what the indexer embeds from indexer/store/probes.py
    store.save_index()
    assert store.kind.compressed and store.kind.family.startswith("PQ") and store.tuning.rerank > 1
    assert recall(store, vectors, model.texts(100, seed=4)) >= 0.95  # held-out text-like queries
    assert recall(store, vectors, model.images(100, seed=5)) >= 0.95  # held-out image-like queries
    hits = store.search(vectors[41], 5)
    assert hits[0][0] == 42 and hits[0][1] == pytest.approx(1.0, abs=1e-3)  # exact cosines after re-ranking
    assert [s for _, s in hits] == sorted((s for _, s in hits), reverse=True)

    # reopened: the saved index and its tuning, no rebuild
    again = open_store(tmp_path / "s")
    again.build_index = lambda: pytest.fail("rebuilt")
    assert again.search(vectors[41], 5) == hits and again.tuning == store.tuning

    # One query's lists scanned in parts, one a core, find every code one scan finds (which of equal scores make a
    # top-k is FAISS's choice, so all of them are asked for), and the same hits.
    queries = model.texts(5, seed=6)
    whole = [ann.scan_lists(store.index, q[None], 30_000, 9, None) for q in queries]
    found = [store.search(q, 10) for q in queries]
    monkeypatch.setattr(ann, "SPLIT_BYTES", 1)
    monkeypatch.setattr(ann, "cpu_count", lambda: 3)  # 9 lists dealt out to 3 parts
    for q, (scores, ids) in zip(queries, whole, strict=True):
        got_scores, got_ids = ann.scan_lists(store.index, q[None], 30_000, 9, None)
        assert sorted(got_ids[0][got_ids[0] != -1]) == sorted(ids[0][ids[0] != -1])
        # 4-bit codes are scored through lookup tables quantised per scan (FAISS's fast scan): close, not equal.
        np.testing.assert_allclose(got_scores[got_ids != -1], scores[ids != -1], atol=1e-3)
        assert 300 < (ids != -1).sum() < 30_000
    assert [store.search(q, 10) for q in queries] == found


def test_a_service_re_ranks_from_a_large_vector_file_by_reading_rows_and_a_command_from_the_map(
    tmp_path, small_limit, monkeypatch
):
    monkeypatch.setattr(embedded, "ROW_READS_PAST", 100_000)  # bytes: 3,000 vectors of 64 dimensions are past it
    vectors = ClipLike(dim=64, clusters=50).images(3000)
    command = plant_vectors(tmp_path / "s", vectors, index_memory=3000 * 24)  # compressed codes, in memory
    command.save_index()
    assert command.kind.compressed and not command.kind.on_disk and not command.vectors.reads_rows
    hits = command.search(vectors[41], 5)
    service = open_store(tmp_path / "s", index_memory=3000 * 24)
    service.serving = True  # as search.service.Service sets it
    monkeypatch.setattr(VectorFile, "gather", lambda *_: pytest.fail("a service's re-rank gathered from the map"))
    assert service.search(vectors[41], 5) == hits and service.vectors.reads_rows


def test_filters_keep_recall_through_a_compressed_index(tmp_path, small_limit):
    model = ClipLike(dim=64, clusters=200)
    vectors = model.images(20_000)
    store = plant_vectors(tmp_path / "s", vectors, index_memory=20_000 * 24)
    allowed = set(range(100, 20_000, 500))  # 40 ids scattered over every cluster
    with store.session() as s:
        s.add_all(Tag(image_id=i, label_set="set", label="rare", score=1.0, model="m") for i in allowed)
        s.commit()
    engine = Service(Settings(store=tmp_path / "s", index_memory=20_000 * 24))
    query = model.texts(1, seed=9)[0]
    hits = engine.search_vector(query, 10, filters=Filters(tag="rare"))
    assert engine.store.kind.compressed
    assert [h.id for h in hits] == exact_top(vectors, query, 10, allowed)
    paged = engine.search_vector(query, 10, offset=10, filters=Filters(tag="rare"))
    assert [h.id for h in paged] == exact_top(vectors, query, 20, allowed)[10:]


def test_an_index_the_collection_outgrew_is_rebuilt_by_the_writer_and_readers_switch(tmp_path, monkeypatch):
    vectors = ClipLike(dim=32, clusters=20).images(3000)
    store = plant_vectors(tmp_path / "s", vectors)
    store.save_index()
    assert store.kind.spec == "Flat"  # 3000 is under the default limit
    reader = open_store(tmp_path / "s")
    assert reader.search(vectors[0], 1)[0][0] == 1 and reader.kind.spec == "Flat"
    monkeypatch.setattr(ann, "EXACT_LIMIT", 1000)
    store.save_index()  # the writer's run ends: 3000 is over twice the limit now
    assert store.kind.spec.startswith("IVF")
    assert reader.search(vectors[0], 1)[0][0] == 1 and reader.kind.spec == store.kind.spec


def test_readers_and_writers_catch_up_with_new_changed_and_deleted_rows_without_rebuilding(tmp_path, small_limit):
    vectors = ClipLike(dim=32, clusters=10).images(3000)
    writer = plant_vectors(tmp_path / "s", vectors[:2000], index_memory=2000 * 20)
    writer.save_index()  # the indexer's run ends by saving the index
    reader = open_store(tmp_path / "s")
    assert len(reader.search(vectors[0], 5)) == 5
    reader.build_index = writer.build_index = lambda: pytest.fail("rebuilt")

    from indexer.store import INDEXED, Image, utcnow

    with writer.session() as s:  # the indexer commits new images (2001..2100) and a changed one (id 7)
        rows = [
            Image(id=i + 1, root_id=1, relpath=f"new/{i}.jpg", size=1, mtime_ns=0, status=INDEXED, indexed_at=utcnow())
            for i in range(2000, 2100)
        ]  # fmt: skip
        changed = s.get(Image, 7)
        s.add_all(rows)
        vectors_by_row = {n: vectors[i] for n, i in enumerate(range(2000, 2100))} | {100: vectors[2500]}
        writer.commit_images(s, [*rows, changed], vectors_by_row)
    assert reader.search(vectors[2050], 1)[0][0] == 2051
    assert reader.search(vectors[2500], 1)[0][0] == 7  # id 7 now holds another image
    assert 7 not in [i for i, _ in reader.search(vectors[6], 3)]  # and no longer its old one

    writer.delete_images([1, 2])
    assert not {1, 2} & {i for q in vectors[:2] for i, _ in reader.search(q, 5)}
    assert reader.index.ntotal == 2098 and writer.search(vectors[0], 1)[0][0] != 1

    writer.save_index()  # saved at the new version: a fresh reader loads it with nothing to catch up
    fresh = open_store(tmp_path / "s")
    fresh.build_index = lambda: pytest.fail("rebuilt")
    assert fresh.search(vectors[2050], 1)[0][0] == 2051 and fresh.index.ntotal == 2098
