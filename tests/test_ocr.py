"""Reading the text in images with the real PP-OCRv4 models of the rapidocr-onnxruntime wheel.

The fixtures are rendered on the spot: clean, large words on plain and photo-like backgrounds, and photos
with no text at all, so the exact words read are known.
"""

import json
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image, ImageDraw, ImageFont
from typer.testing import CliRunner

from indexer.enrich.ocr import DEFAULT_READER, Reader, ocr_store
from indexer.errors import ModelLoadError
from indexer.indexing import index_folder
from indexer.settings import Settings
from indexer.store import TextLine, open_store
from search.api import create_app
from search.cli import app
from search.service import Service
from tests.support.photos import photo

pytest.importorskip("rapidocr_onnxruntime")
TEXTS = {
    "receipt.png": ["CORNER SHOP", "TOTAL 42.50"],
    "sign.jpg": ["Bahnhofstrasse"],
}


def render(lines: list[str], background: Image.Image | None = None) -> Image.Image:
    image = background or Image.new("RGB", (800, 120 + 110 * len(lines)), (245, 243, 238))
    draw = ImageDraw.Draw(image)
    for n, line in enumerate(lines):
        draw.rectangle((30, 50 + 110 * n, 770, 140 + 110 * n), fill=(250, 250, 250))  # a label or a sign
        draw.text((50, 60 + 110 * n), line, fill=(15, 15, 15), font=ImageFont.load_default(size=56))
    return image


@pytest.fixture(scope="module")
def reader() -> Reader:
    return Reader()


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "photos"
    root.mkdir()
    render(TEXTS["receipt.png"]).save(root / "receipt.png")
    render(TEXTS["sign.jpg"], photo(3, (800, 450))).save(root / "sign.jpg", quality=90)
    for n in range(2):
        photo(10 + n, (640, 480)).save(root / f"holiday{n}.jpg")
    return root


@pytest.fixture
def settings(tmp_path, clip_dir) -> Settings:
    return Settings(store=tmp_path / "store", model=str(clip_dir), device="cpu", workers=1, batch_size=4)


def stored_text(settings: Settings) -> dict[str, list[str]]:
    store = open_store(settings.store)
    with store.session() as s:
        lines = s.query(TextLine).order_by(TextLine.id).all()
    paths = store.paths(sorted({line.image_id for line in lines}))
    found: dict[str, list[str]] = {}
    for line in lines:
        found.setdefault(paths[line.image_id].rsplit("/", 1)[-1], []).append(line.text)
    return found


def test_reads_the_exact_words_and_nothing_in_photos(reader):
    assert [line.text for line in reader.read(np.asarray(render(TEXTS["receipt.png"])))] == TEXTS["receipt.png"]
    assert reader.read(np.asarray(photo(10, (640, 480)))) == []
    assert reader.read(np.asarray(photo(11, (1600, 1200)))) == []
    assert reader.read(np.full((1200, 1600, 3), 128, dtype=np.uint8)) == []


def test_index_with_ocr_then_search_by_the_words(folder, settings):
    summary = index_folder(folder, settings, show_progress=False, ocr=True)
    assert (summary.text.read, summary.text.empty, summary.text.failed) == (2, 2, 0)
    assert "read text in 2 images (3 lines), none in 2" in summary.line()
    assert stored_text(settings) == {"receipt.png": TEXTS["receipt.png"], "sign.jpg": TEXTS["sign.jpg"]}
    engine = Service(Settings(store=settings.store))
    hits = engine.search("42.50", "text")
    assert [h.path.rsplit("/", 1)[-1] for h in hits] == ["receipt.png"] and "TOTAL 42.50" in hits[0].caption
    assert [h.path.rsplit("/", 1)[-1] for h in engine.search("bahnhofstrasse", "text")] == ["sign.jpg"]
    assert engine.search("bahnhofstrasse", "caption") == []  # read text is not a caption
    assert engine.search("bahnhofstrasse", "hybrid", k=4)[0].path.endswith("sign.jpg")  # fused in hybrid
    info = engine.image_info(hits[0].id)
    assert info.captions == [] and [line.text for line in info.text] == TEXTS["receipt.png"]
    for line in info.text:
        assert all(0 <= x <= 1 and 0 <= y <= 1 for x, y in line.box) and line.confidence > 0.9
    again = index_folder(folder, settings, show_progress=False, ocr=True)
    assert (again.text.read + again.text.empty, again.text.done_before) == (0, 4)  # nothing read twice


def test_a_changed_file_loses_its_old_text(folder, settings, reader):
    index_folder(folder, settings, show_progress=False, ocr=True)
    time.sleep(0.01)
    render(["OPEN 24 HOURS"]).save(folder / "receipt.png")
    index_folder(folder, settings, show_progress=False, ocr=True)
    assert stored_text(settings)["receipt.png"] == ["OPEN 24 HOURS"]
    assert Service(Settings(store=settings.store)).search("42.50", "text") == []


def test_a_file_the_reader_cannot_open_fails_alone_and_redo_reads_again(folder, settings, reader):
    index_folder(folder, settings, show_progress=False)
    (folder / "sign.jpg").write_bytes(b"no longer a JPEG")  # changed after indexing, before reading
    store = open_store(settings.store)
    summary = ocr_store(store, settings, show_progress=False, reader=reader)
    assert (summary.read, summary.empty, summary.failed) == (1, 2, 1)
    assert list(summary.failures.values()) == ["corrupt"] or "not an image" in list(summary.failures.values())[0]
    render(TEXTS["sign.jpg"]).save(folder / "sign.jpg")
    assert ocr_store(store, settings, show_progress=False, reader=reader).done_before == 4  # failures are kept
    redone = ocr_store(store, settings, redo=True, show_progress=False, reader=reader)
    assert (redone.read, redone.failed) == (2, 0)


