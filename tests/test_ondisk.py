"""The index past the memory budget: codes in a memory-mapped generation file, a delta of what came since,
tombstones for what left, kept across saves and reopenings, merged into a new generation once they grow; its
shards encoded as Ray tasks as they are in one process."""

import os
import shutil
import signal

import faiss
import numpy as np
import pytest

import indexer.store.ann as ann
import indexer.store.embedded as embedded
from indexer.runners.ray_index_build import RayShards
from indexer.store import INDEXED, Image, ondisk, open_store, utcnow
from indexer.store.ondisk import MERGE_SHARE, DiskIVF
from indexer.store.vectors import VectorFile
from tests.support.planted import ClipLike, plant_vectors
from tests.test_ann_index import exact_top, recall

BUDGET = 300_000  # bytes: no in-memory kind fits 30,000 vectors of 64 dimensions; the on-disk one does


@pytest.fixture
def small_limit(monkeypatch):
    monkeypatch.setattr(ann, "EXACT_LIMIT", 1000)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """30,000 planted vectors and their on-disk index, built once for the module (the build takes ~35 s)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ann, "EXACT_LIMIT", 1000)
        model = ClipLike(dim=64, clusters=200)
        vectors = model.images(30_000)
        location = tmp_path_factory.mktemp("ondisk") / "s"
        store = plant_vectors(location, vectors, index_memory=BUDGET)
        store.save_probes(model.texts(200, seed=3))
        store.save_index()
        with store.engine.connect() as conn:  # the database whole in its file, to be copied
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        store.engine.dispose()
    return model, vectors, location


@pytest.fixture
def planted(built, tmp_path, small_limit):
    """A copy of the built store of its own, opened: tests change it."""
    model, vectors, location = built
    shutil.copytree(location, tmp_path / "s")
    store = open_store(tmp_path / "s", index_memory=BUDGET)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(store, "build_index", lambda *_: pytest.fail("the copied store was rebuilt"))
        assert store.sync_index().ntotal == 30_000
    return model, vectors, store


def generation_files(store) -> list[str]:
    return sorted(p.name for p in store.path.glob("index-*.ivfdata"))


def test_past_the_budget_the_codes_live_on_disk_and_keep_recall(planted, tmp_path):
    model, vectors, store = planted
    assert store.kind.on_disk and store.kind.spec.endswith(",PQ8") and isinstance(store.index, DiskIVF)
    assert len(generation_files(store)) == 1
    assert recall(store, vectors, model.texts(100, seed=4)) >= 0.95  # held-out text-like queries
    assert recall(store, vectors, model.images(100, seed=5)) >= 0.95
    hits = store.search(vectors[41], 5)
    assert hits[0][0] == 42 and hits[0][1] == pytest.approx(1.0, abs=1e-3)  # exact cosines after re-ranking

    again = open_store(tmp_path / "s", index_memory=BUDGET)  # reopened: mapped, not rebuilt
    again.build_index = lambda: pytest.fail("rebuilt")
    assert again.search(vectors[41], 5) == hits and again.index.ntotal == 30_000


def test_past_max_lists_two_level_centroids_and_graph_assignment_keep_recall(tmp_path, small_limit, monkeypatch):
    monkeypatch.setattr(ann, "MAX_LISTS", 64)  # 692 lists for 30,000 vectors: two-level k-means, graph assignment
    model = ClipLike(dim=64, clusters=200)
    vectors = model.images(30_000)
    store = plant_vectors(tmp_path / "s", vectors, index_memory=BUDGET)
    store.save_probes(model.texts(200, seed=3))
    store.save_index()
    main = faiss.extract_index_ivf(store.index.main)
    assert main.nlist == ann.disk_lists(30_000) == 692
    assert isinstance(faiss.downcast_index(main.quantizer), faiss.IndexFlat)
    assert recall(store, vectors, model.texts(100, seed=4)) >= 0.95
    assert recall(store, vectors, model.images(100, seed=5)) >= 0.95
    # The graph puts vectors in the list of their nearest centroid, as comparing with every centroid does.
    by_graph = ann.assigner(store.index.main)(vectors[:2000])
    _, by_scan = main.quantizer.search(vectors[:2000], 1)
    assert (by_graph == by_scan[:, 0]).mean() >= 0.99
    fresh = model.images(50, seed=9)
    new_ids = plant_more(store, fresh, first_id=30_001)
    store.save_index()
    assert store.index.delta.ntotal == 50
    assert [store.search(v, 1)[0][0] for v in fresh] == new_ids  # the delta's lists came from the graph too


def test_a_build_over_a_large_vector_file_reads_its_rows_without_mapping_the_file(tmp_path, small_limit, monkeypatch):
    monkeypatch.setattr(embedded, "ROW_READS_PAST", 100_000)  # bytes: 3,000 vectors of 64 dimensions are past it
    model = ClipLike(dim=64, clusters=50)
    vectors = model.images(3000)
    store = plant_vectors(tmp_path / "s", vectors, index_memory=BUDGET // 10)
    store.save_probes(model.texts(200, seed=3))
    monkeypatch.setattr(VectorFile, "mapped", lambda *_: pytest.fail("the build gathered rows from the map"))
    store.save_index()
    assert store.kind.on_disk and store.vectors.reads_rows
    assert recall(store, vectors, model.texts(100, seed=4)) >= 0.95  # calibrated on the rows it read


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="reads the mapping's resident size from /proc")
def test_searches_unmap_the_lists_pages_they_touched_and_answer_the_same(planted, monkeypatch):
    model, vectors, store = planted
    index, queries = store.index, model.images(20, seed=6)
    # FAISS's prefetch threads touch a search's lists beside it and may outlive it: none, so that what is resident
    # after a search is what the search left.
    faiss.downcast_InvertedLists(faiss.extract_index_ivf(index.main).invlists).prefetch_nthread = 0
    every_list = faiss.SearchParametersIVF(nprobe=index.nlist)
    monkeypatch.setattr(ondisk, "MAPPED_BUDGET", 2**62)
    kept = index.search(queries, 10, every_list)
    assert mapped_kb(index) >= 0.9 * index.mapping[1] / 1024  # every list probed: the whole file mapped
    monkeypatch.setattr(ondisk, "MAPPED_BUDGET", index.mapping[1])  # a query probing every list reaches it
    assert all(np.array_equal(a, b) for a, b in zip(index.search(queries, 10, every_list), kept, strict=True))
    assert mapped_kb(index) == 0 and index.touched == 0
    index.search(queries[:1], 10, faiss.SearchParametersIVF(nprobe=4))  # far under the budget: kept mapped
    assert 0 < mapped_kb(index) < index.mapping[1] / 1024 and index.touched > 0


def test_a_query_s_lists_scanned_in_parts_find_what_one_scan_finds(planted, monkeypatch):
    model, vectors, store = planted
    store.delete_images([42, 43])
    store.save_index()
    index, queries = store.index, model.texts(10, seed=6)
    params = faiss.SearchParametersIVF(nprobe=9)
    # Every code of the probed lists (~400 of them) is found: which of equal scores make a top-k is FAISS's choice.
    whole = [index.search(q[None], 1000, params) for q in queries]
    monkeypatch.setattr(ann, "SPLIT_BYTES", 1)
    monkeypatch.setattr(ann, "cpu_count", lambda: 3)  # 9 lists dealt out to 3 parts
    for q, (scores, ids) in zip(queries, whole, strict=True):
        got_scores, got_ids = index.search(q[None], 1000, params)
        np.testing.assert_allclose(got_scores[got_ids != -1], scores[ids != -1], rtol=1e-6)
        assert sorted(got_ids[0]) == sorted(ids[0]) and not {42, 43} & set(ids[0])
        assert 300 < (ids != -1).sum() < 1000
    hits = store.search(vectors[40], 5)
    assert hits[0][0] == 41 and 42 not in [i for i, _ in hits]
    # A process forked after a split scan scans with threads of its own (its parent's are not in it).
    child = os.fork()
    if child == 0:  # the child tells by its exit status
        signal.alarm(30)  # a scan waiting on the parent's threads would wait for ever
        got_ids = index.search(queries[:1], 1000, params)[1]
        os._exit(0 if sorted(got_ids[0]) == sorted(whole[0][1][0]) else 1)
    assert os.waitpid(child, 0)[1] == 0


def mapped_kb(index: DiskIVF) -> int:
    """Resident kB of the generation's mapped lists file, as the kernel counts it for this process."""
    lines = open("/proc/self/smaps").read().splitlines()
    start = next(n for n, line in enumerate(lines) if line.split("-")[0] == f"{index.mapping[0]:x}")
    return next(int(line.split()[1]) for line in lines[start + 1 :] if line.startswith("Rss:"))


