"""Videos indexed with the photos: a row per video and per kept frame, searched as moments, kept up to date like
photos, bad videos skipped with their reasons, Live Photos as one item, on both store backends."""

import os
import shutil
import signal
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from indexer.indexing import index_folder
from indexer.store import FRAME, INDEXED, SKIPPED, Image, open_store
from indexer.video import frame_at
from indexer.worker import load_file
from search.service import Service
from tests.support.photos import photo
from tests.support.videos import make_video

RED, GREEN, BLUE = (200, 30, 30), (30, 200, 30), (30, 30, 200)
SCENES = [(RED, 4), (GREEN, 4), (BLUE, 4)]  # green from 4 s to 8 s


def rows(settings) -> list[Image]:
    with open_store(settings.store).session() as s:
        return list(s.scalars(select(Image).order_by(Image.id)))


def green_picture(video: Path, out: Path) -> Path:
    """A frame from inside the green scene, not one the indexer kept: what a user's query image would be."""
    frame_at(video, 6.3, 320).save(out)
    return out


@pytest.fixture
def folder(tmp_path) -> Path:
    media = tmp_path / "media"
    media.mkdir()
    make_video(media / "clip.mp4", SCENES)
    photo(1).save(media / "a.jpg")
    return media


@pytest.mark.parametrize("backend", ["embedded", "postgres"])
def test_a_video_is_an_item_with_its_scenes_as_moments(folder, tmp_path, settings, backend, request):
    location = str(settings.store) if backend == "embedded" else request.getfixturevalue("pg_url")
    settings = settings.model_copy(update={"store": location})
    summary = index_folder(folder, settings, show_progress=False)
    assert (summary.indexed, sum(summary.skipped.values())) == (2, 0)
    video = next(r for r in rows(settings) if r.relpath == "clip.mp4")
    assert (video.status, video.format, video.width, video.height) == (INDEXED, "MP4 (h264)", 160, 120)
    assert video.duration_ms == 12_000 and video.timestamp_ms == 0
    frames = [r for r in rows(settings) if r.video_id == video.id]
    assert all(f.status == FRAME and f.relpath == f"clip.mp4#t={f.timestamp_ms / 1000:.3f}" for f in frames)
    times = [video.timestamp_ms] + [f.timestamp_ms for f in frames]
    assert [sum(start <= t < start + 4000 for t in times) for start in (0, 4000, 8000)] == [1, 1, 1]  # one a scene

    service = Service(settings)
    hits = service.similar(str(green_picture(folder / "clip.mp4", tmp_path / "green.png")), k=5)
    assert [Path(h.path).name for h in hits] == ["clip.mp4", "a.jpg"]  # one hit per video, however many frames
    assert 3.0 <= hits[0].timestamp_s <= 9.0  # the green scene, within a second
    assert hits[0].moments[0].timestamp_s == hits[0].timestamp_s
    assert service.store.counts() == {INDEXED: 2, FRAME: len(frames)}
    # From a frame: the video itself is left out (it is its own best match), like a stored photo.
    assert [Path(h.path).name for h in service.similar(hits[0].moments[0].id, k=5)] == ["a.jpg"]
    # Filters reach frames through their video: its folder.
    assert service.search_vector(service.store.vector(frames[0].id), 5, filters=service_filters(folder)) != []


def service_filters(folder: Path):
    from indexer.store import Filters

    return Filters(folder=str(folder))


def test_videos_are_incremental_like_photos(folder, tmp_path, settings):
    index_folder(folder, settings, show_progress=False)
    again = index_folder(folder, settings, show_progress=False)
    assert (again.indexed, again.unchanged) == (0, 2)  # an unchanged video costs nothing

    make_video(folder / "clip.mp4", [(BLUE, 3), (RED, 3)])  # changed: redone, its old frames gone
    os.utime(folder / "clip.mp4", ns=(1, 1))
    changed = index_folder(folder, settings, show_progress=False)
    assert changed.indexed == 1
    video = next(r for r in rows(settings) if r.relpath == "clip.mp4")
    frames = [r for r in rows(settings) if r.video_id is not None]
    assert video.duration_ms == 6000 and all(f.video_id == video.id and f.timestamp_ms < 6000 for f in frames)

    shutil.move(folder / "clip.mp4", folder / "moved.mp4")  # moved: its vectors and frames reused, not decoded
    moved = index_folder(folder, settings, show_progress=False)
    assert (moved.indexed, moved.reused, moved.removed) == (0, 1, 1)
    video = next(r for r in rows(settings) if r.relpath == "moved.mp4")
    assert [(f.relpath, f.timestamp_ms) for f in rows(settings) if f.video_id == video.id] == [
        (f"moved.mp4#t={f.timestamp_ms / 1000:.3f}", f.timestamp_ms) for f in frames
    ]
    store = open_store(settings.store)
    assert store.vector(video.id) is not None and store.frames(video.id) != []

    (folder / "moved.mp4").unlink()  # deleted: leaves with its frames
    gone = index_folder(folder, settings, show_progress=False)
    assert gone.removed == 1
    assert [r.relpath for r in rows(settings)] == ["a.jpg"]


