"""Videos and Live Photos through the API and the page: hits with their moments, thumbnails of the frames, the files
served with range requests, and the photo view playing from the moment found."""

import io
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image as PILImage
from sqlalchemy import select

from indexer.indexing import index_folder
from indexer.settings import Settings
from indexer.store import Image, open_store
from search.api import create_app
from tests.support.browser import CHROMIUM, serving
from tests.support.photos import photo, write_photos
from tests.support.videos import make_video

RED, GREEN, BLUE = (220, 30, 30), (30, 200, 30), (30, 30, 220)
SCENES = [(RED, 4), (GREEN, 4), (BLUE, 4), (GREEN, 4)]  # (colour, seconds): a kept frame at 0, 4, 8 and 12 s


@pytest.fixture(scope="module")
def videos(tmp_path_factory, clip_dir) -> tuple[Settings, dict[str, int]]:
    """A 16 s video (red, green, blue, green scenes of 4 s), a Live Photo (a still and its movie) and two photos,
    indexed. Yields the settings and {relpath: id} of every row, the video's kept frames included."""
    root = tmp_path_factory.mktemp("videos")
    make_video(root / "clip.mp4", SCENES)
    photo(7).save(root / "live.jpg", quality=90)
    make_video(root / "live.mov", [(photo(7), 1)])
    write_photos(root, 2)
    settings = Settings(
        store=tmp_path_factory.mktemp("video-store") / "store", model=str(clip_dir), device="cpu", workers=1
    )
    index_folder(root, settings, show_progress=False)
    with open_store(settings.store).session() as s:
        ids = dict(s.execute(select(Image.relpath, Image.id)).tuples().all())
    return settings, ids


@pytest.fixture(scope="module")
def client(videos) -> TestClient:
    with TestClient(create_app(videos[0])) as client:
        yield client


def frame(ids: dict[str, int], second: int) -> int:
    """The id of the video's kept frame at `second` (0: the video's own row)."""
    return ids["clip.mp4" if second == 0 else f"clip.mp4#t={second}.000"]


def colour_of(jpeg: bytes) -> tuple[int, int, int]:
    """The scene colour a JPEG shows: which of RED, GREEN, BLUE its median pixel is nearest (the moving dark bar
    covers a minority of it)."""
    median = np.median(np.asarray(PILImage.open(io.BytesIO(jpeg)).convert("RGB")).reshape(-1, 3), axis=0)
    return min((RED, GREEN, BLUE), key=lambda c: float(np.abs(median - c).sum()))


def test_a_video_is_one_item_with_its_kept_frames(client, videos):
    _, ids = videos
    kept = {f"clip.mp4#t={t}.000" for t in (4, 8, 12)}
    assert {rel for rel in ids if rel.startswith("clip.mp4")} == {"clip.mp4"} | kept
    info = client.get(f"/api/images/{ids['clip.mp4']}").json()
    assert info["media"] == "video" and info["format"].startswith("MP4")
    assert info["duration_s"] == pytest.approx(16, abs=0.1)
    assert info["timestamp_s"] == 0 and info["frames"] == [0, 4, 8, 12]
    assert info["motion_url"] is None
    still = client.get(f"/api/images/{ids['img000.jpg']}").json()
    assert (still["media"], still["duration_s"], still["timestamp_s"], still["frames"]) == ("image", None, None, [])
    browsed = {p["name"]: p for p in client.get("/api/images", params={"k": 50}).json()["photos"]}
    assert (browsed["clip.mp4"]["media"], browsed["clip.mp4"]["duration_s"]) == ("video", pytest.approx(16, abs=0.1))
    assert "clip.mp4#t=4.000" not in browsed  # frames are searched, never listed


def test_an_image_query_finds_the_video_at_the_matching_moment(client, videos):
    """A planted query: a green scene's frame, uploaded, finds the video with its best moment in a green scene, and
    both green scenes (alike) as its moments, best first; the red and blue ones are no match."""
    _, ids = videos
    green = client.get(f"/api/images/{frame(ids, 4)}/thumbnail").content
    hits = client.post("/api/search/image", files={"file": ("green.jpg", green, "image/jpeg")}).json()["hits"]
    video = next(h for h in hits if h["id"] == ids["clip.mp4"])
    assert video["media"] == "video"
    assert video["timestamp_s"] in (4, 12)
    moments = video["moments"]
    assert {m["id"]: m["timestamp_s"] for m in moments} == {frame(ids, 4): 4, frame(ids, 12): 12}
    assert moments[0]["timestamp_s"] == video["timestamp_s"]
    assert moments[0]["score"] >= moments[1]["score"]
    assert video["thumbnail_url"] == f"/api/images/{moments[0]['id']}/thumbnail"  # the best moment's frame
    still = next(h for h in hits if h["id"] == ids["img000.jpg"])
    assert (still["media"], still["timestamp_s"], still["moments"]) == ("image", None, None)