def test_new_changed_and_deleted_vectors_go_to_the_delta_and_tombstones(planted, tmp_path):
    model, vectors, store = planted
    fresh = model.images(200, seed=9)
    new_ids = plant_more(store, fresh, first_id=30_001)
    rewritten = model.images(1, seed=10)[0]
    with store.session() as s:  # image 7 changed: same id, a new vector, committed as the indexer does
        store.commit_images(s, [s.get(Image, 7)], {0: rewritten})
    store.delete_images([42, 43])
    store.save_index()
    assert store.kind.on_disk and len(generation_files(store)) == 1  # 403 changes: under MERGE_SHARE, no merge
    assert store.index.delta.ntotal == 201 and store.index.tombstones == {7, 42, 43}
    assert store.index.ntotal == 30_000 + 200 - 2

    for reopened in (store, open_store(tmp_path / "s", index_memory=BUDGET)):
        assert reopened.search(fresh[5], 1)[0][0] == new_ids[5]  # found in the delta
        assert reopened.search(rewritten, 1)[0][0] == 7  # its new vector, not its old
        assert 42 not in [i for i, _ in reopened.search(vectors[41], 10)]  # tombstoned
        assert sorted(ann.index_ids(reopened.sync_index()).tolist()) == sorted(
            set(range(1, 30_001)) - {42, 43} | set(new_ids)
        )


