"""The HTTP API over a small planted store: every route, every 4xx, and ranks checked against brute force."""

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
from search.api import MAX_UPLOAD_BYTES, create_app
from search.service import Service
from tests.support.photos import write_photos


@pytest.fixture(scope="module")
def client(planted) -> TestClient:
    with TestClient(create_app(planted)) as client:
        yield client


def ids_of(store_path: Path, prefix: str) -> dict[str, int]:
    """relpath -> id of the stored images whose relpath starts with prefix."""
    with open_store(store_path).session() as s:
        return dict(s.execute(select(Image.relpath, Image.id).where(Image.relpath.startswith(prefix))).all())


def brute_force(store_path: Path, vector: np.ndarray, allowed: set[int] | None = None) -> list[int]:
    """Ids by descending cosine over every stored vector: the ground truth."""
    scored = [
        (float(v @ vector), int(i))
        for ids, vectors in open_store(store_path).iter_vectors()
        for i, v in zip(ids, vectors, strict=True)
        if allowed is None or i in allowed
    ]
    return [i for _, i in sorted(scored, reverse=True)]


def test_health_stats_and_page(client, planted):
    assert client.get("/api/health").json() == {"status": "ok"}
    stats = client.get("/api/stats").json()
    assert (stats["indexed"], stats["skipped"], stats["dim"]) == (6, 0, 16)
    page = client.get("/")
    assert page.status_code == 200 and "clipdex" in page.text
    assert client.get("/static/app.js").status_code == 200


def test_text_search_ranks_match_brute_force_and_pages(client, planted):
    engine = Service(planted)
    truth = brute_force(planted.store, engine.embed_query("a dog on a beach"))
    # The embedding ranking alone: in hybrid the folder beach/ lifts its photos for "beach" (names count).
    body = client.get("/api/search", params={"q": "a dog on a beach", "k": 6, "mode": "embedding"}).json()
    assert [h["id"] for h in body["hits"]] == truth
    assert body["hits"][0]["thumbnail_url"] == f"/api/images/{truth[0]}/thumbnail"
    page2 = client.get("/api/search", params={"q": "a dog on a beach", "k": 2, "offset": 2, "mode": "embedding"}).json()
    assert [h["id"] for h in page2["hits"]] == truth[2:4]
    scores = [h["score"] for h in body["hits"]]
    assert scores == sorted(scores, reverse=True)


def test_filters_narrow_inside_the_search(client, planted):
    engine = Service(planted)
    vector = engine.embed_query("sunset")
    beach = set(ids_of(planted.store, "beach/").values())
    city = set(ids_of(planted.store, "city/").values())

    def ids(**params) -> list[int]:  # the embedding ranking alone: hybrid would add caption matches
        response = client.get("/api/search", params={"q": "sunset", "k": 10, "mode": "embedding", **params})
        assert response.status_code == 200, response.text
        return [h["id"] for h in response.json()["hits"]]

    assert ids(folder="beach") == brute_force(planted.store, vector, beach)
    absolute = str(open_store(planted.store).roots()[0]) + "/city/"
    assert ids(folder=absolute) == brute_force(planted.store, vector, city)
    assert ids(folder="bea") == []  # a folder prefix matches whole folder names only
    assert ids(tag="sea") == brute_force(planted.store, vector, beach)
    assert ids(taken_from="2022-01-01") == brute_force(planted.store, vector, city)
    assert ids(taken_to="2021-12-31", tag="street") == []
    top = brute_force(planted.store, vector)
    assert ids(k=1) == top[:1]
    cutoff = client.get("/api/search", params={"q": "sunset", "k": 10, "mode": "embedding"}).json()["hits"][2]["score"]
    assert ids(min_score=cutoff) == top[:3]