def test_thumbnails_show_the_frame_of_each_moment(client, videos):
    settings, ids = videos
    for second, scene in [(0, RED), (4, GREEN), (8, BLUE), (12, GREEN)]:
        thumb = client.get(f"/api/images/{frame(ids, second)}/thumbnail")
        assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
        assert PILImage.open(io.BytesIO(thumb.content)).size == (160, 120)  # under the thumbnail edge already
        assert colour_of(thumb.content) == scene
    cached = list((Path(settings.store) / "thumbs").glob("*ms.jpg"))
    assert len(cached) == 4  # one per second shown, keyed by the video's hash


def test_the_video_file_answers_range_requests(client, videos):
    settings, ids = videos
    data = (Path(client.get(f"/api/images/{ids['clip.mp4']}").json()["path"])).read_bytes()
    whole = client.get(f"/api/images/{ids['clip.mp4']}/file")
    assert whole.status_code == 200 and whole.content == data
    assert whole.headers["content-type"] == "video/mp4" and whole.headers["accept-ranges"] == "bytes"
    part = client.get(f"/api/images/{ids['clip.mp4']}/file", headers={"Range": "bytes=100-1099"})
    assert part.status_code == 206 and part.content == data[100:1100]
    assert part.headers["content-range"] == f"bytes 100-1099/{len(data)}"
    tail = client.get(f"/api/images/{ids['clip.mp4']}/file", headers={"Range": "bytes=-500"})
    assert tail.status_code == 206 and tail.content == data[-500:]


def test_a_live_photo_plays_its_movie(client, videos):
    _, ids = videos
    assert "live.mov" not in ids  # the movie is the still's motion, no item of its own
    info = client.get(f"/api/images/{ids['live.jpg']}").json()
    assert info["media"] == "image" and info["motion_url"] == f"/api/images/{ids['live.jpg']}/motion"
    movie = Path(info["path"]).with_suffix(".mov").read_bytes()
    whole = client.get(info["motion_url"])
    assert whole.status_code == 200 and whole.content == movie
    assert whole.headers["content-type"] == "video/quicktime"
    part = client.get(info["motion_url"], headers={"Range": "bytes=0-99"})
    assert part.status_code == 206 and part.content == movie[:100]


@pytest.mark.parametrize(
    "url",
    [
        "/api/images/999999/file",
        "/api/images/999999/thumbnail",
        "/api/images/999999/motion",
        "/api/images/{green}",  # a kept frame is no item: the page asks for its video
        "/api/images/{green}/file",
        "/api/images/{green}/motion",
        "/api/images/{video}/motion",  # a video has no Live Photo movie
        "/api/images/{still}/motion",
    ],
)
def test_what_is_not_there_is_a_404_with_a_message(client, videos, url):
    _, ids = videos
    response = client.get(url.format(green=frame(ids, 4), video=ids["clip.mp4"], still=ids["img000.jpg"]))
    assert response.status_code == 404, response.text
    assert isinstance(response.json()["detail"], str)


def test_a_moved_movie_or_one_outside_the_folder_is_not_served(client, videos):
    settings, ids = videos
    store = open_store(settings.store)
    for motion in ["../../etc/passwd", "/etc/passwd", "gone.mov"]:
        with store.session() as s:
            s.get(Image, ids["live.jpg"]).motion_relpath = motion
            s.commit()
        response = client.get(f"/api/images/{ids['live.jpg']}/motion")
        assert response.status_code == 404 and response.json()["detail"]
    with store.session() as s:
        s.get(Image, ids["live.jpg"]).motion_relpath = "live.mov"
        s.commit()
    assert client.get(f"/api/images/{ids['live.jpg']}/motion").status_code == 200


def test_openapi_documents_the_video_fields(client):
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    hit = schemas["HitPublic"]["properties"]
    assert {"media", "timestamp_s", "moments"} <= set(hit) and all(
        hit[f].get("description") for f in ("media", "moments")
    )
    assert set(schemas["MomentPublic"]["properties"]) == {"id", "timestamp_s", "score", "thumbnail_url"}
    assert {"media", "duration_s", "frames", "motion_url"} <= set(schemas["ImagePublic"]["properties"])


# --- the page -------------------------------------------------------------------------------------------------------

needs_chromium = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium")
PLAYER = "#viewer video"


@pytest.fixture(scope="module")
def server(videos):
    with serving(create_app(videos[0])) as url:
        yield url


