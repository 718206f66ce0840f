"""The tagging part of the service: classify an uploaded image, tag jobs, label counts, the tag filter."""

import io

import numpy as np
import pytest
from fastapi.testclient import TestClient

from indexer.models.loading import canonical_name
from indexer.settings import Settings
from indexer.store import open_store
from search.api import create_app
from search.service import Service
from tests.support.photos import photo
from tests.support.stores import plant

LABELS = ["dog", "beach", "sunset"]


@pytest.fixture(scope="module")
def settings(clip_dir, tmp_path_factory) -> Settings:
    """A store for the tiny CLIP holding 30 random vectors (tagging needs vectors, not image files)."""
    path = tmp_path_factory.mktemp("tag-api") / "store"
    store = open_store(path, model=canonical_name(str(clip_dir)), dim=16, create=True)
    vectors = np.random.default_rng(0).standard_normal((30, 16)).astype(np.float32)
    plant(store, vectors / np.linalg.norm(vectors, axis=1, keepdims=True))
    return Settings(store=path, device="cpu")


@pytest.fixture(scope="module")
def client(settings) -> TestClient:
    with TestClient(create_app(settings)) as client:
        yield client


def jpeg(seed: int) -> bytes:
    buf = io.BytesIO()
    photo(seed).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def classify(client, data: bytes, labels: str, **form):
    return client.post("/api/classify", files={"file": ("a.jpg", data, "image/jpeg")}, data={"labels": labels, **form})


def test_classify_ranks_every_label_with_the_library_scores(client, settings):
    response = classify(client, jpeg(1), "dog, beach,sunset")
    assert response.status_code == 200, response.text
    body = response.json()
    expected = Service(settings).classify(jpeg(1), LABELS)[0]
    assert body["scoring"] == "softmax"
    assert [(r["label"], pytest.approx(r["score"], abs=1e-6)) for r in body["labels"]] == [
        (r.label, r.score) for r in expected
    ]
    assert sum(r["score"] for r in body["labels"]) == pytest.approx(1.0, abs=1e-5)
    multi = classify(client, jpeg(1), "dog,beach", multi_label="true", template=["a photo of a {}."]).json()
    assert multi["scoring"] == "sigmoid" and len(multi["labels"]) == 2


@pytest.mark.parametrize(
    ("labels", "form", "status", "message"),
    [
        ("cat,Cat", {}, 422, "duplicate labels"),
        (" , ", {}, 422, "the label set is empty"),
        ("cat", {"template": ["no slot"]}, 422, "needs one {}"),
    ],
)
def test_classify_rejects_bad_labels(client, labels, form, status, message):
    response = classify(client, jpeg(1), labels, **form)
    assert response.status_code == status and message in response.json()["detail"]


def test_classify_rejects_a_file_that_is_no_image(client):
    response = classify(client, b"just some text, not an image", "cat,dog")
    assert response.status_code == 415


def test_tag_job_tags_the_store_and_the_tags_filter_search(client):
    response = client.post("/api/tag-jobs", json={"labels": LABELS, "name": "scenes", "top_k": 2})
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["status"] == "queued" and job["label_set"] == "scenes" and job["labels"] == 3
    done = client.get(f"/api/tag-jobs/{job['id']}").json()  # TestClient runs background tasks before returning
    assert done["status"] == "done" and done["images"] == 30 and done["tags"] == 60
    counts = client.get("/api/tags", params={"label_set": "scenes"}).json()
    assert sum(c["images"] for c in counts) == 60 and {c["label"] for c in counts} <= set(LABELS)
    assert {c["label"]: c["images"] for c in counts} == done["counts"]

    label = counts[0]["label"]
    hits = client.get("/api/search", params={"q": "a photo", "tag": label, "k": 50}).json()["hits"]
    assert len(hits) == counts[0]["images"]
    assert all(label in [t["label"] for t in client.get(f"/api/images/{h['id']}").json()["tags"]] for h in hits)

    # The same name again replaces the set.
    job = client.post("/api/tag-jobs", json={"labels": ["car", "food"], "name": "scenes"}).json()
    assert client.get(f"/api/tag-jobs/{job['id']}").json()["tags"] == 30
    assert {c["label"] for c in client.get("/api/tags", params={"label_set": "scenes"}).json()} <= {"car", "food"}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"labels": ["cat", "cat"]}, "duplicate labels"),
        ({"labels": []}, "the label set is empty"),
        ({"labels": ["cat"], "templates": ["a photo"]}, "needs one {}"),
        ({"labels": ["cat", "dog"], "top_k": 3}, "top_k must be between 1 and"),
        ({"labels": ["cat"], "name": " "}, "needs a name"),
    ],
)
def test_tag_job_rejects_bad_input_before_starting(client, body, message):
    response = client.post("/api/tag-jobs", json=body)
    assert response.status_code == 422 and message in response.json()["detail"]


def test_unknown_job_and_label_set_are_404(client):
    assert client.get("/api/tag-jobs/0123456789abcdef").status_code == 404
    assert client.get("/api/tags", params={"label_set": "no-such-set"}).status_code == 404