def test_image_upload_finds_itself(client, planted, tmp_path):
    target = ids_of(planted.store, "city/img004.jpg")["city/img004.jpg"]
    path = write_photos(tmp_path, 1, start=4)[0]
    response = client.post("/api/search/image", files={"file": ("q.jpg", path.read_bytes(), "image/jpeg")})
    hits = response.json()["hits"]
    assert hits[0]["id"] == target and hits[0]["score"] > 0.99


def test_similar_leaves_out_itself_and_follows_brute_force(client, planted):
    first = ids_of(planted.store, "beach/img000.jpg")["beach/img000.jpg"]
    vector = open_store(planted.store).vector(first)
    body = client.get(f"/api/images/{first}/similar", params={"k": 5}).json()
    assert [h["id"] for h in body["hits"]] == brute_force(planted.store, vector)[1:6]
    filtered = client.get(f"/api/images/{first}/similar", params={"folder": "beach"}).json()
    assert [h["id"] for h in filtered["hits"]] == [
        i for i in brute_force(planted.store, vector) if i in set(ids_of(planted.store, "beach/").values())
    ][1:]


def test_metadata_file_and_thumbnail(client, planted):
    first = ids_of(planted.store, "beach/img000.jpg")["beach/img000.jpg"]
    info = client.get(f"/api/images/{first}").json()
    assert info["name"] == "img000.jpg" and (info["width"], info["height"]) == (320, 240)
    assert info["captions"] == ["a sunny beach"] and info["tags"] == [{"label": "Sea", "score": 0.9}]
    assert info["taken_at"].startswith("2021-06")
    hit = client.get("/api/search", params={"q": "beach", "k": 6}).json()["hits"]
    assert next(h for h in hit if h["id"] == first)["caption"] == "a sunny beach"
    file = client.get(f"/api/images/{first}/file")
    assert file.content == Path(info["path"]).read_bytes()
    thumb = client.get(f"/api/images/{first}/thumbnail")
    assert thumb.headers["content-type"] == "image/jpeg"
    assert PILImage.open(io.BytesIO(thumb.content)).size == (320, 240)  # already under the thumbnail edge
    assert len(list((Path(planted.store) / "thumbs").glob("*.jpg"))) >= 1


