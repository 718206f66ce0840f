"""The PostgreSQL store end to end, as a team runs it: `clipdex` commands with a database URL, two services
on one database, clear errors for bad databases, and `clipdex store copy` between the two backends.

(The contract suite, test_store_contract.py, and the writer and kill -9 tests run on both backends too.)
"""

import json
import os
import subprocess
import sys
import time
import urllib.request
from datetime import date
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import text
from typer.testing import CliRunner

from indexer.indexing import index_folder
from indexer.settings import Settings
from indexer.store import Caption, Tag, open_store, utcnow
from indexer.store import copy as store_copy
from indexer.store.postgres import PostgresStore
from search.cli import app
from search.service import Service
from tests.support.photos import write_photos
from tests.support.processes import free_port


def clipdex(*args, **env) -> subprocess.CompletedProcess:
    env = {**os.environ, "CLIPDEX_WORKERS": "1", "CLIPDEX_BATCH_SIZE": "4", **env}
    return subprocess.run(
        [sys.executable, "-m", "search", *map(str, args)], env=env, capture_output=True, text=True, timeout=180
    )


def test_every_command_takes_a_database_url(tmp_path, clip_dir, pg_url):
    photos = tmp_path / "photos"
    write_photos(photos, 6)
    indexed = clipdex("index", photos, "--store", pg_url, "--model", clip_dir, "--json")
    assert indexed.returncode == 0, indexed.stderr
    assert json.loads(indexed.stdout)["indexed"] == 6 and "pgvector" in json.loads(indexed.stdout)["index"]
    # CLIPDEX_STORE names the database as well as --store does; the password never shows.
    stats = clipdex("stats", "--json", CLIPDEX_STORE=pg_url)
    assert stats.returncode == 0, stats.stderr
    assert json.loads(stats.stdout)["indexed"] == 6 and "postgresql" in json.loads(stats.stdout)["store"]
    similar = clipdex("similar", photos / "img002.jpg", "--json", "-k", "2", CLIPDEX_STORE=pg_url)
    assert similar.returncode == 0, similar.stderr
    assert json.loads(similar.stdout)[0]["path"] != str(photos / "img002.jpg")  # the image itself is left out
    again = clipdex("index", photos, "--store", pg_url, "--json")
    assert json.loads(again.stdout)["unchanged"] == 6


def get(port: int, path: str) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as response:
        return json.loads(response.read())


