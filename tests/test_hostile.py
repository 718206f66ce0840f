"""What hostile files and a full disk did to the service: swapped files, small files that decode huge, ENOSPC.

Each case was seen from outside: /etc/passwd served as image/jpeg through a swapped symlink, a 24 KB PNG
taking the server to 1.7 GB, thumbnails answering 500 on a full disk.
"""

import io
import subprocess
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image as PILImage

import search.media
from indexer.indexing import index_folder
from indexer.settings import Settings
from indexer.store import open_store
from search.api import create_app
from tests.support.photos import write_photos


def serve(tmp_path, clip_dir, store) -> TestClient:
    write_photos(tmp_path / "photos", 3)
    settings = Settings(store=store, model=str(clip_dir), device="cpu", workers=1, batch_size=4)
    index_folder(tmp_path / "photos", settings, show_progress=False)
    return TestClient(create_app(settings))


@pytest.fixture
def service(tmp_path, clip_dir):
    with serve(tmp_path, clip_dir, tmp_path / "store") as client:
        yield client


def test_a_file_swapped_for_a_symlink_is_not_served(service):
    client = service
    assert client.get("/api/images/1/file").status_code == 200
    target = Path(client.get("/api/images/1").json()["path"])
    target.unlink()
    target.symlink_to("/etc/passwd")
    for route in ("file", "thumbnail"):
        response = client.get(f"/api/images/1/{route}")
        assert response.status_code == 404
        assert "changed since it was indexed" in response.json()["detail"]
        assert b"root:" not in response.content


def test_a_file_changed_since_indexing_is_not_served(service):
    client = service
    path = client.get("/api/images/2").json()["path"]
    PILImage.new("RGB", (50, 40), "red").save(path, "JPEG")  # another picture under the indexed name
    assert client.get("/api/images/2/file").status_code == 404
    assert client.get("/api/images/3/file").status_code == 200


def test_a_small_upload_that_decodes_huge_is_refused_before_decoding(service):
    """14,000 x 14,000 pixels of 1-bit PNG: 24 KB on the wire, 590 MB as RGB."""
    client = service
    bomb = io.BytesIO()
    PILImage.new("1", (14_000, 14_000)).save(bomb, "PNG")
    assert len(bomb.getvalue()) < 100_000
    for route in ("/api/search/image", "/api/classify"):
        data = {"labels": "cat,dog"} if route == "/api/classify" else {}
        response = client.post(route, files={"file": ("bomb.png", bomb.getvalue(), "image/png")}, data=data)
        assert response.status_code == 422
        assert "too large" in response.json()["detail"]


def test_an_upload_over_the_limit_is_refused_before_it_is_read(service):
    """A 1 GiB upload was spooled whole to a temp file before the 413 came."""
    client = service
    headers = {"content-length": str(2**30), "content-type": "multipart/form-data; boundary=x"}
    response = client.post("/api/search/image", content=b"x" * 65536, headers=headers)
    assert response.status_code == 413 and "Content Too Large" in response.text

    def chunks():  # sent without a length: cut off once past the limit, not read to the end
        for _ in range(1024):
            yield b"y" * 65536

    response = client.post("/api/search/image", content=chunks(), headers={"content-type": headers["content-type"]})
    assert response.status_code == 413 and "Content Too Large" in response.text


def test_a_thumbnail_over_the_request_pixel_budget_is_refused(service, monkeypatch):
    client = service
    monkeypatch.setattr(search.media, "REQUEST_MAX_PIXELS", 320 * 240 - 1)  # the photos are 320 x 240
    response = client.get("/api/images/1/thumbnail")
    assert response.status_code == 422
    assert "too large for a thumbnail" in response.json()["detail"]


def test_thumbnails_on_a_full_disk_answer_503_and_cache_nothing(tmp_path, clip_dir, small_disk):
    with serve(tmp_path, clip_dir, small_disk / "store") as client:
        filler = fill(small_disk)
        response = client.get("/api/images/1/thumbnail")
        assert response.status_code == 503
        assert "no room for thumbnails" in response.json()["detail"]
        assert not list((small_disk / "store" / "thumbs").glob("*"))  # nothing half-written left behind
        filler.unlink()
        assert client.get("/api/images/1/thumbnail").status_code == 200


def fill(disk, leave: int = 0):
    """Fill the filesystem at `disk`, then give back `leave` bytes."""
    filler = disk / "filler"
    with filler.open("wb", buffering=0) as f:  # unbuffered: closing it has nothing left to flush onto the full disk
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError:
            pass
    with filler.open("r+b") as f:
        f.truncate(max(0, filler.stat().st_size - leave))
    return filler