@pytest.mark.parametrize(
    ("method", "url", "kwargs", "status"),
    [
        ("get", "/api/search", {"params": {"q": ""}}, 422),
        ("get", "/api/search", {"params": {"q": "   "}}, 422),
        ("get", "/api/search", {"params": {"q": "x" * 1001}}, 422),
        ("get", "/api/search", {"params": {"q": "a", "k": 0}}, 422),
        ("get", "/api/search", {"params": {"q": "a", "k": 1001}}, 422),
        ("get", "/api/search", {"params": {"q": "a", "offset": -1}}, 422),
        ("get", "/api/search", {"params": {"q": "a", "offset": 10_001}}, 422),
        ("get", "/api/search", {"params": {"q": "a", "taken_from": "June"}}, 422),
        ("get", "/api/search", {"params": {"q": "a", "taken_from": "2024-01-02", "taken_to": "2024-01-01"}}, 422),
        ("get", "/api/search", {"params": {"q": "a", "min_score": "high"}}, 422),
        ("get", "/api/search", {"params": {"q": "a", "min_score": 2}}, 422),
        ("get", "/api/images/999999", {}, 404),
        ("get", "/api/images/999999/file", {}, 404),
        ("get", "/api/images/999999/thumbnail", {}, 404),
        ("get", "/api/images/999999/similar", {}, 404),
        ("get", "/api/images/abc", {}, 422),
        ("get", "/api/images/..%2F..%2Fetc%2Fpasswd/file", {}, 404),
        ("post", "/api/search/image", {"files": {"file": ("a.txt", b"hello, not an image", "text/plain")}}, 415),
        ("post", "/api/search/image", {"files": {"file": ("a.jpg", b"\xff\xd8\xff\xe0broken", "image/jpeg")}}, 422),
        (
            "post",
            "/api/search/image",
            {"files": {"file": ("a.jpg", b"\xff\xd8\xff" * (MAX_UPLOAD_BYTES // 3 + 1))}},
            413,
        ),
        ("post", "/api/search/image", {}, 422),
    ],
)
def test_bad_input_is_a_4xx_with_a_message(client, method, url, kwargs, status):
    response = getattr(client, method)(url, **kwargs)
    assert response.status_code == status, response.text
    assert response.json()["detail"]


def test_api_key_guards_every_api_route(planted):
    with TestClient(create_app(planted.model_copy(update={"api_key": "s3cret"}))) as client:
        assert client.get("/api/health").status_code == 401
        assert client.get("/api/stats", headers={"X-API-Key": "wrong"}).status_code == 401
        assert client.get("/api/stats", headers={"X-API-Key": "s3cret"}).json()["indexed"] == 6
        client.cookies.set("clipdex_api_key", "s3cret")
        assert client.get("/api/images/1/thumbnail").status_code == 200
        assert client.get("/").status_code == 200  # the page shell holds no data; it asks for the key


def test_new_images_are_searchable_without_restart(client, planted, tmp_path_factory):
    before = client.get("/api/stats").json()["indexed"]
    extra = tmp_path_factory.mktemp("more")
    path = write_photos(extra, 1, start=40)[0]
    index_folder(extra, planted, show_progress=False)
    hits = client.post("/api/search/image", files={"file": ("q.jpg", path.read_bytes(), "image/jpeg")}).json()["hits"]
    assert hits[0]["name"] == "img040.jpg" and hits[0]["score"] > 0.99
    assert client.get("/api/stats").json()["indexed"] == before + 1
    store = open_store(planted.store)
    with store.session() as s:  # leave the shared store as the other tests expect it
        new_id = s.scalar(select(Image.id).where(Image.relpath == "img040.jpg"))
    store.delete_images([new_id])
    assert client.get("/api/stats").json()["indexed"] == before


@pytest.mark.parametrize(
    ("host", "key", "warned"), [("0.0.0.0", None, True), ("0.0.0.0", "k", False), ("::1", None, False)]
)
def test_serve_warns_on_an_open_address_without_a_key(planted, monkeypatch, host, key, warned):
    import uvicorn
    from typer.testing import CliRunner

    from search.cli import app

    served = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, host, port, **_: served.update(host=host, port=port))
    if key:
        monkeypatch.setenv("CLIPDEX_API_KEY", key)
    result = CliRunner().invoke(app, ["serve", "--store", str(planted.store), "--host", host, "--port", "8123"])
    assert result.exit_code == 0, result.output
    assert served == {"host": host, "port": 8123}
    assert ("without an API key" in result.stderr) is warned


def test_serve_without_a_store_is_a_clear_error(tmp_path):
    from typer.testing import CliRunner

    from search.cli import app

    result = CliRunner().invoke(app, ["serve", "--store", str(tmp_path / "nothing")])
    assert result.exit_code == 2 and "no clipdex store" in result.stderr


def test_an_empty_api_key_means_no_key(monkeypatch):
    """CLIPDEX_API_KEY= turned authentication off without the warning `serve` prints off loopback when no key is set."""
    monkeypatch.setenv("CLIPDEX_API_KEY", "")
    assert Settings().api_key is None
    monkeypatch.setenv("CLIPDEX_API_KEY", "s3cret")
    assert Settings().api_key == "s3cret"


def test_openapi_says_what_the_service_answers(client):
    """taken_at was sent without an offset against its own date-time schema; 404s and 400s were undocumented."""
    spec = client.get("/openapi.json").json()
    taken_at = spec["components"]["schemas"]["ImagePublic"]["properties"]["taken_at"]
    assert all(option.get("format") != "date-time" for option in taken_at.get("anyOf", [taken_at]))
    for path, item in spec["paths"].items():
        for operation in item.values():
            assert "400" in operation["responses"], path
            if path.startswith("/api/conversations/{conversation_id}"):
                assert "404" in operation["responses"], path
