"""Indexing on a real local Ray cluster (127.0.0.1, two CPUs): same rows and vectors as the local pipeline, a
killed driver resumes, a killed worker is retried by Ray, a folder a node cannot read is a clear error."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage
from sqlalchemy import select

from indexer.enrich.captions import caption_store
from indexer.errors import BadInputError
from indexer.indexing import index_folder
from indexer.settings import Settings
from indexer.store import Caption, Image, open_store
from tests.support.photos import photo, write_photos
from tests.support.processes import INDEXER, alive, free_port
from tests.support.stores import indexed_rows
from tests.support.videos import make_video

pytestmark = pytest.mark.slow


def ray_settings(store, model_dir, address, **extra) -> Settings:
    return Settings(store=str(store), model=str(model_dir), device="cpu", batch_size=4, ray=address, **extra)


def mixed_folder(folder: Path) -> None:
    """Photos (one with a capture time, one twice, one in a subfolder), a video and files that must be skipped."""
    write_photos(folder, 30, size=(160, 120))
    make_video(folder / "clip.mp4", [((200, 30, 30), 3), ((30, 200, 30), 3), ((30, 30, 200), 3)])
    exif = PILImage.Exif()
    exif[0x0132] = "2019:07:14 18:30:00"
    photo(99, (200, 150)).save(folder / "dated.jpg", exif=exif)
    (folder / "sub").mkdir()
    shutil.copy(folder / "img001.jpg", folder / "sub" / "copy of img001.jpg")
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.png").write_text("not a picture")
    good = (folder / "img002.jpg").read_bytes()
    (folder / "cut.jpg").write_bytes(good[: len(good) // 2])


def rows(store_location: str) -> dict[str, tuple]:
    store = open_store(store_location)
    columns = (Image.status, Image.skip_reason, Image.hash, Image.phash, Image.width, Image.height, Image.format,
               Image.taken_at)  # fmt: skip
    with store.session() as s:
        return {r.relpath: tuple(r)[1:] for r in s.execute(select(Image.relpath, *columns))}


def vectors(store_location: str) -> dict[str, np.ndarray]:
    store = open_store(store_location)
    with store.session() as s:
        ids = dict(s.execute(select(Image.relpath, Image.id)).all())
    return {rel: v for rel, i in ids.items() if (v := store.vector(i)) is not None}


def assert_same_index(got: str, want: str) -> None:
    assert rows(got) == rows(want)
    got_vectors, want_vectors = vectors(got), vectors(want)
    assert got_vectors.keys() == want_vectors.keys()
    for rel, vector in want_vectors.items():
        got_vector = got_vectors[rel]
        assert float(got_vector @ vector / np.linalg.norm(got_vector) / np.linalg.norm(vector)) > 0.9999, rel


def test_ray_indexes_what_the_local_pipeline_does(tmp_path, clip_dir, ray_address):
    photos = tmp_path / "photos"
    mixed_folder(photos)
    local = Settings(store=str(tmp_path / "local"), model=str(clip_dir), device="cpu", workers=1, batch_size=4)
    on_ray = ray_settings(tmp_path / "ray", clip_dir, ray_address)
    want, got = index_folder(photos, local, show_progress=False), index_folder(photos, on_ray, show_progress=False)
    assert (got.indexed, got.skipped) == (want.indexed, want.skipped) == (33, {"empty file": 1, "not an image": 1,
                                                                             "truncated": 1})  # fmt: skip
    assert "decode workers, 1 embedding actors (0 GPUs) on 1 node" in got.cluster
    assert rows(on_ray.store)["dated.jpg"][-1].year == 2019
    assert [rel for rel in rows(on_ray.store) if rel.startswith("clip.mp4#t=")] != []  # the video's kept frames
    assert_same_index(on_ray.store, local.store)

    # Incremental on Ray as locally: a new file, a changed one, a deleted one, a known content moved in.
    write_photos(photos, 1, start=50, size=(160, 120))
    photo(77, (160, 120)).save(photos / "img003.jpg")
    (photos / "img004.jpg").unlink()
    (photos / "cut.jpg").write_bytes((photos / "img002.jpg").read_bytes())  # mended: its content is known
    for settings in (local, on_ray):
        summary = index_folder(photos, settings, show_progress=False)
        assert (summary.indexed, summary.reused, summary.removed) == (2, 1, 1)
    assert_same_index(on_ray.store, local.store)


def test_a_tree_listed_by_tasks_indexes_as_the_local_pipeline_does(tmp_path, clip_dir, ray_address, monkeypatch):
    """Folders handed to listing tasks (two at a time here): the same rows, and re-runs see what changed in them."""
    from indexer.runners import manifest

    monkeypatch.setattr(manifest, "UNITS", 2)
    photos = tmp_path / "photos"
    for n, folder in enumerate(["a", "a/b", "a0", "c/d", "c/d/e", "f"]):
        write_photos(photos / folder, 2, start=10 * n, size=(96, 72))
    write_photos(photos, 1, start=90, size=(96, 72))
    local = Settings(store=str(tmp_path / "local"), model=str(clip_dir), device="cpu", workers=1, batch_size=4)
    on_ray = ray_settings(tmp_path / "ray", clip_dir, ray_address)
    for settings in (local, on_ray):
        assert index_folder(photos, settings, show_progress=False).indexed == 13
    assert_same_index(on_ray.store, local.store)
    (photos / "c" / "d" / "e" / "img040.jpg").unlink()
    write_photos(photos / "a" / "b", 1, start=70, size=(96, 72))
    for settings in (local, on_ray):
        summary = index_folder(photos, settings, show_progress=False)
        assert (summary.indexed, summary.removed, summary.unchanged) == (1, 1, 12)
    assert_same_index(on_ray.store, local.store)


def test_ray_embeds_naflex_images_of_every_shape_as_the_local_pipeline_does(tmp_path, naflex_dir, ray_address):
    """A NaFlex model's decoded images differ in shape: they travel to the embedding actors with theirs."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for seed, size in enumerate([(320, 240), (240, 320), (900, 200), (64, 64), (37, 500)]):
        photo(seed, size).save(photos / f"{seed}.jpg")
    local = Settings(store=str(tmp_path / "local"), model=str(naflex_dir), device="cpu", workers=1, batch_size=4)
    want = index_folder(photos, local, show_progress=False)
    got = index_folder(photos, ray_settings(tmp_path / "ray", naflex_dir, ray_address), show_progress=False)
    assert got.indexed == want.indexed == 5
    assert_same_index(str(tmp_path / "ray"), local.store)