def loaded_at(page) -> float:
    """The player's position once it knows the video's length (where the view asked it to start)."""
    page.wait_for_function(f"document.querySelector('{PLAYER}').readyState >= 1")
    return page.eval_on_selector(PLAYER, "video => video.currentTime")


@needs_chromium
def test_a_video_hit_plays_from_its_moment_and_its_moments_seek(server, browser, client, videos, tmp_path):
    _, ids = videos
    query = tmp_path / "green.jpg"
    query.write_bytes(client.get(f"/api/images/{frame(ids, 4)}/thumbnail").content)
    page = browser.new_page(viewport={"width": 1100, "height": 800})
    page.goto(server)
    page.set_input_files("#file", str(query))
    page.wait_for_function("document.querySelector('#status').textContent.includes('like green.jpg')")
    cell = page.locator(f'.hit[data-id="{ids["clip.mp4"]}"]')  # a search hit now, no longer the timeline's cell
    badge = cell.locator(".badge").text_content()
    assert badge in ("▶ 0:04", "▶ 0:12")  # the best moment's second
    assert "video at 0:" in cell.get_attribute("aria-label")
    assert "/thumbnail" in cell.locator("img").get_attribute("src")
    best = int(badge[-2:])
    page.locator(".hit-wrap", has=cell).hover()
    page.get_by_role("button", name="View clip.mp4").click()
    page.locator(PLAYER).wait_for()
    assert not page.locator("#viewer img").is_visible()
    assert loaded_at(page) == pytest.approx(best, abs=1)
    moments = page.get_by_role("group", name="Matching moments").get_by_role("button")
    assert moments.all_text_contents() == ["0:04", "0:12"]
    other = 16 - best
    page.get_by_role("button", name=f"Play from 0:{other:02d}").click()
    page.wait_for_function(f"Math.abs(document.querySelector('{PLAYER}').currentTime - {other}) < 1")
    assert page.get_by_role("button", name=f"Play from 0:{other:02d}").get_attribute("aria-current") == "true"
    page.keyboard.press("Escape")  # closing the view stops the video (the dialog's close event comes as a task)
    page.wait_for_function(f"(video => video.paused && !video.getAttribute('src'))(document.querySelector('{PLAYER}'))")


@needs_chromium
def test_browsing_opens_a_video_at_its_start_with_its_scenes(server, browser, videos):
    _, ids = videos
    page = browser.new_page(viewport={"width": 1100, "height": 800})
    page.goto(server)
    page.locator(f'.hit[data-id="{ids["clip.mp4"]}"]').click()
    assert loaded_at(page) == pytest.approx(0, abs=1)
    scenes = page.get_by_role("group", name="Scenes").get_by_role("button")
    assert scenes.all_text_contents() == ["0:00", "0:04", "0:08", "0:12"]
    page.get_by_role("button", name="Play from 0:08").click()
    page.wait_for_function(f"Math.abs(document.querySelector('{PLAYER}').currentTime - 8) < 1")
    cells = page.eval_on_selector_all(".hit", "cells => cells.map((cell) => cell.dataset.id)")
    last = cells.index(str(ids["clip.mp4"])) == len(cells) - 1
    page.keyboard.press("ArrowLeft" if last else "ArrowRight")  # the arrows still step through the collection
    page.wait_for_function(f"document.querySelector('#viewer').dataset.id !== '{ids['clip.mp4']}'")
    page.locator("#viewer img").wait_for()  # a photo again, once it loads
    assert not page.locator(PLAYER).is_visible()


@needs_chromium
def test_a_live_photo_plays_its_movie_from_the_view(server, browser, videos):
    _, ids = videos
    page = browser.new_page(viewport={"width": 1100, "height": 800})
    page.goto(server)
    page.locator(f'.hit[data-id="{ids["live.jpg"]}"]').click()
    page.locator("#viewer img").wait_for()
    assert not page.locator(PLAYER).is_visible()
    page.locator("#viewer").get_by_role("button", name="Live", exact=True).click()
    page.locator(PLAYER).wait_for()
    page.wait_for_function(f"document.querySelector('{PLAYER}').readyState >= 1")
    assert page.eval_on_selector(PLAYER, "video => video.src").endswith(f"/api/images/{ids['live.jpg']}/motion")
    page.get_by_role("button", name="Close").click()
    assert not page.locator("#viewer").is_visible()
    page.locator(f'.hit[data-id="{ids["img000.jpg"]}"]').click()
    page.wait_for_function(f"document.querySelector('#viewer').dataset.id === '{ids['img000.jpg']}'")
    live = page.locator("#viewer").get_by_role("button", name="Live", exact=True)
    assert not live.is_visible()  # a still without a movie
