"""indexer/video.py: which frames of a video are kept, their pixels, its metadata, each bad file a DecodeError."""

import os
from datetime import UTC, datetime
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from indexer import video as video_module
from indexer.decode import DecodeError, ImagePrep, resize_and_crop
from indexer.video import VIDEO_SUFFIXES, Sampling, frame_at, looks_like_video, read_video
from tests.support.photos import photo
from tests.support.videos import make_audio, make_video

CLIP = ImagePrep(resize_to=(224, 0), crop=(224, 224), resample=Image.BICUBIC, mean=(0, 0, 0), std=(1, 1, 1), rescale=1)
SIGLIP = ImagePrep(resize_to=(64, 64), crop=None, resample=Image.BILINEAR, mean=(0, 0, 0), std=(1, 1, 1), rescale=1)
NAFLEX = ImagePrep((256, 256), None, Image.BILINEAR, (0, 0, 0), (1, 1, 1), 1, max_patches=64, patch_size=16)
RED, GREEN, BLUE, YELLOW = (220, 30, 30), (30, 200, 30), (30, 30, 220), (210, 210, 40)
THREE_SCENES = [(RED, 4), (GREEN, 5), (BLUE, 3)]  # red 0-4 s, green 4-9 s, blue 9-12 s
WINDOWS = [(0, 4), (4, 9), (9, 12)]


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("videos")
    make_video(folder / "scenes.mp4", THREE_SCENES, metadata={"creation_time": "2023-05-01T10:34:56.000000Z"})
    return folder


def dominant(pixels: np.ndarray) -> tuple[int, ...]:
    """The colour most of a frame has (the moving bar is a tenth of it)."""
    return tuple(int(c) for c in np.median(pixels.reshape(-1, 3), axis=0))


def near(colour: tuple[int, ...], expected: tuple[int, int, int], tolerance: int = 12) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(colour, expected, strict=True))


def assert_one_frame_per_scene(video) -> None:
    assert video.timestamps == sorted(video.timestamps)
    for (colour, _), (start, end) in zip(THREE_SCENES, WINDOWS, strict=True):
        inside = [i for i, t in enumerate(video.timestamps) if start <= t < end]
        assert inside, f"no kept frame in {start}-{end} s: {video.timestamps}"
        assert any(near(dominant(video.frames[i]), colour) for i in inside)


def test_one_frame_per_planted_scene(videos):
    video = read_video(videos / "scenes.mp4", CLIP)
    assert_one_frame_per_scene(video)
    assert 3 <= len(video.timestamps) <= 5
    assert all(frame.shape == (224, 224, 3) and frame.dtype == np.uint8 for frame in video.frames)
    assert (video.width, video.height, video.codec, video.container) == (160, 120, "h264", "MP4")
    assert video.duration_s == pytest.approx(12, abs=0.1)
    assert not video.cut_off
    assert len(video.phash) == 16


def test_long_gop_is_sampled_inside(tmp_path):
    """An encoder with a keyframe every 10 s and none at cuts: the green scene lies between two keyframes."""
    path = make_video(tmp_path / "gop.mp4", THREE_SCENES, gop=250)
    with av.open(str(path)) as container:
        keyframes = [p.pts for p in container.demux(container.streams.video[0]) if p.is_keyframe and p.pts is not None]
    assert len(keyframes) == 2
    assert_one_frame_per_scene(read_video(path, CLIP))


def test_a_frame_every_max_gap_without_cuts(tmp_path):
    path = make_video(tmp_path / "still.mp4", [(YELLOW, 25)], fps=10)
    timestamps = read_video(path, CLIP, Sampling(max_gap_s=5)).timestamps
    assert timestamps[0] == 0
    assert all(b - a <= 5 for a, b in zip(timestamps, timestamps[1:], strict=False))
    assert 25 - timestamps[-1] <= 5
    assert len(timestamps) <= 7  # motion inside the scene is no cut


def test_max_frames_spread_over_a_long_video(tmp_path):
    palette = [RED, GREEN, BLUE, YELLOW]
    path = make_video(tmp_path / "long.mp4", [(palette[i % 4], 2) for i in range(30)], fps=10)
    timestamps = read_video(path, SIGLIP, Sampling(max_frames=8)).timestamps
    assert 6 <= len(timestamps) <= 8
    assert timestamps[0] == 0 and timestamps[-1] >= 45  # spread, not the first 8 cuts


def test_flicker_never_floods(tmp_path):
    flicker = [(RED if i % 2 else BLUE, 3 / 25) for i in range(70)]  # a colour change every 3 frames for 8.4 s
    timestamps = read_video(make_video(tmp_path / "flicker.mp4", flicker), SIGLIP, Sampling(min_gap_s=2)).timestamps
    assert all(b - a >= 2 for a, b in zip(timestamps, timestamps[1:], strict=False))
    assert 1 <= len(timestamps) <= 5