def test_bad_videos_are_skipped_with_their_reasons(folder, tmp_path, settings):
    (folder / "empty.mp4").write_bytes(b"")
    (folder / "noise.mov").write_bytes(os.urandom(50_000))
    whole = (folder / "clip.mp4").read_bytes()
    (folder / "cut.mp4").write_bytes(whole[: len(whole) // 3])
    summary = index_folder(folder, settings, show_progress=False)
    reasons = {r.relpath: r.skip_reason for r in rows(settings) if r.status == SKIPPED}
    assert reasons["empty.mp4"].startswith("empty file")
    assert reasons["noise.mov"].startswith("corrupt")
    assert "cut.mp4" not in reasons or reasons["cut.mp4"].split(":")[0] in ("truncated", "corrupt")
    assert summary.indexed >= 2  # the good video and the photo went on
    skipped = dict(open_store(settings.store).skipped())
    assert str(folder / "noise.mov") in skipped


def test_a_live_photo_is_one_item_whose_movie_plays(folder, settings):
    photo(3).save(folder / "IMG_0002.JPG")
    make_video(folder / "IMG_0002.MOV", [(GREEN, 2)])
    index_folder(folder, settings, show_progress=False)
    still = next(r for r in rows(settings) if r.relpath == "IMG_0002.JPG")
    assert still.motion_relpath == "IMG_0002.MOV"
    assert "IMG_0002.MOV" not in {r.relpath for r in rows(settings)}  # not an item of its own

    (folder / "IMG_0002.MOV").unlink()  # the movie gone: the still stays, with nothing to play
    index_folder(folder, settings, show_progress=False)
    assert next(r for r in rows(settings) if r.relpath == "IMG_0002.JPG").motion_relpath is None


def load_or_break(path: Path):
    """A decode worker's task that hangs where the timeout's signal cannot reach (as inside a decoder looping in C)
    on "stuck.*", and kills its own process (as a crashing decoder) on "crash.*"."""
    if path.stem == "stuck":
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
        time.sleep(3600)
    if path.stem == "crash":
        os.kill(os.getpid(), signal.SIGKILL)
    return load_file(path)


def test_a_stuck_or_crashing_decoder_is_stopped_and_the_run_goes_on(folder, settings, monkeypatch):
    monkeypatch.setattr("indexer.runners.local.load_file", load_or_break)
    shutil.copy(folder / "clip.mp4", folder / "stuck.mp4")
    photo(5).save(folder / "crash.jpg")
    photo(6).save(folder / "z.jpg")
    settings = settings.model_copy(update={"decode_timeout": 0.5, "video_timeout": 0.5})
    started = time.monotonic()
    summary = index_folder(folder, settings, show_progress=False)
    assert time.monotonic() - started < 60
    reasons = {r.relpath: r.skip_reason for r in rows(settings) if r.status == SKIPPED}
    assert reasons["stuck.mp4"].startswith("timeout: still decoding after")
    assert reasons["crash.jpg"].startswith("crashed")
    assert summary.indexed == 3  # clip.mp4, a.jpg and z.jpg, before and after the restarts


def test_a_reencoded_video_is_a_copy_and_a_video_opening_alike_is_not(folder, tmp_path, settings):
    from search.service import DuplicateOptions

    make_video(folder / "copy.mkv", SCENES, size=(320, 240), codec="mpeg4")  # re-encoded, resized, rewrapped
    make_video(folder / "longer.mp4", SCENES + [(GREEN, 6)])  # opens the same way, lasts longer
    index_folder(folder, settings, show_progress=False)
    groups = Service(settings).duplicates(DuplicateOptions(kinds=("same-picture",)))
    assert [sorted(Path(m.path).name for m in g.members) for g in groups] == [["clip.mp4", "copy.mkv"]]
    assert Path(groups[0].keeper.path).name == "copy.mkv"  # the larger picture is kept