def test_ray_indexes_into_postgresql(tmp_path, clip_dir, ray_address, pg_url):
    photos = tmp_path / "photos"
    mixed_folder(photos)
    local = Settings(store=str(tmp_path / "local"), model=str(clip_dir), device="cpu", workers=1, batch_size=4)
    index_folder(photos, local, show_progress=False)
    summary = index_folder(photos, ray_settings(pg_url, clip_dir, ray_address), show_progress=False)
    assert summary.indexed == 33 and summary.cluster  # the video with the photos
    assert_same_index(pg_url, local.store)


# The driver commits the chunks its workers embedded in bursts (all 240 files within ~2 s here), so a poll from
# outside can see 0 rows and then 240: the driver kills itself (SIGKILL) as it is about to take in its third chunk.
KILLED_AT_THIRD_CHUNK = f"""
import os, signal
from indexer.runners import ray as runner
take_in_shard, taken = runner.take_in_shard, []
def kill_at_third_chunk(*args):
    taken.append(args)
    if len(taken) == 3:
        os.kill(os.getpid(), signal.SIGKILL)
    return take_in_shard(*args)
runner.take_in_shard = kill_at_third_chunk
{INDEXER}"""


def test_a_killed_driver_loses_at_most_a_chunk_and_a_rerun_finishes(tmp_path, clip_dir, ray_address):
    photos = tmp_path / "photos"
    write_photos(photos, 240, size=(160, 120))
    store = str(tmp_path / "killed")
    env = {**os.environ, "CLIPDEX_BATCH_SIZE": "4", "CLIPDEX_COMMIT_EVERY": "8", "CLIPDEX_DEVICE": "cpu"}
    cmd = [sys.executable, "-c", KILLED_AT_THIRD_CHUNK, "index", str(photos), "--store", store, "--model",
           str(clip_dir), "--ray-address", ray_address]  # fmt: skip
    driver = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=180)
    assert driver.returncode == -signal.SIGKILL, driver.stderr.decode()
    partial = indexed_rows(store)
    assert 0 < partial <= 16  # two chunks of at most 8 committed
    assert list((Path(store) / "ingest").rglob("*.npy")), "the shards not yet taken in are left beside the store"

    resumed = index_folder(photos, ray_settings(store, clip_dir, ray_address), show_progress=False)
    assert (resumed.indexed, resumed.unchanged) == (240 - partial, partial)
    clean = Settings(store=str(tmp_path / "clean"), model=str(clip_dir), device="cpu", workers=1, batch_size=4)
    index_folder(photos, clean, show_progress=False)
    assert_same_index(store, clean.store)
    assert not (Path(store) / "ingest").exists()  # the killed run's shards went with the rerun


