"""Videos: how fast clipdex indexes them, how many frames it keeps, and what their decoding costs.

    python -m bench.video [--seconds 60]

It writes a phone-like 1080p30 H.264 video (a keyframe every second, x264's own cuts; scenes of photo-like pictures
panned across, so every frame moves), the same with long GOPs (a keyframe every 10 s, no cuts: an encoder that
leaves scene changes inside GOPs) and a short 4K clip, then prints:
- the sampling (indexer/video.py, default settings): frames kept per minute of video, and the planted scenes that
  got a frame;
- what decoding costs: the default survey + extraction (read_video) against decoding every frame at full size,
  in seconds of video per second of one core;
- the whole pipeline, `clipdex index` with the benches' ViT-B/32 on every core: seconds of video indexed per
  second of wall time;
- the peak memory of a decode process on the 4K clip (VmHWM), and what decoding added to it.
"""

import argparse
import multiprocessing
import shutil
import time
from pathlib import Path

import av

from bench.indexing import vit_b32, vm_hwm_mb
from bench.smoke import DATA, announce, pick
from indexer.decode import ImagePrep
from indexer.models.cpu import cpu_line
from indexer.video import Sampling, read_video
from tests.support.photos import photo
from tests.support.videos import make_video

HD, UHD = pick((1920, 1080), (320, 180)), pick((3840, 2160), (640, 360))
SCENE_SECONDS = 6
CLIP_PREP = ImagePrep(
    resize_to=(224, 0), crop=(224, 224), resample=3, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), rescale=1 / 255
)


def scenes(seconds: float, size: tuple[int, int]) -> list:
    """Photo-like pictures, wider than the frame so each pans across it, SCENE_SECONDS each."""
    wide = (size[0] * 5 // 4, size[1])
    return [(photo(100 + n, wide), SCENE_SECONDS) for n in range(max(1, round(seconds / SCENE_SECONDS)))]


def video(name: str, seconds: float, size: tuple[int, int], gop: int | None = None) -> Path:
    """A bench video, written once under DATA (x264 at ultrafast: the encode is not what is measured)."""
    path = DATA / "videos" / f"{name}-{seconds:g}s.mp4"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        make_video(path.with_suffix(".tmp.mp4"), scenes(seconds, size), fps=30, size=size, gop=gop or 30)
        path.with_suffix(".tmp.mp4").rename(path)
    return path


def full_decode_seconds(path: Path) -> float:
    """Seconds to decode every frame at full size, on one thread (what a naive sampler pays)."""
    started = time.perf_counter()
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1
        for _ in container.decode(stream):
            pass
    return time.perf_counter() - started


def duration(path: Path) -> float:
    with av.open(str(path)) as container:
        return container.duration / av.time_base


def sampling(path: Path, label: str) -> None:
    length = duration(path)
    started = time.perf_counter()
    frames = read_video(path, CLIP_PREP, Sampling())
    ours = time.perf_counter() - started
    full = full_decode_seconds(path)
    kept = frames.timestamps
    covered = len({int(t // SCENE_SECONDS) for t in kept})
    planted = round(length / SCENE_SECONDS)
    print(
        f"{label:38} kept {len(kept):3} frames ({len(kept) / length * 60:5.1f}/min), {covered}/{planted} scenes; "
        f"read_video {length / ours:6.1f} s of video/s, every frame decoded {length / full:6.1f} s/s "
        f"({full / ours:.1f}x the cost)"
    )


def decode_in_child(path: str, queue) -> None:
    before = vm_hwm_mb()
    read_video(Path(path), CLIP_PREP, Sampling())
    queue.put((before, vm_hwm_mb()))


def peak_memory(path: Path) -> tuple[float, float]:
    """(peak RSS, what decoding added to it) in MB, of a fresh process that decodes the video as a worker does."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=decode_in_child, args=(str(path), queue))
    child.start()
    before, after = queue.get(timeout=600)
    child.join()
    return after, after - before


def pipeline(path: Path, copies: int) -> None:
    from indexer.indexing import index_folder
    from indexer.models.runtimes import make_embedder
    from indexer.settings import Settings

    folder = DATA / "videos" / "folder"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for n in range(copies):  # each its own file to decode: make them differ by a byte at the end
        (folder / f"v{n}.mp4").write_bytes(path.read_bytes() + bytes([n]))
    store = DATA / "videos" / "store"
    shutil.rmtree(store, ignore_errors=True)
    settings = Settings(store=store, model=str(vit_b32()), device="cpu", cache_dir=DATA / "cache")
    embedder = make_embedder(settings.model, settings)  # loaded before the clock starts, as bench/indexing.py does
    started = time.perf_counter()
    summary = index_folder(folder, settings, show_progress=False, embedder=embedder)
    wall = time.perf_counter() - started
    length = duration(path) * copies
    print(
        f"{'clipdex index, default sampling':38} {length:.0f} s of video in {wall:.1f} s: "
        f"{length / wall:.1f} s of video per second ({summary.line().split(';')[0]})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=pick(60, 6), help="length of the 1080p videos")
    args = parser.parse_args()
    print(cpu_line())
    announce()
    phone = video("phone-1080p", args.seconds, HD)
    sampling(phone, "1080p30 H.264, keyframe each 1 s")
    sampling(video("longgop-1080p", args.seconds, HD, gop=300), "1080p30 H.264, keyframe each 10 s")
    pipeline(phone, pick(4, 2))
    peak, added = peak_memory(video("uhd", pick(10, 2), UHD))
    print(f"{'4K decode process':38} peak {peak:.0f} MB resident, {added:.0f} MB of it for the decode")


if __name__ == "__main__":
    main()
