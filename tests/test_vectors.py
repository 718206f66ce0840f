"""The float16 vector file: rankings agree with float32, rows round-trip through disk, and format 1 stores move in."""

import logging
import os
import sqlite3

import numpy as np
import pytest

from indexer.store import open_store
from indexer.store import vectors as vectors_module
from indexer.store.vectors import VECTOR_FILE, VectorFile
from tests.support.planted import ClipLike, plant_vectors


def test_float16_keeps_cosine_rankings(tmp_path):
    """Top-10 lists of text-like queries over float16 vectors are the float32 ones, bar swaps of near-ties."""
    model = ClipLike(dim=512, clusters=300)
    vectors = model.images(20_000)
    stored = VectorFile(tmp_path / VECTOR_FILE, 512, writable=True)
    stored.write(np.arange(1, 20_001), vectors)
    halves = next(stored.stream(iter([np.arange(1, 20_001)])))[1]
    assert np.abs(halves - vectors).max() < 1e-3
    for query in model.texts(50):
        exact, rounded = vectors @ query, halves @ query
        top, top_rounded = np.argsort(-exact)[:10], np.argsort(-rounded)[:10]
        for a, b in zip(top, top_rounded, strict=True):  # where they differ, the two were within float16's step
            assert a == b or abs(exact[a] - exact[b]) < 1e-3


@pytest.mark.parametrize("reads_rows", [False, True], ids=["mapped", "read row by row"])
def test_rows_round_trip_in_any_order_and_unwritten_rows_read_as_zeros(tmp_path, reads_rows):
    vectors = ClipLike(dim=8, clusters=3).images(10)
    stored = VectorFile(tmp_path / VECTOR_FILE, 8, writable=True)
    stored.write(np.array([9, 3, 4, 5, 1]), vectors[:5])  # runs 1, 3-5, 9
    stored.sync()
    reader = VectorFile(tmp_path / VECTOR_FILE, 8)
    reader.reads_rows = reads_rows
    np.testing.assert_allclose(reader.read([1, 3, 4, 5, 9]), vectors[[4, 1, 2, 3, 0]], atol=1e-3)
    assert not reader.read([2, 6, 500, -1]).any()  # a hole, past the end, and no id
    with pytest.MonkeyPatch.context() as patch:  # gathered in parts of two rows, with missing rows in some parts
        patch.setattr(vectors_module, "GATHER_ROWS", 2)
        got = reader.read([500, 9, 3, -1, 2, 4, 1])
        np.testing.assert_allclose(
            got, np.vstack([np.zeros((1, 8)), vectors[[0, 1]], np.zeros((2, 8)), vectors[[2, 4]]]), atol=1e-3
        )
    assert reader.read([]).shape == (0, 8) and reader.read([500]).shape == (1, 8)
    found, ids = reader.best(np.array([500, 3, 9, 1]), vectors[1], 2)
    assert ids.tolist() == [3, 9 if vectors[0] @ vectors[1] > vectors[4] @ vectors[1] else 1]
    ids, got = next(reader.stream(iter([np.array([3, 9])])))
    assert ids.tolist() == [3, 9] and np.allclose(got, vectors[[1, 0]], atol=1e-3)


@pytest.mark.parametrize("how", ["cached", "evicted", "no NOWAIT", "NOWAIT refused"])
def test_rows_read_one_by_one_come_from_the_page_cache_or_the_disk_alike(tmp_path, monkeypatch, how):
    monkeypatch.setattr(vectors_module, "SPLIT_ROWS", 256)  # reads split among the cores (two or more parts)
    vectors = ClipLike(dim=64, clusters=5).images(3000)
    stored = VectorFile(tmp_path / VECTOR_FILE, 64, writable=True)
    stored.write(np.arange(1, 3001), vectors)
    stored.sync()
    reader = VectorFile(tmp_path / VECTOR_FILE, 64)
    reader.reads_rows = True
    if how == "evicted":
        os.posix_fadvise(reader.fd, 0, 0, os.POSIX_FADV_DONTNEED)
    if how == "no NOWAIT":
        reader._nowait = 0  # a file system that cannot
    if how == "NOWAIT refused":  # as a file system without it would: every read with the flag fails at once
        reader._nowait = 1 << 30  # a flag no kernel knows (EOPNOTSUPP)
    ids = np.random.default_rng(0).permutation(np.arange(1, 3001))[:2000]
    missed = reader.read_cached(np.empty((len(ids), 64), np.float16), ids * reader.row_bytes)
    if how != "evicted":  # (an eviction may be partial)
        assert len(missed) == (0 if how == "cached" else len(ids))
    np.testing.assert_allclose(reader.read(ids), vectors[ids - 1], atol=1e-3)
    query = vectors[99]
    for count in (2000, 50, 2000):  # the kept scorer's rows grow, then serve fewer, then more again
        scores, found = reader.best(np.append(ids[:count], 100), query, 5)
        exact = vectors[np.append(ids[:count], 100) - 1] @ query
        assert found[0] == 100 and np.allclose(scores, np.sort(exact)[::-1][:5], atol=2e-3)


def test_a_format_1_store_moves_its_vectors_out_of_sqlite_on_open(tmp_path, caplog):
    vectors = ClipLike(dim=16, clusters=5).images(50)
    plant_vectors(tmp_path / "s", vectors).save_index()
    with sqlite3.connect(tmp_path / "s" / "clipdex.db") as db:  # the store as clipdex format 1 wrote it
        db.execute("ALTER TABLE images ADD COLUMN vector BLOB")
        db.executemany(
            "UPDATE images SET vector = ? WHERE id = ?", [(v.tobytes(), i + 1) for i, v in enumerate(vectors)]
        )
        db.execute("DROP INDEX ix_images_vector_version")
        db.execute("ALTER TABLE images DROP COLUMN vector_version")
        db.execute("DROP TABLE removed_vectors")
        db.execute("UPDATE manifest SET format_version = 1")
    (tmp_path / "s" / VECTOR_FILE).unlink()
    (tmp_path / "s" / "index.json").write_text('{"data_version": 1, "count": 50}')  # format 1's index meta

    with caplog.at_level(logging.WARNING):
        store = open_store(tmp_path / "s")
    assert "moving its vectors out of the database" in caplog.text
    np.testing.assert_allclose(store.vectors.read(np.arange(1, 51)), vectors, atol=1e-3)
    assert [i for i, _ in store.search(vectors[7], 3)][0] == 8
    with sqlite3.connect(tmp_path / "s" / "clipdex.db") as db:
        assert db.execute("SELECT count(*) FROM images WHERE vector IS NOT NULL").fetchone() == (0,)
        assert db.execute("SELECT format_version FROM manifest").fetchone() == (2,)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        open_store(tmp_path / "s")
    assert "moving" not in caplog.text  # once