def test_max_seconds_cuts_off(videos):
    video = read_video(videos / "scenes.mp4", SIGLIP, Sampling(max_seconds=5))
    assert video.cut_off
    assert max(video.timestamps) <= 5
    assert near(dominant(video.frames[0]), RED)


def test_long_videos_are_surveyed_by_seeking(videos, monkeypatch):
    monkeypatch.setattr(video_module, "SEEK_SURVEY_AFTER_S", 5)
    assert_one_frame_per_scene(read_video(videos / "scenes.mp4", SIGLIP))
    video = read_video(videos / "scenes.mp4", SIGLIP, Sampling(max_seconds=8))
    assert video.cut_off and max(video.timestamps) <= 8


def test_unknown_duration_is_read_up_to_max_seconds(tmp_path):
    """A Matroska file without its Duration element (as a live recording leaves it): read sequentially."""
    data = make_video(tmp_path / "live.mkv", THREE_SCENES).read_bytes()
    (tmp_path / "live.mkv").write_bytes(data.replace(b"\x44\x89\x88", b"\xec\x89\x88", 1))  # Duration -> Void
    video = read_video(tmp_path / "live.mkv", SIGLIP)
    assert video.duration_s is None and not video.cut_off
    assert_one_frame_per_scene(video)
    video = read_video(tmp_path / "live.mkv", SIGLIP, Sampling(max_seconds=6))
    assert video.cut_off and max(video.timestamps) <= 6 and len(video.timestamps) == 2


@pytest.mark.parametrize("prep", [CLIP, SIGLIP, NAFLEX], ids=["clip", "siglip", "naflex"])
def test_pixels_match_a_full_size_decode(tmp_path, prep):
    """swscale shrinks only to about twice the model input: Pillow's resize of the full frame gives the same."""
    scenes = [(photo(seed, (720, 360)), 2) for seed in range(3)]
    path = make_video(tmp_path / "photos.mp4", scenes, size=(640, 360), fps=10)
    video = read_video(path, prep)
    assert len(video.frames) >= 3
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        full = {round(float(f.pts * stream.time_base), 3): f.to_image() for f in container.decode(stream)}
    for t, pixels in zip(video.timestamps, video.frames, strict=True):
        expected = resize_and_crop(full[round(t, 3)], prep)
        assert pixels.shape == expected.shape
        assert np.abs(pixels.astype(int) - expected).mean() < 2


def hamming(a: str, b: str) -> int:
    return bin(int(a, 16) ^ int(b, 16)).count("1")


def test_phash_matches_across_encodings(tmp_path):
    """The same footage in another container and codec: a few bits apart, so a duplicate; other footage is not."""
    scenes = [(photo(seed, (400, 240)), 1) for seed in range(2)]
    first = read_video(make_video(tmp_path / "a.mp4", scenes, size=(320, 240)), SIGLIP).phash
    copy = read_video(make_video(tmp_path / "b.webm", scenes, size=(320, 240)), SIGLIP).phash
    other = read_video(make_video(tmp_path / "c.mp4", scenes[::-1], size=(320, 240)), SIGLIP).phash
    assert hamming(first, copy) <= 6 < hamming(first, other)


@pytest.mark.parametrize("suffix", [".mkv", ".webm", ".avi", ".mov", ".wmv", ".flv", ".mpg"])
def test_containers(tmp_path, suffix):
    video = read_video(make_video(tmp_path / f"clip{suffix}", THREE_SCENES), SIGLIP)
    assert_one_frame_per_scene(video)
    names = {".mkv": "MKV", ".webm": "WEBM", ".avi": "AVI", ".mov": "MOV", ".wmv": "WMV", ".flv": "FLV", ".mpg": "MPEG"}
    assert video.container == names[suffix]
    assert suffix in VIDEO_SUFFIXES


def test_rotation_is_applied(tmp_path):
    """A phone held upright: stored 160x120 with a 90-degree display rotation, shown 120x160."""
    picture = Image.new("RGB", (160, 120), RED)
    picture.paste(BLUE, (0, 60, 160, 120))  # stored: red top, blue bottom
    path = make_video(tmp_path / "turned.mp4", [(picture, 2)], rotation=90)
    video = read_video(path, SIGLIP)
    assert (video.width, video.height) == (120, 160)
    poster = np.asarray(frame_at(path, 1, 80))
    assert poster.shape == (80, 60, 3)
    assert near(dominant(poster[:, :20]), RED) and near(dominant(poster[:, -20:]), BLUE)  # turned counter-clockwise


def test_frame_at(videos):
    for t, colour in [(1, RED), (6.5, GREEN), (11, BLUE)]:
        img = frame_at(videos / "scenes.mp4", t, 80)
        assert img.mode == "RGB" and img.size == (80, 60)
        assert near(dominant(np.asarray(img)), colour)
    assert frame_at(videos / "scenes.mp4", 0, 1000).size == (160, 120)  # never enlarged