def ray_workers(kind: str) -> list[int]:
    """Pids of this machine's Ray worker processes whose title names `kind` (Ray titles a worker by its task)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and kind in (proc / "cmdline").read_bytes().decode(errors="replace"):
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


@pytest.mark.parametrize("kind", ["MapWorker(MapBatches(EmbedActor))", "MapBatches(decode_batch)"])
def test_a_killed_worker_is_retried_and_the_run_completes(tmp_path, clip_dir, ray_address, kind):
    photos = tmp_path / "photos"
    write_photos(photos, 240, size=(160, 120))
    store = str(tmp_path / "store")
    env = {**os.environ, "CLIPDEX_BATCH_SIZE": "4", "CLIPDEX_COMMIT_EVERY": "8", "CLIPDEX_DEVICE": "cpu"}
    cmd = [sys.executable, "-c", INDEXER, "index", str(photos), "--store", store, "--model", str(clip_dir)]
    driver = subprocess.Popen([*cmd, "--ray-address", ray_address, "--json"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 90
    victims: list[int] = []
    while not victims and driver.poll() is None and time.monotonic() < deadline:
        victims = ray_workers(kind) if indexed_rows(store) >= 8 else []
        time.sleep(0.02)
    assert victims, f"no {kind} worker ran while the driver did: " + (driver.stderr.read() if driver.poll() else "")
    os.kill(victims[0], signal.SIGKILL)
    out, err = driver.communicate(timeout=120)
    assert driver.returncode == 0, err
    assert not alive(victims[0])
    assert '"indexed": 240' in out, out
    assert indexed_rows(store) == 240
    assert "core_worker" not in err, err  # Ray's own noise (ray#57733) stays out of the user's terminal


def test_a_folder_a_node_cannot_read_is_a_clear_error(tmp_path, clip_dir, ray_address):
    from indexer.runners.ray import check_every_node_reads, connect

    ray = connect(ray_address)
    assert check_every_node_reads(ray, tmp_path) == 1
    with pytest.raises(BadInputError, match=r"every Ray node must read .*gone.*node 127\.0\.0\.1: FileNotFoundError"):
        check_every_node_reads(ray, tmp_path / "gone")


def test_index_caption_on_ray_writes_the_captions_a_local_run_does(tmp_path, clip_dir, blip_dir, ray_address):
    photos = tmp_path / "photos"
    write_photos(photos, 6, size=(160, 120))
    (photos / "cut.jpg").write_bytes((photos / "img000.jpg").read_bytes()[:300])
    options = dict(caption_model=str(blip_dir), caption_max_new_tokens=5, caption_beams=1, caption_batch_size=2)
    local = Settings(store=str(tmp_path / "local"), model=str(clip_dir), device="cpu", workers=1, **options)
    on_ray = ray_settings(tmp_path / "ray", clip_dir, ray_address, **options)
    want = index_folder(photos, local, show_progress=False, caption=True).captions
    got = index_folder(photos, on_ray, show_progress=False, caption=True).captions
    assert (got.captioned, got.failed) == (want.captioned, want.failed) == (6, 0)
    assert captions(on_ray.store) == captions(local.store)
    # A file gone since indexing fails alone, with its reason, and the rest of the batch is captioned.
    (photos / "img001.jpg").unlink()
    got = caption_store(open_store(on_ray.store), on_ray, redo=True, show_progress=False)
    assert (got.captioned, got.failed) == (5, 1)


def captions(store_location: str) -> dict[str, str]:
    store = open_store(store_location)
    with store.session() as s:
        return dict(s.execute(select(Image.relpath, Caption.text).join(Caption, Caption.image_id == Image.id)).all())


def test_an_address_nobody_answers_on_fails_at_once_with_a_clear_error(tmp_path, clip_dir):
    port = free_port()  # closed again: nothing listens there
    cmd = [sys.executable, "-c", INDEXER, "index", str(tmp_path), "--store", str(tmp_path / "s"), "--model",
           str(clip_dir), "--ray-address", f"127.0.0.1:{port}"]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert f"error: cannot reach the Ray cluster at 127.0.0.1:{port}: Connection refused" in result.stderr
    assert not (tmp_path / "s").exists()