@pytest.mark.slow
def test_two_services_on_one_database_answer_alike_and_see_new_chunks(tmp_path, clip_dir, pg_url):
    settings = Settings(store=pg_url, model=str(clip_dir), workers=1, batch_size=4)
    write_photos(tmp_path / "first", 8)
    index_folder(tmp_path / "first", settings, show_progress=False)
    ports = [free_port(), free_port()]
    env = {**os.environ, "CLIPDEX_DEVICE": "cpu"}
    services = [
        subprocess.Popen(
            [sys.executable, "-m", "search", "serve", "--store", pg_url, "--port", str(port)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        for port in ports
    ]  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        for port, service in zip(ports, services, strict=True):
            while True:
                assert service.poll() is None, service.stderr.read()
                try:
                    get(port, "/api/health")
                    break
                except OSError:
                    assert time.monotonic() < deadline, "a service did not start"
                    time.sleep(0.2)
        query = "/api/search?q=a%20photo&k=5"
        answers = [get(port, query) for port in ports]
        assert answers[0] == answers[1] and len(answers[0]["hits"]) == 5
        write_photos(tmp_path / "second", 4, start=50)
        index_folder(tmp_path / "second", settings, show_progress=False)  # another process's view: committed chunks
        for port in ports:
            assert get(port, "/api/stats")["indexed"] == 12
            assert len(get(port, "/api/search?q=a%20photo&k=20")["hits"]) == 12
        assert get(ports[0], query) == get(ports[1], query)
    finally:
        for service in services:
            service.terminate()
            service.wait(timeout=30)


@pytest.fixture
def restricted_url(postgres, pg_url) -> str:
    """The test database as a role that may not create extensions: a database without pgvector, to it."""
    postgres.psql("DROP ROLE IF EXISTS clipdex_user; CREATE ROLE clipdex_user LOGIN;")
    name = pg_url.rsplit("/", 1)[1].split("?")[0]
    postgres.psql(f"ALTER DATABASE {name} OWNER TO clipdex_user;")
    return pg_url.replace("postgres:@", "clipdex_user:@", 1).replace(
        "postgresql://postgres@", "postgresql://clipdex_user@"
    )


@pytest.mark.parametrize("case", ["unreachable", "no-such-role", "no-pgvector", "other-model"])
def test_bad_databases_get_one_clear_line(tmp_path, clip_dir, siglip_dir, pg_url, case, request):
    write_photos(tmp_path / "photos", 1)
    url = pg_url
    if case == "unreachable":
        url = f"postgresql://clipdex:secret@127.0.0.1:{free_port()}/photos"  # nothing listens there
    elif case == "no-such-role":
        url = pg_url.replace("postgres:@", "nobody:hunter2@", 1)
    elif case == "no-pgvector":
        url = request.getfixturevalue("restricted_url")
    elif case == "other-model":
        assert clipdex("index", tmp_path / "photos", "--store", pg_url, "--model", clip_dir).returncode == 0
    result = clipdex("index", tmp_path / "photos", "--store", url, "--model", siglip_dir)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]  # (a model may load first)
    assert len(lines) == 1 and result.stderr.strip().endswith(lines[0]), result.stderr
    assert "Traceback" not in result.stderr
    expected = {
        "unreachable": "cannot connect to the PostgreSQL store",
        "no-such-role": 'role "nobody" does not exist',
        "no-pgvector": "lacks the pgvector extension",
        "other-model": "was built with",
    }[case]
    assert expected in lines[0]
    assert "secret" not in result.stderr and "hunter2" not in result.stderr


def searchable(location, query: np.ndarray) -> list[tuple[int, float]]:
    return [(i, pytest.approx(s, abs=2e-3)) for i, s in open_store(location).search(query, 10)]


@pytest.mark.slow
def test_store_copy_between_backends_keeps_everything_and_resumes(tmp_path, clip_dir, pg_url, monkeypatch):
    settings = Settings(store=tmp_path / "local", model=str(clip_dir), workers=1, batch_size=4)
    write_photos(tmp_path / "photos", 12)
    index_folder(tmp_path / "photos", settings, show_progress=False)
    source = open_store(settings.store)
    with source.session() as s:
        s.add(Caption(image_id=3, model="blip", text="a dog on a beach", created_at=utcnow()))
        s.add(Tag(image_id=3, label_set="animals", label="dog", score=0.9, model="m"))
        s.commit()
    query = source.vector(5)

    # Interrupted in the second chunk of images (5 a chunk): a re-run continues after the first.
    monkeypatch.setattr(store_copy, "CHUNK", 5)
    original, calls = PostgresStore.write_vectors, []

    def interrupted(self, session, ids, vectors):
        calls.append(len(ids))
        if len(calls) == 2:
            raise KeyboardInterrupt  # as a Ctrl-C or a lost connection would
        original(self, session, ids, vectors)

    monkeypatch.setattr(PostgresStore, "write_vectors", interrupted)
    with pytest.raises(KeyboardInterrupt):
        store_copy.copy_store(source, open_store(pg_url, source.model, source.dim, create=True), lock_timeout=5)
    monkeypatch.setattr(PostgresStore, "write_vectors", original)
    assert open_store(pg_url).count_vectors() == 5

    result = CliRunner().invoke(app, ["store", "copy", str(settings.store), pg_url, "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["present"]["images"] == 5 and summary["copied"]["images"] == 7 and summary["vectors"] == 12
    assert searchable(pg_url, query) == searchable(settings.store, query)

    back = tmp_path / "back"
    result = CliRunner().invoke(app, ["store", "copy", pg_url, str(back)])
    assert result.exit_code == 0, result.output
    assert "verified 12 vectors" in result.stdout and summary["checksum"][:16] in result.stdout
    engine = Service(Settings(store=back, model=str(clip_dir)))
    assert [h.id for h in engine.search_captions("dogs")] == [3]
    assert engine.image_info(3).tags == [("dog", pytest.approx(0.9))]
    assert searchable(back, query) == searchable(settings.store, query)
    # The copy goes on as a store of its own: new images get new ids.
    write_photos(tmp_path / "photos", 2, start=40)
    assert index_folder(tmp_path / "photos", Settings(store=pg_url, workers=1), show_progress=False).indexed == 2
    with open_store(pg_url).engine.connect() as conn:
        assert conn.scalar(text("SELECT count(DISTINCT id) FROM images")) == 14

    # A destination holding another collection is refused, not merged.
    other = Settings(store=tmp_path / "other", model=str(clip_dir), workers=1)
    write_photos(tmp_path / "elsewhere", 2, start=90)
    index_folder(tmp_path / "elsewhere", other, show_progress=False)
    result = CliRunner().invoke(app, ["store", "copy", str(settings.store), str(other.store)])
    assert result.exit_code == 2 and "already holds other folders" in result.stderr


def test_paths_stay_embedded_stores(tmp_path):
    """A path that merely looks like a URL (no scheme) is a directory."""
    from indexer.store import is_database_url

    assert is_database_url("postgresql://u:p@host/db") and is_database_url("postgresql+psycopg://host/db")
    assert not is_database_url(str(tmp_path / "postgresql")) and not is_database_url(Path("postgres:/x"))


def test_a_service_whose_database_goes_away_answers_503(tmp_path, clip_dir):
    """Its own server, stopped under a running service: a clear 503, and no traceback for the client."""
    import pgserver
    from fastapi.testclient import TestClient

    from search.api import create_app

    server = pgserver.get_server(tmp_path / "pgdata", cleanup_mode="stop")
    settings = Settings(store=server.get_uri(), model=str(clip_dir), workers=1, batch_size=4, device="cpu")
    write_photos(tmp_path / "photos", 3)
    index_folder(tmp_path / "photos", settings, show_progress=False)
    with TestClient(create_app(settings)) as client:
        assert client.get("/api/images/1/similar?k=2").status_code == 200
        server.cleanup()  # the database server stops
        response = client.get("/api/images/1/similar?k=2")
    assert response.status_code == 503, response.text
    assert "the store's database cannot be reached" in response.json()["detail"]


@pytest.mark.slow
def test_tagging_and_captions_through_a_database_url(tmp_path, clip_dir, pg_url):
    """`tag`, `tags`, `caption` and caption search write and read the PostgreSQL tables (COPY, tsvector)."""
    from tests.support.model_factory import save_blip

    blip = save_blip(tmp_path / "tiny-blip")
    write_photos(tmp_path / "photos", 4)
    assert clipdex("index", tmp_path / "photos", "--store", pg_url, "--model", clip_dir).returncode == 0
    tagged = clipdex("tag", "--labels", "cat,dog", "--top-k", "1", CLIPDEX_STORE=pg_url)
    assert tagged.returncode == 0, tagged.stderr
    counts = json.loads(clipdex("tags", "--json", CLIPDEX_STORE=pg_url).stdout)
    assert sum(c["images"] for c in counts) == 4 and {c["label"] for c in counts} <= {"cat", "dog"}
    label = counts[0]["label"]
    search = clipdex("search", "a photo", "--tag", label, "--json", "-k", "10", CLIPDEX_STORE=pg_url)
    assert len(json.loads(search.stdout)) == counts[0]["images"]
    env = {"CLIPDEX_STORE": pg_url, "CLIPDEX_CAPTION_MAX_NEW_TOKENS": "4", "CLIPDEX_CAPTION_BEAMS": "1"}
    captioned = clipdex("caption", "--model", blip, "--json", **env)
    assert captioned.returncode == 0, captioned.stderr
    assert json.loads(captioned.stdout)["captioned"] == 4
    with open_store(pg_url).session() as s:
        caption = s.scalars(text("SELECT text FROM captions LIMIT 1")).first()
    word = max((w for w in caption.split() if w.isalpha()), key=len)  # the longest: no stop word
    found = clipdex("search", word, "--mode", "caption", "--json", CLIPDEX_STORE=pg_url)
    assert found.returncode == 0 and json.loads(found.stdout), (word, found.stderr)


@pytest.fixture
def legacy_pg_url(tmp_path):
    """A database on PostgreSQL 16 with pgvector 0.6.2, stopped after the test."""
    import psycopg

    from tests.support import legacy_postgres

    pgdata = tmp_path / "legacy-pgdata"
    url = legacy_postgres.start(pgdata)
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE DATABASE legacy")
        yield url.replace("/postgres?", "/legacy?")
    finally:
        legacy_postgres.stop(pgdata)


def test_an_older_pgvector_serves_float32_and_copies_into_halfvec(legacy_pg_url, pg_url, monkeypatch, caplog):
    """pgvector 0.6 (no halfvec, no iterative scans) still serves, says once what it lacks, and filtered graph
    searches still return k; `store copy` into pgvector 0.8 stores half the bytes with the same rankings."""
    import logging

    from indexer.store import Filters
    from indexer.store import postgres as pg_backend
    from tests.support.planted import ClipLike, plant_vectors

    model = ClipLike(dim=64, clusters=30)
    vectors = model.images(1_000)
    monkeypatch.setattr(pg_backend, "HNSW_MIN", 500)
    with caplog.at_level(logging.WARNING, logger="indexer.store.postgres"):
        old = plant_vectors(legacy_pg_url, vectors)
        open_store(legacy_pg_url)
    lacking = [r.message for r in caplog.records if "lacks" in r.message]
    assert len(lacking) == 1 and "halfvec" in lacking[0] and "iterative index scans" in lacking[0], lacking
    old.finish_copy()  # the graph
    assert old.index_description() == "HNSW (pgvector 0.6.2, float32, cosine)"
    monkeypatch.setattr(pg_backend, "EXACT_FILTER_LIMIT", {True: 0, False: 0})
    year = Filters(taken_from=date(2019, 1, 1), taken_to=date(2019, 12, 31))
    assert len(old.search(model.texts(1)[0], 10, filters=year)) == 10

    result = CliRunner().invoke(app, ["store", "copy", legacy_pg_url, pg_url])
    assert result.exit_code == 0, result.output
    new = open_store(pg_url)
    assert new.half and new.index_description().startswith("HNSW (pgvector 0.8")
    with new.session() as s, old.session() as o:
        sizes = [store.scalar(text("SELECT avg(pg_column_size(embedding)) FROM image_vectors")) for store in (s, o)]
    assert sizes == [8 + 2 * 64, 8 + 4 * 64]
    for query in model.texts(20, seed=4):
        exact = vectors @ query
        for a, b in zip(old.search(query, 10), new.search(query, 10), strict=True):  # near-ties may swap
            assert a[0] == b[0] or abs(exact[a[0] - 1] - exact[b[0] - 1]) < 1e-3


def test_a_selective_filter_is_answered_by_an_iterative_index_scan(pg_url, monkeypatch):
    """pgvector 0.8 reads on through the graph until k images pass the filter: no exact scan behind it."""
    from indexer.store import Filters
    from indexer.store import postgres as pg_backend
    from tests.support.planted import ClipLike, plant_vectors

    model = ClipLike(dim=64, clusters=30)
    vectors = model.images(3_000)
    monkeypatch.setattr(pg_backend, "HNSW_MIN", 1_000)
    store = plant_vectors(pg_url, vectors)
    store.finish_copy()
    assert store.has_hnsw() and store.features.iterative_scan
    monkeypatch.setattr(pg_backend, "EXACT_FILTER_LIMIT", {True: 0, False: 0})
    graph = []
    original = PostgresStore.graph_search
    monkeypatch.setattr(PostgresStore, "graph_search", lambda *a: graph.append(original(*a)) or graph[-1])
    year = Filters(taken_from=date(2019, 1, 1), taken_to=date(2019, 3, 31))  # ~2.5% of the images
    admitted = store.matching_ids(year)
    for query in model.texts(10, seed=6):
        scores = vectors[admitted - 1] @ query
        best = admitted[np.argsort(-scores)[:10]].tolist()
        found = [i for i, _ in store.search(query, 10, filters=year)]
        assert len(found) == 10 and len(set(found) & set(best)) >= 9
    assert len(graph) == 10 and all(rows is not None for rows in graph)


def test_the_scan_reads_a_folder_s_paths_in_byte_order_from_an_index(tmp_path, clip_dir, pg_url):
    """Whatever the database's collation: a listing task reads its folder's range of paths without a sort or a scan."""
    from indexer.runners.work import stored_files

    write_photos(tmp_path / "photos" / "a", 3)
    settings = Settings(store=pg_url, model=str(clip_dir), workers=1, batch_size=4)
    index_folder(tmp_path / "photos", settings, show_progress=False)
    store = open_store(pg_url)
    with store.session() as s:
        root_id = s.scalar(text("SELECT id FROM roots"))
    assert [f.relpath for f in stored_files(store, root_id, "a/", "a0")] == [f"a/img{n:03d}.jpg" for n in range(3)]
    with store.engine.connect() as conn:
        conn.execute(text("SET enable_seqscan = off"))
        plan = conn.execute(text(
            'EXPLAIN SELECT id FROM images WHERE root_id = 1 AND relpath COLLATE "C" >= \'a/\' '
            'AND relpath COLLATE "C" < \'a0\' ORDER BY relpath COLLATE "C"'
        )).scalars().all()  # fmt: skip
    assert "images_relpath_bytes" in " ".join(plan) and "Sort" not in " ".join(plan), plan