def test_taken_at(videos, tmp_path):
    local = datetime(2023, 5, 1, 10, 34, 56, tzinfo=UTC).astimezone().replace(tzinfo=None)
    assert read_video(videos / "scenes.mp4", SIGLIP).taken_at == local  # creation_time is UTC
    apple = {"com.apple.quicktime.creationdate": "2023-05-01T12:34:56+0200", "creation_time": "2023-05-01T10:34:56Z"}
    path = make_video(tmp_path / "iphone.mov", [(RED, 1)], metadata=apple)
    assert read_video(path, SIGLIP).taken_at == datetime(2023, 5, 1, 12, 34, 56)  # the wall time where it was shot
    for value in ("1904-01-01T00:00:00.000000Z", "yesterday"):
        path = make_video(tmp_path / "undated.mp4", [(RED, 1)], metadata={"creation_time": value})
        assert read_video(path, SIGLIP).taken_at is None


def reason(path: Path, **kwargs) -> str:
    with pytest.raises(DecodeError) as e:
        read_video(path, SIGLIP, **kwargs)
    return e.value.reason


def test_bad_files(videos, tmp_path):
    (tmp_path / "empty.mp4").write_bytes(b"")
    assert reason(tmp_path / "empty.mp4").startswith("empty file")
    (tmp_path / "random.mp4").write_bytes(np.random.default_rng(0).bytes(5000))
    assert reason(tmp_path / "random.mp4").startswith("corrupt")
    data = (videos / "scenes.mp4").read_bytes()
    (tmp_path / "ftyp.mp4").write_bytes(data[:32] + np.random.default_rng(1).bytes(5000))
    assert reason(tmp_path / "ftyp.mp4").split(":")[0] in ("corrupt", "truncated")
    assert reason(videos / "scenes.mp4", max_pixels=160 * 120 - 1).startswith("too large")
    assert reason(tmp_path / "missing.mp4").startswith("unreadable")
    (tmp_path / "locked.mp4").write_bytes(data)
    (tmp_path / "locked.mp4").chmod(0)
    if os.geteuid() != 0:  # root reads it anyway
        assert reason(tmp_path / "locked.mp4").startswith("permission denied")


def test_truncated(videos, tmp_path):
    data = (videos / "scenes.mp4").read_bytes()
    (tmp_path / "half.mp4").write_bytes(data[: len(data) // 2])  # the index (moov) was to come at the end
    assert reason(tmp_path / "half.mp4").startswith("truncated")
    for name in ("faststart.mp4", "stream.mkv"):  # index first, or none needed: the first part still plays
        whole = make_video(tmp_path / name, THREE_SCENES, faststart=True).read_bytes()
        (tmp_path / name).write_bytes(whole[: len(whole) // 2])
        video = read_video(tmp_path / name, SIGLIP)
        assert video.timestamps[0] == 0 and near(dominant(video.frames[0]), RED)
        assert max(video.timestamps) < 9
    (tmp_path / "header.mkv").write_bytes((tmp_path / "stream.mkv").read_bytes()[:300])
    assert reason(tmp_path / "header.mkv").split(":")[0] in ("corrupt", "truncated")


@pytest.mark.parametrize("name,codec", [("tone.m4a", "aac"), ("tone.mp4", "aac"), ("tone.mp3", "libmp3lame")])
def test_audio_only_is_not_a_video(tmp_path, name, codec):
    assert reason(make_audio(tmp_path / name, codec=codec)).startswith("not a video")


def test_unsupported_codec(videos, tmp_path):
    """A codec FFmpeg has no decoder for (its sample entry renamed to a fourcc nobody uses)."""
    data = (videos / "scenes.mp4").read_bytes()
    (tmp_path / "alien.mp4").write_bytes(data.replace(b"avc1", b"zzzz", 2).replace(b"avcC", b"zzzC"))
    assert reason(tmp_path / "alien.mp4").startswith("unsupported")


def test_stream_without_timestamps(tmp_path):
    assert reason(make_video(tmp_path / "raw.h264", THREE_SCENES)).startswith("unsupported")


def test_looks_like_video(videos, tmp_path):
    suffixes = (".mkv", ".webm", ".avi", ".mov", ".wmv", ".flv", ".mpg")
    heads = [make_video(tmp_path / f"v{suffix}", [(RED, 0.2)]).read_bytes()[:16] for suffix in suffixes]
    heads.append((videos / "scenes.mp4").read_bytes()[:16])
    assert all(looks_like_video(head) for head in heads), heads
    images = [b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00", b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00"]
    images += [b"\x00\x00\x00\x18ftypmif1\x00\x00\x00\x00", b"\xff\xd8\xff\xe0\x00\x10JFIF", b"\x89PNG\r\n\x1a\n"]
    images += [make_audio(tmp_path / "a.m4a").read_bytes()[:16], b"RIFF\x00\x00\x00\x00WEBPVP8 ", b""]
    assert not any(looks_like_video(head) for head in images)
