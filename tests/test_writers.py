"""Two writers never corrupt a store, and a saved index must prove it matches the database or be rebuilt.

Real `clipdex index` processes race on one store (different folders; both creating it); a held lock makes
a writer wait and then give up with a clear message; saved index files that lie (missing vectors under the
current version), are garbage, or come with a garbage index.json are rebuilt from SQLite.
"""

import logging
import os
import subprocess
import sys
import threading
from pathlib import Path

import faiss
import numpy as np
import pytest

from indexer.indexing import index_folder
from indexer.settings import Settings
from indexer.store import INDEX_FILE, INDEX_META_FILE, is_database_url, open_store
from search.service import Service
from tests.support.photos import write_photos
from tests.support.stores import faiss_ids, stored


def indexer(folder, store, model, **env) -> subprocess.Popen:
    """A real `clipdex index` process, committing every 5 images so two runs interleave their chunks."""
    env = {**os.environ, "CLIPDEX_WORKERS": "1", "CLIPDEX_BATCH_SIZE": "4", "CLIPDEX_COMMIT_EVERY": "5", **env}
    command = [sys.executable, "-m", "search", "index", str(folder), "--store", str(store), "--model", str(model)]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> tuple[int, str]:
    _, err = proc.communicate(timeout=180)
    return proc.returncode, err


@pytest.mark.slow
@pytest.mark.parametrize("same_folder", [False, True], ids=["two-folders", "same-folder"])
def test_two_indexers_at_once_lose_nothing(tmp_path, clip_dir, store_location, same_folder):
    """Both start on a store that does not exist yet; every image ends up in the database and in the index.

    The embedded store takes one writer at a time; PostgreSQL one per folder, so two folders interleave.
    """
    settings = Settings(store=store_location, model=str(clip_dir))
    first, second = tmp_path / "a", tmp_path / ("a" if same_folder else "b")
    write_photos(first, 30, size=(160, 120))
    if not same_folder:
        write_photos(second, 30, start=100, size=(160, 120))
    runs = [indexer(folder, settings.store, clip_dir) for folder in (first, second)]
    results = [finish(proc) for proc in runs]
    assert [code for code, _ in results] == [0, 0], [err for _, err in results]
    assert not any("Traceback" in err for _, err in results)
    if same_folder or not is_database_url(store_location):  # one waited for the other, and said so
        assert any("being written by" in err for _, err in results)
    rows = stored(settings)
    assert len(rows) == (30 if same_folder else 60)
    assert faiss_ids(settings) == sorted(i for i, _ in rows.values())


def test_a_writer_waits_for_the_lock_then_gives_up_clearly(tmp_path, clip_dir, store_location):
    settings = Settings(store=store_location, model=str(clip_dir), workers=1)
    write_photos(tmp_path / "photos", 2)
    (tmp_path / "empty").mkdir()
    index_folder(tmp_path / "empty", settings, show_progress=False)  # creates the store
    with open_store(store_location).writing((tmp_path / "photos").resolve(), timeout=5):
        code, err = finish(indexer(tmp_path / "photos", settings.store, clip_dir, CLIPDEX_LOCK_TIMEOUT="1"))
    assert code == 2
    assert "still being written by another clipdex process after 1 s" in err and "Traceback" not in err
    summary = index_folder(tmp_path / "photos", settings, show_progress=False)  # the lock went with its holder
    assert summary.indexed == 2


def test_the_writer_lock_is_reentrant_and_released(store_location):
    store = open_store(store_location, model="m", dim=4, create=True)
    with store.writing(Path("/a"), timeout=1), store.writing(Path("/a"), timeout=1):
        pass
    with store.writing(None, timeout=1):  # free again, for the whole store too
        pass


@pytest.fixture
def indexed(tmp_path, settings):
    write_photos(tmp_path / "photos", 6)
    index_folder(tmp_path / "photos", settings, show_progress=False)
    return settings


def test_a_saved_index_missing_vectors_is_rebuilt(indexed, caplog):
    """What two writers used to leave: an index file short of rows, saved under the current data version."""
    store = open_store(indexed.store)
    store.sync_index().remove_ids(np.asarray([2, 5], dtype=np.int64))
    store.save_index()
    with caplog.at_level(logging.WARNING):
        assert open_store(indexed.store).sync_index().ntotal == 6
    assert "holds 4 vectors once caught up, the database 6; rebuilding it" in caplog.text
    assert faiss_ids(indexed) == list(range(1, 7))


def test_a_service_answers_at_once_and_replaces_a_short_index_in_the_background(indexed, caplog):
    store = open_store(indexed.store)
    store.sync_index().remove_ids(np.asarray([2, 5], dtype=np.int64))
    store.save_index()
    engine = Service(indexed, serving=True)
    with caplog.at_level(logging.WARNING):
        engine.similar(1, k=5)  # answered from the loaded index while the count runs
        for thread in threading.enumerate():
            if thread.name == "index-check":
                thread.join(timeout=60)
    assert "holds 4 vectors once caught up, the database 6; rebuilding it" in caplog.text
    assert engine.store.index.ntotal == 6 and len(engine.similar(1, k=5)) == 5
    assert faiss_ids(indexed) == list(range(1, 7))  # and saved


@pytest.mark.parametrize("damage", ["truncated", "garbage", "zeroed", "meta-garbage"])
def test_damaged_index_files_are_rebuilt(indexed, damage, caplog):
    index_file, meta_file = Path(indexed.store) / INDEX_FILE, Path(indexed.store) / INDEX_META_FILE
    if damage == "truncated":
        index_file.write_bytes(index_file.read_bytes()[:100])
    elif damage == "garbage":
        index_file.write_bytes(os.urandom(4096))
    elif damage == "zeroed":
        index_file.write_bytes(bytes(index_file.stat().st_size))
    else:
        meta_file.write_text("{not json")
    with caplog.at_level(logging.WARNING):
        hits = Service(indexed).similar(1, k=5)
    assert len(hits) == 5
    assert faiss.read_index(str(index_file)).ntotal == 6  # the rebuilt file is whole again
    if damage != "meta-garbage":
        assert "is damaged" in caplog.text