def test_a_grown_delta_is_merged_into_a_new_generation_and_the_old_files_go(planted, tmp_path):
    model, vectors, store = planted
    before = generation_files(store)
    extra = model.images(int(MERGE_SHARE * 30_000) + 100, seed=11)
    plant_more(store, extra, first_id=30_001)
    store.save_index()
    assert isinstance(store.index, DiskIVF) and store.index.delta.ntotal == 0 and not store.index.tombstones
    # Kept a save longer, a reader may be loading it right now: by this process too, which only opened the store (a
    # new process, as each `clipdex index` run is, used to delete it at once).
    assert before[0] in generation_files(store) and len(generation_files(store)) == 2
    store.save_index()
    assert generation_files(store) != before and len(generation_files(store)) == 1
    everything = np.vstack([vectors, extra])
    query = model.texts(1, seed=12)[0]
    assert [i for i, _ in store.search(query, 10)] == exact_top(everything, query, 10)


@pytest.mark.slow
def test_a_generation_encoded_by_ray_tasks_answers_as_one_encoded_here(planted, tmp_path, monkeypatch, ray_address):
    model, vectors, here = planted  # encoded in this process, in one shard
    monkeypatch.setattr(ondisk, "SHARD_VECTORS", 8_000)  # four shards: four tasks
    on_ray = plant_vectors(tmp_path / "r", vectors, index_memory=BUDGET)
    on_ray.save_probes(model.texts(200, seed=3))
    shards = RayShards(ray_address)
    left_in_scratch = []

    def encode(work: ondisk.ShardWork) -> list[str]:
        paths = shards(work)
        left_in_scratch.extend(sorted(os.listdir(work.scratch)))
        return paths

    on_ray.save_index(force_rebuild=True, encode_shards=encode)
    assert isinstance(on_ray.index, DiskIVF) and on_ray.index.ntotal == 30_000
    assert left_in_scratch == [f"shard-{n}.faiss" for n in range(4)]  # whole shards under their final names only
    assert len(shards.task_peaks_mb) == 4 and all(peak > 0 for peak in shards.task_peaks_mb)
    assert on_ray.tuning == here.tuning  # calibrated on the same exact top-k, merged from the tasks'
    for query in [*model.texts(20, seed=4), *model.images(20, seed=5)]:
        assert [i for i, _ in on_ray.search(query, 10)] == [i for i, _ in here.search(query, 10)]


def test_a_shard_cut_off_while_written_leaves_no_file_under_its_name(planted, tmp_path, monkeypatch):
    _, _, store = planted
    trained = store.index.delta  # empty, cloned from the generation's trained index

    def cut_off(index, path):
        with open(path, "wb") as f:
            f.write(b"half a shard")
        raise OSError("worker killed")

    monkeypatch.setattr(faiss, "write_index", cut_off)
    vectors = VectorFile(store.path / "vectors.f16", 64)
    with pytest.raises(OSError, match="worker killed"):
        ondisk.encode_shard(trained, vectors, np.arange(1, 101), tmp_path / "shard-0.faiss", [])
    vectors.close()
    assert [p.name for p in tmp_path.glob("shard-0.faiss*")] == [f"shard-0.faiss.{os.getpid()}.tmp"]


def plant_more(store, vectors: np.ndarray, first_id: int) -> list[int]:
    """Rows after the planted ones, committed as the indexer does."""
    with store.session() as s:
        rows = [
            Image(id=first_id + n, root_id=1, relpath=f"more/{n}.jpg", size=1, mtime_ns=0, status=INDEXED,
                  indexed_at=utcnow())
            for n in range(len(vectors))
        ]  # fmt: skip
        s.add_all(rows)
        store.commit_images(s, rows, dict(enumerate(vectors)))
    return [first_id + n for n in range(len(vectors))]
