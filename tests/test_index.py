"""Indexing end to end with the tiny models: incremental runs, bad files, search ranks, model identity."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from sqlalchemy import select
from typer.testing import CliRunner

import indexer.indexing
from indexer.errors import ModelMismatchError
from indexer.indexing import index_folder
from indexer.settings import Settings
from indexer.store import INDEXED, Image, Manifest, Root, open_store, utcnow
from search.cli import app
from search.service import Service
from tests.support.photos import photo, write_photos
from tests.support.stores import faiss_ids, stored


def test_index_and_similar_ranks_exact_duplicate_first(tmp_path, settings):
    photos = tmp_path / "images nested directories"
    write_photos(photos / "a", 6)
    write_photos(photos / "b" / "c", 4, start=10)
    shutil.copy(photos / "a" / "img002.jpg", photos / "b" / "copy of img002.jpg")
    summary = index_folder(photos, settings, show_progress=False)
    assert (summary.indexed + summary.reused, sum(summary.skipped.values())) == (11, 0)
    engine = Service(settings)
    original = engine.store.find_path(photos / "a" / "img002.jpg")
    hits = engine.similar(original, k=3)
    assert hits[0].path == str(photos / "b" / "copy of img002.jpg")
    assert hits[0].score == pytest.approx(1.0, abs=1e-3)
    assert original not in [h.id for h in hits]  # the image is not its own hit
    assert len(engine.search("a dog on a beach", k=5)) == 5
    assert faiss_ids(settings) == sorted(i for i, _ in stored(settings).values())


def test_incremental_runs_touch_only_what_changed(tmp_path, settings, monkeypatch):
    photos = tmp_path / "photos"
    write_photos(photos, 8)
    index_folder(photos, settings, show_progress=False)
    before = stored(settings)

    def no_model(*args):
        raise AssertionError("an unchanged folder must not load the model")

    monkeypatch.setattr(indexer.indexing, "load_embedder", no_model)
    again = index_folder(photos, settings, show_progress=False)
    assert (again.indexed, again.reused, again.unchanged, again.removed) == (0, 0, 8, 0)
    monkeypatch.undo()

    photo(99).save(photos / "img001.jpg")  # changed content, same name
    os.remove(photos / "img002.jpg")  # deleted
    os.rename(photos / "img003.jpg", photos / "renamed.jpg")  # moved: same content, new name
    summary = index_folder(photos, settings, show_progress=False)
    assert (summary.indexed, summary.reused, summary.unchanged, summary.removed) == (1, 1, 5, 2)
    after = stored(settings)
    assert set(after) == set(before) - {"img002.jpg", "img003.jpg"} | {"renamed.jpg"}
    assert after["img001.jpg"][0] == before["img001.jpg"][0]  # same id, new vector
    assert not np.allclose(after["img001.jpg"][1], before["img001.jpg"][1])
    np.testing.assert_array_equal(after["renamed.jpg"][1], before["img003.jpg"][1])
    for rel in ("img000.jpg", "img004.jpg"):
        np.testing.assert_array_equal(after[rel][1], before[rel][1])
    assert faiss_ids(settings) == sorted(i for i, _ in after.values())


def test_bad_files_are_skipped_with_reasons_and_listed(tmp_path, settings):
    photos = tmp_path / "images with traps"
    write_photos(photos, 2)
    (photos / "empty.jpg").write_bytes(b"")
    (photos / "text.jpg").write_text("I am not a picture")
    good = (photos / "img000.jpg").read_bytes()
    (photos / "cut.jpg").write_bytes(good[: len(good) // 2])
    from PIL import Image as PILImage

    PILImage.new("L", (20000, 20000)).save(photos / "bomb.png")
    settings.max_pixels = 100_000_000
    summary = index_folder(photos, settings, show_progress=False)
    assert summary.indexed == 2
    assert dict(summary.skipped) == {"empty file": 1, "not an image": 1, "truncated": 1, "too large": 1}
    result = CliRunner().invoke(app, ["stats", "--store", str(settings.store), "--skipped", "--json"])
    assert result.exit_code == 0, result.output
    reasons = {
        os.path.basename(f["path"]): f["reason"].split(":")[0] for f in json.loads(result.stdout)["skipped_files"]
    }
    assert reasons == {
        "empty.jpg": "empty file",
        "text.jpg": "not an image",
        "cut.jpg": "truncated",
        "bomb.png": "too large",
    }
    # A skipped file that is fixed gets indexed on the next run.
    (photos / "cut.jpg").write_bytes(good)
    assert index_folder(photos, settings, show_progress=False).reused == 1


def test_a_file_skipped_for_a_reason_that_heals_is_retried(tmp_path, settings):
    """Skipped as `permission denied`, then chmod 644: size and mtime are the same, yet the next run indexes it."""
    photos = tmp_path / "photos"
    write_photos(photos, 2)
    index_folder(photos, settings, show_progress=False)
    store = open_store(settings.store)
    with store.session() as s:  # what a run that could not read img001.jpg left (root ignores chmod)
        row = s.scalar(select(Image).where(Image.relpath == "img001.jpg"))
        row.status, row.skip_reason, row.vector = "skipped", "permission denied: Permission denied", None
        s.commit()
    summary = index_folder(photos, settings, show_progress=False)
    assert (summary.indexed + summary.reused, summary.unchanged, dict(summary.skipped)) == (1, 1, {})
    assert sorted(stored(settings)) == ["img000.jpg", "img001.jpg"]


def test_index_json_counts_skip_reasons(tmp_path, settings):
    """`index --json` with skipped files printed a TypeError (tuple keys) instead of its summary."""
    photos = tmp_path / "photos"
    write_photos(photos, 2)
    (photos / "empty.jpg").write_bytes(b"")
    (photos / "text.jpg").write_text("I am not a picture")
    args = ["index", str(photos), "--store", str(settings.store), "--model", settings.model, "--json"]
    result = CliRunner().invoke(app, args, env={"CLIPDEX_WORKERS": "1"})
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["indexed"], summary["skipped"]) == (2, {"empty file": 1, "not an image": 1})


def test_planted_vectors_come_back_in_exact_order(tmp_path):
    store = open_store(tmp_path / "store", model="planted", dim=4, create=True)
    planted = {
        "north.jpg": [1, 0, 0, 0],
        "north-east.jpg": [0.8, 0.6, 0, 0],
        "east.jpg": [0, 1, 0, 0],
        "south.jpg": [-1, 0, 0, 0],
        "up.jpg": [0, 0, 1, 0],
    }
    with store.session() as s:
        root = Root(path=str(tmp_path))
        s.add(root)
        s.flush()
        rows = [Image(root_id=root.id, relpath=rel, size=1, mtime_ns=1, status=INDEXED, indexed_at=utcnow())
                for rel in planted]  # fmt: skip
        s.add_all(rows)
        store.commit_images(s, rows, {n: np.asarray(v, dtype=np.float32) for n, v in enumerate(planted.values())})
    engine = Service(Settings(store=tmp_path / "store"))
    query = np.asarray([0.9, 0.436, 0, 0], dtype=np.float32)
    hits = engine.search_vector(query / np.linalg.norm(query), k=5)
    assert [os.path.basename(h.path) for h in hits] == [
        "north-east.jpg",
        "north.jpg",
        "east.jpg",
        "up.jpg",
        "south.jpg",
    ]
    page2 = engine.search_vector(query / np.linalg.norm(query), k=2, offset=2)
    assert [os.path.basename(h.path) for h in page2] == ["east.jpg", "up.jpg"]


def test_other_model_is_refused(tmp_path, settings, siglip_dir):
    photos = tmp_path / "photos"
    write_photos(photos, 2)
    index_folder(photos, settings, show_progress=False)
    other = Settings(store=settings.store, model=str(siglip_dir), workers=1)
    with pytest.raises(ModelMismatchError, match="was built with"):
        index_folder(photos, other, show_progress=False)
    result = CliRunner().invoke(
        app, ["search", "cat", "--store", str(settings.store)], env={"CLIPDEX_MODEL": str(siglip_dir)}
    )
    assert result.exit_code == 2 and "was built with" in result.stderr


def test_newer_store_format_is_refused(tmp_path, settings):
    photos = tmp_path / "photos"
    write_photos(photos, 1)
    index_folder(photos, settings, show_progress=False)
    store = open_store(settings.store)
    with store.session() as s:
        s.execute(Manifest.__table__.update().values(format_version=999))
        s.commit()
    result = CliRunner().invoke(app, ["stats", "--store", str(settings.store)])
    assert result.exit_code == 2 and "newer clipdex" in result.stderr


@pytest.mark.parametrize("model_fixture", ["siglip_dir", "siglip2_dir", "naflex_dir", "st_clip_dir"])
def test_other_model_families_index_and_search(tmp_path, request, model_fixture):
    model_dir = request.getfixturevalue(model_fixture)
    settings = Settings(store=tmp_path / "store", model=str(model_dir), workers=1, batch_size=4)
    photos = tmp_path / "photos"
    write_photos(photos, 5)
    shutil.copy(photos / "img001.jpg", photos / "dup.jpg")
    index_folder(photos, settings, show_progress=False)
    engine = Service(Settings(store=settings.store))  # the store's own model is used
    hits = engine.similar(str(photos / "img001.jpg"), k=2)
    assert hits[0].path == str(photos / "dup.jpg")
    assert len(engine.search("sunset over the mountains", k=3)) == 3


def test_cli_json_outputs(tmp_path, settings):
    photos = tmp_path / "photos"
    write_photos(photos, 4)
    runner = CliRunner()
    store = ["--store", str(settings.store)]
    env = {"CLIPDEX_WORKERS": "1"}
    result = runner.invoke(app, ["index", str(photos), *store, "--model", settings.model, "--json"], env=env)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["indexed"] == 4
    hits = json.loads(runner.invoke(app, ["search", "a cat", *store, "-k", "2", "--json"]).stdout)
    assert len(hits) == 2 and {"id", "path", "score"} <= set(hits[0])
    similar = json.loads(runner.invoke(app, ["similar", str(hits[0]["id"]), *store, "-k", "3", "--json"]).stdout)
    assert hits[0]["id"] not in [h["id"] for h in similar] and len(similar) == 3
    stats = json.loads(runner.invoke(app, ["stats", *store, "--json"]).stdout)
    assert (stats["indexed"], stats["roots"]) == (4, [str(photos)])
    bad = runner.invoke(app, ["similar", "12345", *store])
    assert bad.exit_code == 2 and "no indexed image with id 12345" in bad.stderr


def test_an_unreadable_folder_is_listed_as_skipped_until_it_can_be_read(tmp_path, settings, monkeypatch):
    photos = tmp_path / "photos"
    write_photos(photos / "open", 2)
    write_photos(photos / "locked", 1, start=5)
    real_scandir = os.scandir

    def scandir(path):  # root ignores permissions, so the OS refusing to list a folder is simulated
        if str(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    for _ in range(2):  # recorded once, kept while it stays unreadable
        summary = index_folder(photos, settings, show_progress=False)
        assert dict(summary.skipped) == {"unreadable folder": 1}
    skipped = open_store(settings.store).skipped()
    assert [(path, reason.split(":")[0]) for path, reason in skipped] == [(f"{photos}/locked", "unreadable folder")]
    monkeypatch.undo()
    summary = index_folder(photos, settings, show_progress=False)
    assert (summary.indexed, dict(summary.skipped)) == (1, {})
    assert open_store(settings.store).skipped() == []
    assert sorted(stored(settings)) == ["locked/img005.jpg", "open/img000.jpg", "open/img001.jpg"]


def test_a_first_run_prints_one_line_of_preparation_and_its_summary_alone(tmp_path, clip_dir):
    """A new user's first index: the one-off export says one line, no third-party warning or progress bar shows,
    and the summary line stands alone (the export's own output stays in its child process)."""
    write_photos(tmp_path / "photos", 3)
    env = {**os.environ, "CLIPDEX_CACHE_DIR": str(tmp_path / "fresh-cache"), "CLIPDEX_RUNTIME": "auto"}
    done = subprocess.run(
        [sys.executable, "-m", "search", "index", str(tmp_path / "photos"), "--model", str(clip_dir), "--store",
         str(tmp_path / "store"), "--workers", "1"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    logged = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(logged) == 1 and "preparing the model for this CPU, once" in logged[0], done.stderr
    summary = done.stdout.strip().splitlines()
    assert summary[0].startswith("indexed 3, reused 0") and not any("transformers" in line for line in summary)


def test_a_chunk_written_twice_is_one_row_each(tmp_path):
    """A Ray task retried after its commit writes its shard again: its new files are rewritten, not added twice."""
    from indexer.decode import Decoded
    from indexer.runners.work import ChunkWriter, Pending
    from indexer.scan import FileStat
    from indexer.worker import LoadResult

    store = open_store(tmp_path / "store", model="test", dim=8, create=True)
    with store.session() as s:
        root_id = indexer.indexing.get_root(s, tmp_path).id
        s.commit()
    vectors = np.eye(8, dtype=np.float32)
    for attempt in range(2):
        writer = ChunkWriter(store, root_id)
        for n in range(3):
            decoded = Decoded(np.empty((0, 0, 3), np.uint8), 4, 3, "JPEG", None, "0" * 16)
            result = LoadResult(hash=f"{n:032x}", decoded=decoded)
            writer.add(Pending(FileStat(f"{n}.jpg", 10, 20), None, result, vectors=vectors[[n + attempt]]))
        writer.add(Pending(FileStat("bad.jpg", 1, 2), None, LoadResult(hash=None, skip_reason="truncated: cut")))
        writer.commit()
        assert (writer.counts.indexed, sum(writer.counts.skipped.values())) == (3, 1)
    with store.session() as s:
        rows = dict(s.execute(select(Image.relpath, Image.id)).all())
    assert sorted(rows) == ["0.jpg", "1.jpg", "2.jpg", "bad.jpg"]
    assert store.vector(rows["0.jpg"]) @ vectors[1] == pytest.approx(1, abs=1e-3)  # the second try's vector
