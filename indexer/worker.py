"""The decode workers: each process's setup (a memory bound, a per-file timeout, dying with its parent) and
its task, one file read, hashed and decoded: a still image (indexer/decode.py) or a video's kept frames
(indexer/video.py). Runners (local process pool, Ray tasks) run `load_file` and get a `LoadResult` back."""

import ctypes
import hashlib
import os
import resource
import signal
import threading
from collections.abc import Container, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image

from indexer.decode import (
    RAW_SUFFIXES,
    Decoded,
    DecodeError,
    DecodeTimeout,
    ImagePrep,
    decode_image,
    decode_raw,
    looks_like_image,
    perceptual_hash,
    raise_timeout,
    read_and_hash,
    setup_heif,
)
from indexer.video import VIDEO_SUFFIXES, Sampling, VideoFrames, looks_like_video, read_video

PR_SET_PDEATHSIG = 1  # prctl option: the signal this process gets when its parent dies
HASH_BLOCK = 1 << 20  # videos are hashed as they are read, a block at a time: they can be many GB


class KnownContent:
    """The content hashes already embedded in a store, as sorted 64-bit prefixes: 8 bytes a file where a set of
    the hashes takes ~100 (80 MB at 10M files, sent to every worker). Two contents sharing a prefix (odds ~n²/2⁶⁵)
    cost one file its vector until its twin's hash is looked up in full."""

    def __init__(self, hashes: Iterable[str]):
        self.prefixes = np.unique(np.fromiter((int(h[:16], 16) for h in hashes), dtype=np.uint64))

    def __contains__(self, digest: object) -> bool:
        if not isinstance(digest, str) or not self.prefixes.size:
            return False
        prefix = np.uint64(int(digest[:16], 16))
        at = int(np.searchsorted(self.prefixes, prefix))
        return at < self.prefixes.size and self.prefixes[at] == prefix


@dataclass(frozen=True)
class WorkerConfig:
    """What every decode task needs, sent once to each worker process."""

    prep: ImagePrep
    max_pixels: int
    # Content hashes already embedded in the store: such files are hashed but not decoded.
    known_hashes: Container[str]
    # Bounds on one worker: its heap (bytes) and the seconds one file may take; None for no bound.
    memory_limit: int | None = None
    timeout: float | None = None
    # Which frames of a video are kept, and the seconds one video may take (it reads far more than a photo).
    sampling: Sampling = field(default_factory=Sampling)
    video_timeout: float | None = None


_config: WorkerConfig | None = None  # set once per worker process by setup_worker


def setup_worker(config: WorkerConfig) -> None:
    """Run once in each decode process."""
    global _config
    die_with_parent()
    # imagehash imports scipy's DCT on its first pHash (0.24 s here): done now, not inside a file's decode timeout.
    perceptual_hash(Image.new("L", (32, 32)))
    if config.memory_limit:  # a fuzzed ICNS named .png once took a worker to 8 GB: past this it gets MemoryError
        limit = data_segment_bytes() + config.memory_limit  # on top of what the worker's imports already hold
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    if config.timeout or config.video_timeout:
        signal.signal(signal.SIGALRM, raise_timeout)
    setup_heif()
    _config = config


def use_config(config: WorkerConfig) -> None:
    """For a process that runs decode tasks it did not start for (a Ray worker): set up once, then swap configs.

    Decode timeouts need SIGALRM, which only the main thread can take: a worker that runs tasks in another
    thread decodes without one (its memory bound still holds).
    """
    global _config
    if threading.current_thread() is not threading.main_thread():
        config = replace(config, timeout=None, video_timeout=None)
    if _config is None:
        setup_worker(config)
    _config = config


def data_segment_bytes() -> int:
    """This process's data segment now (VmData: heap and private mappings, what RLIMIT_DATA counts)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmData:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # an upper bound elsewhere


def die_with_parent() -> None:
    """Have the kernel kill this process when its parent dies (Linux): a kill -9'd indexer left its workers."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: workers still end once the parent's pipe closes
        return
    if os.getppid() == 1:  # the parent died before the call: nobody would send the signal
        os._exit(1)


def is_video_file(path: Path) -> bool:
    """A video by its name, or by its first bytes where they are not an image's."""
    if path.suffix.lower() in VIDEO_SUFFIXES:
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError:
        return False  # read_and_hash says why
    return not looks_like_image(head) and looks_like_video(head)


def hash_file(path: Path) -> str:
    """A file's content hash (the same as read_and_hash's), read a block at a time."""
    digest = hashlib.blake2b(digest_size=16)
    try:
        with open(path, "rb") as f:
            while block := f.read(HASH_BLOCK):
                digest.update(block)
    except PermissionError as e:
        raise DecodeError("permission denied", str(e.strerror or e)) from None
    except OSError as e:
        raise DecodeError("unreadable", str(e.strerror or e)) from None
    return digest.hexdigest()


@dataclass
class LoadResult:
    """What a worker returns for one file: its hash, then a still's pixels or a video's kept frames, a reason to
    skip, or none of them (its content is in the store already: reuse)."""

    hash: str | None
    decoded: Decoded | None = None
    video: VideoFrames | None = None
    skip_reason: str | None = None

    @property
    def pixels(self) -> list[np.ndarray]:
        """What is embedded for the file: the still, or each kept frame of the video in order."""
        if self.video is not None:
            return self.video.frames
        return [self.decoded.pixels] if self.decoded is not None else []


def load_file(path: Path) -> LoadResult:
    """Worker task: read, hash, and decode unless the content is already embedded in the store."""
    assert _config is not None, "setup_worker must run first"
    video = is_video_file(path)
    try:
        if video:
            data, digest = b"", hash_file(path)
        else:
            data, digest = read_and_hash(path)
    except DecodeError as e:
        return LoadResult(hash=None, skip_reason=e.reason)
    if digest in _config.known_hashes:
        return LoadResult(hash=digest)
    timeout = _config.video_timeout if video else _config.timeout
    if timeout:  # the alarm fires between Pillow's decode steps, and between a video's frames
        signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        if video:
            return video_result(digest, read_video(path, _config.prep, _config.sampling, _config.max_pixels))
        decode = decode_raw if path.suffix.lower() in RAW_SUFFIXES else decode_image
        return LoadResult(hash=digest, decoded=decode(data, _config.prep, _config.max_pixels))
    except DecodeError as e:
        return LoadResult(hash=digest, skip_reason=e.reason)
    except DecodeTimeout:
        return LoadResult(hash=digest, skip_reason=f"timeout: not decoded within {timeout:g} s")
    except MemoryError:
        limit = f"{(_config.memory_limit or 0) / 2**30:.1f} GiB"
        return LoadResult(hash=digest, skip_reason=f"too large: decoding needs more than the {limit} a decode may use")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def video_result(digest: str, video: VideoFrames) -> LoadResult:
    """A decoded video: its kept frames, and its first as the row's picture (size, format, date, pHash)."""
    if not video.frames:
        return LoadResult(hash=digest, skip_reason="corrupt: no frame of the video could be decoded")
    first = Decoded(
        pixels=video.frames[0],
        width=video.width,
        height=video.height,
        format=f"{video.container} ({video.codec})",
        taken_at=video.taken_at,
        phash=video.phash,
    )
    return LoadResult(hash=digest, decoded=first, video=video)
