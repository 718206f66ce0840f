"""Clusters of planted vectors: exact groups, their names, typical images, the choice of k, CLI and API."""

import json
import zlib

import numpy as np
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from indexer.errors import BadInputError
from indexer.models.loading import canonical_name
from indexer.settings import Settings
from search.api import create_app
from search.cli import app
from search.clusters import default_vocabulary
from search.service import Service
from tests.support.planted import plant_vectors, unit

DIM = 64
AXES = np.eye(DIM, dtype=np.float32)
CONE = AXES[63]
LABELS = ["beach", "dog", "document", "car", "mountain"]
GROUPS = {"beach": range(1, 61), "dog": range(61, 101), "document": range(101, 131), "car": range(131, 151)}


class PlantedTexts:
    """Prompts embed as the label they contain (its axis, in the text cone); other labels at a fixed random spot."""

    def embed_texts(self, texts):
        vectors = []
        for text in texts:
            label = next((name for name in LABELS if name in text), None)
            if label is None:
                axis = unit(np.random.default_rng(zlib.crc32(text.encode())).standard_normal(DIM))
            else:
                axis = AXES[LABELS.index(label)]
            vectors.append(unit(0.4 * CONE + axis))
        return np.stack(vectors)


@pytest.fixture
def store_dir(tmp_path, clip_dir, monkeypatch):
    monkeypatch.setattr(Service, "text_tower", property(lambda self: PlantedTexts()))
    rng = np.random.default_rng(4)
    vectors = np.concatenate(
        [unit(0.7 * CONE + 0.7 * AXES[LABELS.index(name)] + 0.05 * rng.standard_normal((len(ids), DIM)))
         for name, ids in GROUPS.items()]
    )  # fmt: skip
    location = str(tmp_path / "store")
    plant_vectors(location, vectors, model=canonical_name(str(clip_dir)))
    return location


def test_planted_groups_come_back_named(store_dir):
    result = Service(Settings(store=store_dir)).clusters(k=4, labels=LABELS)
    assert [c.number for c in result.clusters] == [1, 2, 3, 4]
    assert [c.size for c in result.clusters] == [60, 40, 30, 20]  # largest first
    for cluster, (name, ids) in zip(result.clusters, GROUPS.items(), strict=True):
        assert sorted(cluster.members.tolist()) == list(ids)
        assert cluster.labels[0][0] == name and cluster.labels[0][1] > 0.2
        assert list(cluster.similarity) == sorted(cluster.similarity, reverse=True)  # most typical first
    assert "mountain" not in [c.labels[0][0] for c in result.clusters]  # a label no cluster fits names none


def test_k_is_chosen_by_silhouette_or_by_size(store_dir):
    result = Service(Settings(store=store_dir)).clusters(labels=LABELS, auto=True)
    assert result.k == 4 and result.chosen.startswith("auto (silhouette")
    assert Service(Settings(store=store_dir)).clusters(labels=LABELS).k == 2  # sqrt(150 / 50) = 1.7
    names = {label for c in Service(Settings(store=store_dir)).clusters(k=4).clusters for label, _ in c.labels}
    assert names <= set(default_vocabulary())  # no labels given: the default vocabulary names them


def test_bad_arguments(store_dir):
    engine = Service(Settings(store=store_dir))
    with pytest.raises(BadInputError, match="k must be between 2 and 150"):
        engine.clusters(k=151, labels=LABELS)
    with pytest.raises(BadInputError, match="label set is empty"):
        engine.clusters(k=4, labels=[" "])


def test_cli(store_dir):
    runner = CliRunner()
    result = runner.invoke(app, ["clusters", "--k", "4", "--labels", ",".join(LABELS), "--store", store_dir])
    assert result.exit_code == 0, result.output
    assert "cluster 1: 60 images · beach" in result.output and "4 clusters of 150 images (k 4: given)" in result.output
    result = runner.invoke(app, ["clusters", "--k", "4", "--labels", "beach,dog,car", "--typical", "2", "--json",
                                 "--store", store_dir])  # fmt: skip
    found = json.loads(result.stdout)
    assert [c["size"] for c in found["clusters"]] == [60, 40, 30, 20]
    assert [t["id"] in GROUPS["dog"] for t in found["clusters"][1]["typical"]] == [True, True]
    for args, message in [(["--k", "4", "--auto"], "not both"), (["--k", "1"], "greater than or equal to 2")]:
        result = runner.invoke(app, ["clusters", *args, "--store", store_dir])
        assert result.exit_code == 2 and message in result.output


def test_api_lists_clusters_and_pages_through_one(store_dir):
    params = {"k": 4, "labels": ",".join(LABELS)}
    with TestClient(create_app(Settings(store=store_dir))) as client:
        found = client.get("/api/clusters", params=params | {"typical": 3}).json()
        assert [(c["number"], c["size"], c["labels"][0]["label"]) for c in found["clusters"]] == [
            (1, 60, "beach"), (2, 40, "dog"), (3, 30, "document"), (4, 20, "car")
        ]  # fmt: skip
        assert all(h["id"] in GROUPS["beach"] for h in found["clusters"][0]["typical"])
        page = client.get("/api/clusters/2/images", params=params | {"limit": 10, "offset": 35}).json()
        assert len(page["hits"]) == 5 and all(h["id"] in GROUPS["dog"] for h in page["hits"])
        missing = client.get("/api/clusters/9/images", params=params)
        assert missing.status_code == 404 and "no cluster 9" in missing.json()["detail"]
        assert client.get("/api/clusters", params={"k": 1}).status_code == 422
        assert client.get("/api/clusters", params={"k": 151}).status_code == 422
