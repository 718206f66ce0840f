"""Near-duplicate groups on planted vectors: exact groups, the keeper rule, threshold, folder, CLI, CSV, API."""

import csv
import json
from datetime import datetime

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update
from typer.testing import CliRunner

import search.duplicates
from indexer.errors import BadInputError
from indexer.models.loading import canonical_name
from indexer.settings import Settings
from indexer.store import Image, open_store
from search.api import create_app
from search.cli import app
from search.duplicates import find_duplicates
from tests.support.planted import plant_vectors, unit

DIM = 64
COPIES = [11, 12, 13]  # byte-identical: one hash, one vector
BURST = [20, 21, 22, 23]  # near copies, cosine ~0.97 to each other
PAIR = [30, 31]  # alike at cosine ~0.93: a group at threshold 0.9, not at 0.95


def near(base: np.ndarray, rng, noise: float) -> np.ndarray:
    return unit(base + noise * rng.standard_normal(DIM))


@pytest.fixture
def planted(tmp_path, clip_dir):
    """300 unrelated images (cosine ~0 between them) with the three groups above planted among them."""
    rng = np.random.default_rng(7)
    vectors = unit(rng.standard_normal((300, DIM)))
    vectors[[i - 1 for i in COPIES]] = vectors[COPIES[0] - 1]
    burst = unit(rng.standard_normal(DIM))
    for i in BURST:
        vectors[i - 1] = near(burst, rng, 0.022)
    pair = unit(rng.standard_normal(DIM))
    for i in PAIR:
        vectors[i - 1] = near(pair, rng, 0.034)
    location = str(tmp_path / "store")
    store = plant_vectors(location, vectors, model=canonical_name(str(clip_dir)))  # a model the service can load
    with store.session() as s:
        s.execute(update(Image).where(Image.id.in_(COPIES)).values(hash="same content"))
        s.execute(update(Image).where(Image.id == 13).values(taken_at=datetime(2001, 1, 1)))  # the oldest copy
        s.execute(update(Image).where(Image.id == 22).values(width=6000, height=4000))  # the sharpest shot
        for i in BURST:
            s.execute(update(Image).where(Image.id == i).values(relpath=f"burst/IMG_{i}.JPG"))
        s.commit()
    cosines = vectors @ vectors.T
    assert min(cosines[a - 1, b - 1] for a in BURST for b in BURST) > 0.95
    assert 0.9 < cosines[PAIR[0] - 1, PAIR[1] - 1] < 0.95
    assert np.sort(cosines, axis=1)[:, -2].max() > 0.95 and np.abs(cosines - np.eye(300)).max() < 1.0001
    return location


def groups_of(found) -> list[tuple[list[int], bool]]:
    return [([m.id for m in g.members], g.exact) for g in found]


@pytest.mark.parametrize("exact_limit", [search.duplicates.EXACT_LIMIT, 100])  # flat, then the IVF path
def test_planted_groups_come_back_exactly_with_their_keepers(planted, monkeypatch, exact_limit):
    monkeypatch.setattr(search.duplicates, "EXACT_LIMIT", exact_limit)
    store = planted
    found = find_duplicates(open_store(store), 0.95)
    assert groups_of(found) == [([22, 20, 21, 23], False), ([13, 12, 11], True)]
    keeper = found[0].keeper
    assert (keeper.width, keeper.height, keeper.similarity) == (6000, 4000, 1.0)
    assert all(0.95 <= m.similarity < 1.0 for m in found[0].members[1:])
    assert found[1].reclaimable == sum(m.bytes for m in found[1].members if m.id != 13)
    assert groups_of(find_duplicates(open_store(store), 0.9)) == [([22, 20, 21, 23], False), ([13, 12, 11], True),
                                                                  ([30, 31], False)]  # fmt: skip
    assert groups_of(find_duplicates(open_store(store), 0.95, folder="/planted/burst")) == [([22, 20, 21, 23], False)]
    assert find_duplicates(open_store(store), 0.95, folder="/elsewhere") == []
    assert find_duplicates(open_store(store), 1.0, folder="/planted/burst") == []  # images, none alike enough
    with pytest.raises(BadInputError, match="threshold must be a cosine between 0.5 and 1.0"):
        find_duplicates(open_store(store), 1.5)


def test_cli_lists_groups_and_writes_json_and_csv(planted, tmp_path):
    runner = CliRunner()
    listed = runner.invoke(app, ["duplicates", "--store", planted])
    assert listed.exit_code == 0, listed.output
    assert "group 1: 4 near copies" in listed.stdout and "group 2: 3 exact copies" in listed.stdout
    assert "2 groups, 7 images" in listed.stdout
    table = tmp_path / "groups.csv"
    result = runner.invoke(app, ["duplicates", "--store", planted, "--threshold", "0.9", "--json", "--csv", str(table)])
    assert result.exit_code == 0, result.output
    groups = json.loads(result.stdout)
    assert [[m["id"] for m in g["members"]] for g in groups] == [[22, 20, 21, 23], [13, 12, 11], [30, 31]]
    rows = list(csv.DictReader(table.open()))
    assert [(r["group"], r["keep"], r["id"]) for r in rows[:4]] == [("1", "1", "22"), ("1", "0", "20"),
                                                                     ("1", "0", "21"), ("1", "0", "23")]  # fmt: skip
    assert rows[0]["path"] == "/planted/burst/IMG_22.JPG" and len(rows) == 9
    bad = runner.invoke(app, ["duplicates", "--store", planted, "--threshold", "0.2"])
    assert bad.exit_code == 2 and "threshold must be a cosine" in bad.output


def test_api_pages_through_groups_and_refuses_a_bad_threshold(planted):
    with TestClient(create_app(Settings(store=planted, device="cpu"))) as client:
        first = client.get("/api/duplicates", params={"threshold": 0.9, "limit": 2}).json()
        assert first["total"] == 3 and [len(g["members"]) for g in first["groups"]] == [4, 3]
        assert first["groups"][0]["members"][0] | {"similarity": 1.0} == first["groups"][0]["members"][0]
        assert first["groups"][0]["members"][0]["thumbnail_url"] == "/api/images/22/thumbnail"
        second = client.get("/api/duplicates", params={"threshold": 0.9, "limit": 2, "offset": 2}).json()
        assert [[m["id"] for m in g["members"]] for g in second["groups"]] == [[30, 31]]
        assert client.get("/api/duplicates", params={"threshold": 2}).status_code == 422