def test_cli_api_and_errors(folder, settings):
    index_folder(folder, settings, show_progress=False)
    runner = CliRunner()
    result = runner.invoke(app, ["ocr", "--store", str(settings.store), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["read"] == 2 and json.loads(result.stdout)["reader"] == DEFAULT_READER
    result = runner.invoke(app, ["search", "42.50", "--mode", "text", "--store", str(settings.store), "--json"])
    assert json.loads(result.stdout)[0]["path"].endswith("receipt.png")
    result = runner.invoke(app, ["ocr", "--store", str(settings.store), "--ocr-model", "/no/such/rec.onnx"])
    assert result.exit_code == 2 and "no OCR model file /no/such/rec.onnx" in result.output
    with pytest.raises(ModelLoadError, match="no OCR model file"):
        Reader("/no/such/rec.onnx")
    import rapidocr_onnxruntime

    wheel_rec = next(Path(rapidocr_onnxruntime.__file__).parent.glob("models/*rec*.onnx"))  # a model by path
    other = Reader(str(wheel_rec))
    assert other.name == f"ocr:rapidocr:{wheel_rec.name}"
    assert [line.text for line in other.read(np.asarray(render(TEXTS["receipt.png"])))] == TEXTS["receipt.png"]
    with TestClient(create_app(Settings(store=settings.store))) as client:
        hit = client.get("/api/search", params={"q": "bahnhofstrasse", "mode": "text"}).json()["hits"][0]
        info = client.get(f"/api/images/{hit['id']}").json()
        assert [line["text"] for line in info["text"]] == TEXTS["sign.jpg"] and len(info["text"][0]["box"]) == 4
        job = client.post("/api/ocr-jobs", params={"redo": True}).json()
        assert job["status"] == "queued"
        for _ in range(300):
            job = client.get(f"/api/ocr-jobs/{job['id']}").json()
            if job["status"] in ("done", "failed"):
                break
            time.sleep(0.1)
        assert (job["status"], job["read"], job["empty"]) == ("done", 2, 2)
        assert client.get("/api/ocr-jobs/nope").status_code == 404


def test_the_page_outlines_the_text_that_matched(folder, settings, browser):
    from tests.support.browser import serving

    index_folder(folder, settings, show_progress=False, ocr=True)
    with serving(create_app(Settings(store=settings.store))) as url:
        page = browser.new_page(viewport={"width": 1100, "height": 800})
        page.goto(f"{url}/?q=42.50&mode=text")
        page.wait_for_function("document.querySelector('#status').textContent.startsWith('1 result')")
        page.locator("#grid .hit-wrap").first.hover()
        page.locator("#grid .hit-wrap .open").first.click()
        page.locator("#viewer").wait_for(state="visible")
        assert "CORNER SHOP · TOTAL 42.50" in page.locator("#viewer dl").inner_text()
        assert page.locator("#viewer svg polygon").count() == 2
        assert page.locator("#viewer svg polygon.match").count() == 1  # the line with 42.50


def test_a_killed_run_resumes_where_it_stopped(tmp_path, settings, reader):
    import os
    import signal
    import subprocess
    import sys

    from sqlalchemy import func, select

    from indexer.store import Caption

    root = tmp_path / "scans"
    root.mkdir()
    for n in range(40):
        render([f"PAGE {n}"]).save(root / f"page{n:02d}.png")
    index_folder(root, settings, show_progress=False)
    store = open_store(settings.store)

    def read_so_far() -> int:
        with store.session() as s:
            return s.scalar(select(func.count()).select_from(Caption).where(Caption.model == DEFAULT_READER))

    env = os.environ | {"CLIPDEX_STORE": str(settings.store)}
    child = subprocess.Popen([sys.executable, "-m", "search", "ocr"], env=env, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while read_so_far() < 8 and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    child.send_signal(signal.SIGKILL)
    child.wait()
    partial = read_so_far()
    assert 8 <= partial < 40  # a batch committed, the run cut short
    resumed = ocr_store(store, settings, show_progress=False, reader=reader)
    assert resumed.done_before == partial and resumed.read == 40 - partial
    assert read_so_far() == 40
    assert Service(Settings(store=settings.store)).search("page 17", "text", k=1)[0].path.endswith("page17.png")


def test_text_is_read_in_a_videos_kept_frames_and_found_at_its_moment(tmp_path, settings):
    from tests.support.videos import make_video

    root = tmp_path / "videos"
    root.mkdir()
    sign = render(TEXTS["sign.jpg"])  # 800 x 230: the video's size, so it stands still
    make_video(root / "walk.mp4", [((90, 60, 40), 3), (sign, 3), ((40, 60, 90), 3)], size=sign.size)
    summary = index_folder(root, settings, show_progress=False, ocr=True)
    assert summary.text.read == 1  # the sign's frame; the plain scenes have no text
    hits = Service(Settings(store=settings.store)).search("bahnhofstrasse", "text")
    assert [h.path.rsplit("/", 1)[-1] for h in hits] == ["walk.mp4"]  # the video, not its frame's row
    assert 2.0 <= hits[0].timestamp_s <= 7.0 and hits[0].caption == "Bahnhofstrasse"
