"""Browsing without a query: the timeline's order and keyset pages, folders with their counts, on both backends;
the timeline's index made on stores that lack it; the API routes and their 4xx."""

from datetime import datetime, timedelta

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import inspect, select, text, update

from indexer.settings import Settings
from indexer.store import Image, open_store
from search.api import create_app
from search.service import Service, make_filters
from tests.support.planted import plant_vectors

EPOCH = datetime(1970, 1, 1)


def ns(moment: datetime) -> int:
    return (moment - EPOCH) // timedelta(microseconds=1) * 1000


@pytest.fixture
def mixed(store_location) -> Service:
    """30 planted images: every third undated (ordered by its file time), one undated image whose file time falls
    in the same microsecond as a dated one's capture time, and ten of them in trips/2019 and trips/2020."""
    store = plant_vectors(store_location, np.eye(30, 16, dtype=np.float32) + 0.01)
    with store.session() as s:
        for i in range(3, 31, 3):
            s.execute(update(Image).where(Image.id == i).values(taken_at=None))
        tie = s.scalar(select(Image.taken_at).where(Image.id == 1))
        s.execute(update(Image).where(Image.id == 3).values(mtime_ns=ns(tie) + 999))
        for i in range(21, 31):
            s.execute(update(Image).where(Image.id == i).values(relpath=f"trips/{2019 + i % 2}/IMG_{i}.JPG"))
        s.commit()
    return Service(Settings(store=store_location))


def newest_first(service: Service, ids: set[int] | None = None) -> list[int]:
    """The timeline's order worked out in Python: (capture time, else file time; mtime_ns; id), descending."""
    with service.store.session() as s:
        rows = s.execute(select(Image.id, Image.taken_at, Image.mtime_ns)).all()
    keys = {
        i: (taken or EPOCH + timedelta(microseconds=mtime // 1000), mtime, i)
        for i, taken, mtime in rows
        if ids is None or i in ids
    }
    return sorted(keys, key=keys.get, reverse=True)


def pages(service: Service, k: int, **filters) -> list[list[int]]:
    """Every page of the timeline, following each page's last image."""
    found, before = [], None
    while True:
        page = [p.hit.id for p in service.browse(make_filters(**filters), before, k)]
        if not page:
            return found
        found.append(page)
        before = page[-1]


def test_the_timeline_pages_newest_first_through_dated_and_undated_images(mixed):
    expected = newest_first(mixed)
    assert expected.index(3) == expected.index(1) + 1  # the tie: one microsecond, the file time decides
    found = pages(mixed, 7)
    assert [i for page in found for i in page] == expected and [len(p) for p in found] == [7, 7, 7, 7, 2]
    assert [i for page in pages(mixed, 1) for i in page] == expected  # every image a page's edge once
    first = mixed.browse(k=3)
    undated = next(p for p in mixed.browse(k=30) if p.hit.id == 6)
    assert first[0].date == first[0].hit.taken_at and undated.hit.taken_at is None
    assert undated.date == EPOCH + timedelta(microseconds=1_600_000_000_000_000)  # its file time, planted


def test_a_folder_narrows_the_timeline_and_folders_are_counted(mixed):
    trips = set(range(21, 31))
    assert [i for page in pages(mixed, 4, folder="trips") for i in page] == newest_first(mixed, trips)
    assert [i for page in pages(mixed, 4, folder="trips/2019") for i in page] == newest_first(
        mixed, trips & set(range(22, 31, 2))
    )
    counts = {(f.relpath, f.images) for f in mixed.folders()}
    assert counts == {("", 30), ("0000", 20), ("trips", 10), ("trips/2019", 5), ("trips/2020", 5)}
    assert [f.path for f in mixed.folders()][:2] == ["/planted", "/planted/0000"]


def test_a_store_without_the_timeline_index_gets_it_on_open(store_location):
    store = plant_vectors(store_location, np.eye(3, 16, dtype=np.float32))
    with store.engine.begin() as conn:
        conn.execute(text("DROP INDEX ix_images_timeline"))
    store.engine.dispose()
    reopened = open_store(store_location)
    with reopened.engine.connect() as conn:
        assert "ix_images_timeline" in {index["name"] for index in inspect(conn).get_indexes("images")}


@pytest.fixture(scope="module")
def client(planted) -> TestClient:
    with TestClient(create_app(planted)) as client:
        yield client


def ids_by_date(planted, prefix: str = "") -> list[int]:
    with open_store(planted.store).session() as s:
        rows = s.execute(select(Image.id).where(Image.relpath.startswith(prefix)).order_by(Image.taken_at.desc()))
        return list(rows.scalars())


def test_api_pages_the_collection_newest_first(client, planted):
    newest = ids_by_date(planted)
    first = client.get("/api/images", params={"k": 4}).json()
    assert [p["id"] for p in first["photos"]] == newest[:4] and first["next_before"] == newest[3]
    photo = first["photos"][0]
    assert photo["date"] == photo["taken_at"] and photo["date"].startswith("2023-06-")
    assert photo["thumbnail_url"] == f"/api/images/{photo['id']}/thumbnail"
    rest = client.get("/api/images", params={"k": 4, "before": first["next_before"]}).json()
    assert [p["id"] for p in rest["photos"]] == newest[4:] and rest["next_before"] is None
    beach = client.get("/api/images", params={"folder": "beach"}).json()
    assert [p["id"] for p in beach["photos"]] == ids_by_date(planted, "beach/")
    tagged = client.get("/api/images", params={"tag": "street"}).json()  # the other filters narrow it too
    assert [p["id"] for p in tagged["photos"]] == ids_by_date(planted, "city/")


def test_api_counts_folders(client, planted):
    root = open_store(planted.store).roots()[0]
    assert client.get("/api/folders").json() == [
        {"path": root, "root": root, "folder": "", "images": 6},
        {"path": f"{root}/beach", "root": root, "folder": "beach", "images": 3},
        {"path": f"{root}/city", "root": root, "folder": "city", "images": 3},
    ]


@pytest.mark.parametrize(
    ("params", "status", "says"),
    [
        ({"k": 0}, 422, "k"),
        ({"k": 1001}, 422, "k"),
        ({"before": "yesterday"}, 422, "before"),
        ({"before": 0}, 422, "before"),
        ({"before": 10**6}, 404, "no indexed image with id 1000000"),
        ({"min_score": 0.2}, 422, "min_score"),
        ({"taken_from": "2024-02-01", "taken_to": "2024-01-01"}, 422, "taken_from is after taken_to"),
        ({"folder": "x" * 5000}, 422, "folder"),
    ],
)
def test_api_refuses_bad_browsing_with_a_message(client, params, status, says):
    response = client.get("/api/images", params=params)
    assert response.status_code == status and says in str(response.json()["detail"])


def test_an_empty_store_browses_to_nothing(store_location):
    open_store(store_location, model="synthetic", dim=16, create=True)
    service = Service(Settings(store=store_location))
    assert service.browse() == [] and service.folders() == []
