"""kill -9 the indexer halfway: the next run completes to exactly what an uninterrupted run holds."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from indexer.indexing import index_folder
from indexer.settings import Settings
from indexer.store import is_database_url
from tests.support.photos import write_photos
from tests.support.processes import INDEXER, alive
from tests.support.stores import faiss_ids, indexed_counter, indexed_rows, stored


def child_pids(pid: int) -> list[int]:
    """The live children of a process (Linux /proc)."""
    return [int(c) for task in Path(f"/proc/{pid}/task").iterdir() for c in (task / "children").read_text().split()]


@pytest.mark.slow
def test_kill_9_then_rerun_equals_uninterrupted_run(tmp_path, clip_dir, store_location):
    photos = tmp_path / "photos"
    write_photos(photos, 240, size=(160, 120))
    killed = Settings(store=store_location, model=str(clip_dir), workers=1, batch_size=4, commit_every=8)
    env = {**os.environ, "CLIPDEX_WORKERS": "1", "CLIPDEX_BATCH_SIZE": "4", "CLIPDEX_COMMIT_EVERY": "8"}
    cmd = [sys.executable, "-c", INDEXER, "index", str(photos), "--store", str(killed.store), "--model", str(clip_dir)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    with indexed_counter(killed.store) as indexed:
        while indexed() < 16 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
    assert proc.poll() is None, "the indexer finished before it could be killed: " + proc.stderr.read().decode()
    children = child_pids(proc.pid)
    assert children, "the indexer runs its decode workers as child processes"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    # Its decode workers and multiprocessing's resource tracker die with it.
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [pid for pid in children if alive(pid)], "processes outlived the killed indexer"
    partial = indexed_rows(killed.store)
    assert 16 <= partial < 240

    resumed = index_folder(photos, killed, show_progress=False)
    assert resumed.indexed == 240 - partial and resumed.unchanged == partial

    clean = Settings(store=tmp_path / "clean", model=str(clip_dir), workers=1, batch_size=4)
    index_folder(photos, clean, show_progress=False)
    after_kill, uninterrupted = stored(killed), stored(clean)
    assert sorted(after_kill) == sorted(uninterrupted)
    precision = 1e-3 if is_database_url(store_location) else 1e-5  # float32 in PostgreSQL, float16 beside SQLite
    for rel, (_, vector) in uninterrupted.items():
        np.testing.assert_allclose(after_kill[rel][1], vector, atol=precision)
    ids = faiss_ids(killed)
    assert ids == sorted(i for i, _ in after_kill.values())  # no duplicate or orphan ids in the vector search
    assert len(ids) == len(set(ids)) == 240