@pytest.fixture
def small_disk(tmp_path):
    """A real 8 MB filesystem (tmpfs) mounted for the test."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("mounting a tmpfs needs root")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def test_indexing_on_a_full_disk_says_so_loses_nothing_and_resumes(tmp_path, clip_dir, small_disk):
    from typer.testing import CliRunner

    from search.cli import app
    from tests.support.stores import faiss_ids, stored

    settings = Settings(store=small_disk / "store", model=str(clip_dir), device="cpu", workers=1, batch_size=4)
    write_photos(tmp_path / "photos", 10)
    index_folder(tmp_path / "photos", settings, show_progress=False)
    write_photos(tmp_path / "photos", 60, start=10, size=(640, 480))
    filler = fill(small_disk, leave=96 * 1024)
    args = ["index", str(tmp_path / "photos"), "--store", str(settings.store), "--model", str(clip_dir)]
    env = {"CLIPDEX_WORKERS": "1", "CLIPDEX_BATCH_SIZE": "4", "CLIPDEX_COMMIT_EVERY": "5"}
    result = CliRunner().invoke(app, args, env=env)
    assert result.exit_code == 2, result.output
    assert "is full; nothing committed is lost" in result.output and "Traceback" not in result.output
    kept = stored(settings)
    assert 10 <= len(kept) < 70
    filler.unlink()
    resumed = index_folder(tmp_path / "photos", settings, show_progress=False)
    assert resumed.unchanged == len(kept) and len(stored(settings)) == 70
    assert faiss_ids(settings) == sorted(i for i, _ in stored(settings).values())
    fill(small_disk)  # an unchanged re-run writes nothing, so a full disk does not stop it
    assert index_folder(tmp_path / "photos", settings, show_progress=False).unchanged == 70


def test_a_decode_past_the_worker_memory_budget_is_skipped_as_too_large(tmp_path, settings):
    """A 20 KB PNG of 12,000 x 12,000 1-bit pixels needs 430 MB as RGB; with a 200 MB budget it is skipped
    and the run goes on (the worker survives its MemoryError)."""
    photos = tmp_path / "photos"
    write_photos(photos, 2)
    PILImage.new("1", (12_000, 12_000)).save(photos / "bomb.png")
    budget = settings.model_copy(update={"decode_memory": 200 * 2**20})
    summary = index_folder(photos, budget, show_progress=False)
    assert (summary.indexed, dict(summary.skipped)) == (2, {"too large": 1})
    reason = dict(open_store(settings.store).skipped())[str(photos / "bomb.png")]
    assert reason == "too large: decoding needs more than the 0.2 GiB a decode may use"


def test_a_decode_past_the_timeout_is_skipped_and_retried_next_run(tmp_path, settings):
    photos = tmp_path / "photos"
    write_photos(photos, 2)
    noise = np.random.default_rng(0).integers(0, 255, (2000, 3000, 3), dtype=np.uint8)
    PILImage.fromarray(noise).save(photos / "slow.png", compress_level=1)
    # slow.png takes ~120 ms to decode; 50 ms leaves the small photos room (at 10 ms one went past it in CI)
    hurried = settings.model_copy(update={"decode_timeout": 0.05})
    summary = index_folder(photos, hurried, show_progress=False)
    assert (summary.indexed, dict(summary.skipped)) == (2, {"timeout": 1})
    again = index_folder(photos, settings, show_progress=False)  # `timeout` can heal: retried, unchanged
    assert (again.indexed, again.unchanged, dict(again.skipped)) == (1, 2, {})


def test_a_damaged_database_page_is_a_clear_error(tmp_path, settings):
    """One zeroed page (the images table's root) let `stats` work and crashed `search` with a traceback."""
    import sqlite3

    from typer.testing import CliRunner

    from search.cli import app

    write_photos(tmp_path / "photos", 40)
    index_folder(tmp_path / "photos", settings, show_progress=False)
    db = Path(settings.store) / "clipdex.db"
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'images'").fetchone()[0]
        size = conn.execute("PRAGMA page_size").fetchone()[0]
    data = bytearray(db.read_bytes())
    data[(page - 1) * size : page * size] = bytes(size)
    db.write_bytes(data)
    for path in Path(settings.store).glob("index.*"):
        path.unlink()  # so the search must read the vectors
    result = CliRunner().invoke(app, ["search", "a dog", "--store", str(settings.store)])
    assert result.exit_code == 2, result.output
    assert "the store's database is damaged" in result.output and "restore clipdex.db" in result.output
    assert "Traceback" not in result.output
