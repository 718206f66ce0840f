"""What hostile files and a full disk did to the service: swapped files, small files that decode huge, ENOSPC.

Each case was seen from outside: /etc/passwd served as image/jpeg through a swapped symlink, a 24 KB PNG
taking the server to 1.7 GB, thumbnails answering 500 on a full disk.
"""

import io
import subprocess
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image as PILImage

import search.engine
from indexer.pipeline import index_folder
from indexer.settings import Settings
from search.api import create_app
from tests.conftest import write_photos


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


def test_a_thumbnail_over_the_request_pixel_budget_is_refused(service, monkeypatch):
    client = service
    monkeypatch.setattr(search.engine, "REQUEST_MAX_PIXELS", 320 * 240 - 1)  # the photos are 320 x 240
    response = client.get("/api/images/1/thumbnail")
    assert response.status_code == 422
    assert "too large for a thumbnail" in response.json()["detail"]


def test_thumbnails_on_a_full_disk_answer_503_and_cache_nothing(tmp_path, clip_dir):
    """A real small filesystem (tmpfs), filled up after indexing."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("mounting a tmpfs needs root")
    try:
        with serve(tmp_path, clip_dir, disk / "store") as client:
            filler = disk / "filler"
            with filler.open("wb") as f, pytest.raises(OSError):
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            response = client.get("/api/images/1/thumbnail")
            assert response.status_code == 503
            assert "no room for thumbnails" in response.json()["detail"]
            assert not list((disk / "store" / "thumbs").glob("*"))  # nothing half-written left behind
            filler.unlink()
            assert client.get("/api/images/1/thumbnail").status_code == 200
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)
