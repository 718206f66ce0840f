"""Video files to the frames worth embedding: one per scene, at least one every few seconds, at most a few per video.

Three steps, each reading only what it needs through PyAV (FFmpeg):
1. survey: decode keyframes only, each shrunk by swscale to a tiny colour histogram; inside GOPs longer than half of
   max_gap_s (encoders without keyframes at scene cuts) every frame is decoded to sample the GOP too. Videos longer
   than SEEK_SURVEY_AFTER_S instead seek to evenly spaced keyframes, reading a small part of the file.
2. choose: in time order, a candidate is kept when its histogram is far from the last kept frame's (a new scene) or
   when max_gap_s has passed, never closer than min_gap_s, at most max_frames (long videos spread them evenly).
3. extract: seek to each kept frame and decode it again, scaled by swscale to about twice the model's input and then
   by Pillow exactly like a still image (the survey keeps only histograms, so memory stays bounded).
"""

import math
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

from indexer.decode import (
    DecodeError,
    DecodeTimeout,
    ImagePrep,
    draft_request,
    perceptual_hash,
    refuse_too_large,
    resize_and_crop,
)

VIDEO_SUFFIXES = {
    ".mp4", ".m4v", ".mov", ".qt", ".mkv", ".webm", ".avi", ".3gp", ".3g2", ".mts", ".m2ts", ".m2t", ".wmv",
    ".asf", ".flv", ".f4v", ".ogv", ".mpg", ".mpeg", ".m2v", ".vob", ".mxf", ".dv", ".divx",
}  # fmt: skip
# ISO-BMFF major brands of video files (HEIF/AVIF still images and M4A audio have their own, which are left out).
VIDEO_BRANDS = {
    b"isom", b"iso2", b"iso4", b"iso5", b"iso6", b"mp41", b"mp42", b"avc1", b"qt  ", b"M4V ", b"M4VH", b"M4VP",
    b"3gp4", b"3gp5", b"3gp6", b"3gp7", b"3ge6", b"3ge7", b"3gg6", b"3g2a", b"3g2b", b"3g2c", b"mmp4", b"MSNV",
    b"XAVC", b"dash", b"f4v ", b"F4V ", b"NDAS", b"MPUF",
}  # fmt: skip
ASF_GUID = b"\x30\x26\xb2\x75\x8e\x66\xcf\x11\xa6\xd9\x00\xaa\x00\x62\xce\x6c"
SHORT_NAMES = {"avi": "AVI", "asf": "WMV", "flv": "FLV", "mpeg": "MPEG", "mpegts": "MTS", "ogg": "OGV", "mxf": "MXF"}
# Past this duration the survey seeks to evenly spaced keyframes instead of reading the whole file: a sequential
# keyframe scan reads every byte (GBs for long 4K clips) while max_frames keeps only a frame every few minutes anyway.
SEEK_SURVEY_AFTER_S = 30 * 60
HISTOGRAM_SIZE = (64, 36)  # swscale shrinks each surveyed frame to this before its histogram: ~free, motion-robust
HISTOGRAM_BINS = 16
# The decode pool already runs a process per core: more decoder threads per process would only contend.
DECODER_THREADS = 1

av.logging.set_level(av.logging.PANIC)  # FFmpeg's complaints about damaged files become DecodeErrors, not stderr noise


def looks_like_video(head: bytes) -> bool:
    """True when the first 16 bytes of a file carry a known video container signature."""
    if head[4:8] == b"ftyp":
        return head[8:12] in VIDEO_BRANDS
    return (
        head.startswith((b"\x1a\x45\xdf\xa3", b"\x00\x00\x01\xba", b"\x00\x00\x01\xb3", ASF_GUID, b"FLV\x01"))
        or head[:4] == b"RIFF"
        and head[8:12] == b"AVI "
    )


@dataclass(frozen=True)
class Sampling:
    """Which frames of a video are kept (see the module docstring).

    scene_threshold: 0.5 * L1 distance (0..1) of 3x16-bin colour histograms that counts as a new scene. Measured
    on tests.support.videos clips (distance to the scene's first frame): a bar crossing a flat colour <= 0.07, a
    pan across a quarter of the frame over photo-like content <= 0.22 (across half of it <= 0.43); a cut to another
    photo-like picture >= 0.41 (5th percentile 0.53, median 0.71 over 120 pairs), to another flat colour >= 0.63.
    0.3 sits between: a cut between look-alike shots may be missed, a whip pan may add a frame (min_gap bounds it).
    max_gap_s: a frame is kept at least every this many seconds even without a cut, so slow change is covered;
    10 s is x264's default keyframe interval at 25 fps, so most files meet it from keyframes alone.
    min_gap_s: no two kept frames closer than this, so flicker and flashes never flood the index.
    max_frames: at most this many kept frames per video (64 embeddings, the cost of 64 photos); a longer video
    spreads them evenly (min_gap widens to its duration / (max_frames - 1)).
    max_seconds: media seconds read at most; a longer (or endless) stream is cut off there.
    """

    scene_threshold: float = 0.3
    max_gap_s: float = 10.0
    min_gap_s: float = 1.0
    max_frames: int = 64
    max_seconds: float = 4 * 3600.0


@dataclass
class VideoFrames:
    """The kept frames of one video, model-ready, with what the store records about the video."""

    duration_s: float | None
    width: int  # displayed size: rotation and pixel aspect applied
    height: int
    codec: str
    container: str  # short name: MP4, MOV, MKV, WEBM, AVI, ...
    taken_at: datetime | None  # naive local time
    timestamps: list[float]  # seconds from the start of the video, increasing
    frames: list[np.ndarray]  # uint8 (H, W, 3), as indexer.decode.resize_and_crop makes them
    phash: str  # perceptual_hash of the first kept frame
    cut_off: bool  # max_seconds stopped the reading early


@dataclass
class Candidate:
    pts: int
    histogram: np.ndarray
    keyframe: bool  # decodable alone, from its own packet


class Video:
    """An open video stream and the arithmetic between its timestamps and seconds from its start."""

    def __init__(self, container: av.container.InputContainer, stream: av.video.stream.VideoStream):
        self.container, self.stream = container, stream
        self.time_base: Fraction = stream.time_base
        self.start: int = stream.start_time if stream.start_time is not None else 0
        self.ctx = stream.codec_context
        self.ctx.thread_count = DECODER_THREADS

    def seconds(self, pts: int) -> float:
        return float((pts - self.start) * self.time_base)

    def pts(self, seconds: float) -> int:
        return self.start + math.floor(seconds / self.time_base)

    def keyframe(self, packet: av.Packet) -> av.VideoFrame | None:
        """Decode one keyframe packet alone (drained and reset, so the next one may come from anywhere)."""
        try:
            frames = self.ctx.decode(packet) + self.ctx.decode(None)
        finally:
            self.ctx.flush_buffers()
        return frames[0] if frames else None

    def keyframe_at(self, pts: int) -> av.VideoFrame | None:
        """The keyframe at `pts` (the first one after it if none starts there), decoded alone: cheaper than
        decoding on from a seek, and the same frame the survey saw even where a format's timestamps are loose."""
        self.container.seek(pts, stream=self.stream)
        self.ctx.skip_frame = "NONKEY"
        for packet in self.container.demux(self.stream):
            if packet.is_keyframe and timestamp(packet) is not None and timestamp(packet) >= pts:
                return self.keyframe(packet)
        return None

    def frames_from(self, pts: int) -> Iterator[av.VideoFrame]:
        """Every frame from the keyframe at or before `pts` on, decoded in full."""
        self.container.seek(pts, stream=self.stream)
        self.ctx.flush_buffers()
        self.ctx.skip_frame = "DEFAULT"
        for packet in self.container.demux(self.stream):
            for frame in self.ctx.decode(packet):
                if frame.pts is not None:
                    yield frame

    def frame_shown_at(self, pts: int) -> av.VideoFrame | None:
        """The frame on screen at `pts`: the last one starting at or before it (the first one if none does)."""
        shown = None
        for frame in self.frames_from(pts):
            if frame.pts >= pts:
                return frame if frame.pts == pts or shown is None else shown
            shown = frame
        return shown


def timestamp(packet: av.Packet) -> int | None:
    """A packet's presentation time, else its decoding time (some AVI and raw streams carry only that)."""
    return packet.pts if packet.pts is not None else packet.dts


def read_video(
    path: Path, prep: ImagePrep, sampling: Sampling = Sampling(), max_pixels: int = 200_000_000
) -> VideoFrames:
    """The frames of a video worth embedding, model-ready; DecodeError when the file cannot give any."""
    with open_video(path) as video:
        ctx = video.ctx
        refuse_too_large(ctx.width, ctx.height, max_pixels)
        duration = stream_duration(video)
        candidates, end_s, cut_off = survey(video, sampling, duration)
        if not candidates:
            raise DecodeError("truncated", "the file ends before its first frame")
        span = min(max(duration or 0.0, end_s), sampling.max_seconds)
        kept = choose(candidates, video, sampling, span)
        images, rotation = [], 0
        for candidate in kept:
            frame = video.keyframe_at(candidate.pts) if candidate.keyframe else video.frame_shown_at(candidate.pts)
            if frame is not None:
                rotation = frame.rotation
                images.append((video.seconds(candidate.pts), upright(scaled(frame, draft_size(video, prep)), rotation)))
        if not images:
            raise DecodeError("corrupt", "no kept frame decodes a second time")
        width, height = display_size(video, rotation)
        return VideoFrames(
            duration_s=duration,
            width=width,
            height=height,
            codec=ctx.name,
            container=container_name(video.container, path),
            taken_at=capture_time(video),
            timestamps=[t for t, _ in images],
            frames=[resize_and_crop(img, prep, (width, height)) for _, img in images],
            phash=perceptual_hash(images[0][1]),
            cut_off=cut_off,
        )


def frame_at(path: Path, timestamp_s: float, max_side: int) -> Image.Image:
    """The RGB frame shown at `timestamp_s`, scaled down so its longer side is at most max_side (posters)."""
    with open_video(path) as video:
        frame = video.frame_shown_at(video.pts(max(timestamp_s, 0.0)))
        if frame is None:
            raise DecodeError("truncated", f"no frame decodes at {timestamp_s:g} s")
        width, height = display_size(video, 0)  # stored orientation, which swscale works in
        scale = min(1.0, max_side / max(width, height))
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        return upright(scaled(frame, size), frame.rotation)


@contextmanager
def open_video(path: Path) -> Iterator[Video]:
    """Open a video file by path at its video stream; every failure, here or in the caller's block, a DecodeError."""
    with decode_errors(path):
        with path.open("rb") as f:  # the file system's own errors first: FFmpeg's errno-like codes are loose
            if not f.read(1):
                raise DecodeError("empty file", "0 bytes")
        with av.open(str(path), metadata_errors="replace") as container:
            streams = [s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic]
            if not streams:  # audio only (a cover picture is no video either)
                raise DecodeError("not a video", "the file has no video stream")
            if streams[0].codec_context is None:
                raise DecodeError("unsupported", "this FFmpeg has no decoder for the video codec")
            yield Video(container, streams[0])


@contextmanager
def decode_errors(path: Path) -> Iterator[None]:
    """Turn what the file system or FFmpeg raises on a damaged, hostile or unusual file into a DecodeError."""
    try:
        yield
    except (DecodeError, DecodeTimeout, MemoryError):
        raise
    except (av.error.DecoderNotFoundError, av.error.PatchWelcomeError, NotImplementedError) as e:
        raise DecodeError("unsupported", message(e)) from None
    except av.error.InvalidDataError as e:
        if iso_box_overruns(path):
            raise DecodeError("truncated", "the file ends inside a box its header announces") from None
        raise DecodeError("corrupt", message(e)) from None
    except av.error.FFmpegError as e:  # its OSErrors too: a decoder's bare -1 reads as EPERM
        raise DecodeError("corrupt", message(e)) from None
    except PermissionError as e:
        raise DecodeError("permission denied", str(e.strerror or e)) from None
    except OSError as e:
        raise DecodeError("unreadable", str(e.strerror or e)) from None
    except Exception as e:  # FFmpeg and PyAV raise many types on hostile input
        raise DecodeError("corrupt", message(e)) from None


def message(e: Exception) -> str:
    """FFmpeg's words for an error, without the path and the "last error log" PyAV appends (often another file's)."""
    return getattr(e, "strerror", None) or str(e) or type(e).__name__


def iso_box_overruns(path: Path) -> bool:
    """True for an ISO-BMFF (MP4/MOV) file whose top-level boxes run past its end: a copy cut short."""
    try:
        with path.open("rb") as f:
            size = f.seek(0, 2)
            f.seek(0)
            if not looks_like_video(f.read(16)):
                return False
            offset = 0
            while offset + 8 <= size:
                f.seek(offset)
                header = f.read(16)
                box = struct.unpack(">I", header[:4])[0]
                if box == 1 and len(header) == 16:  # a 64-bit size follows the type
                    box = struct.unpack(">Q", header[8:16])[0]
                if box < 8:  # 0: "to the end of the file"; anything else below 8 is damage, not truncation
                    return False
                offset += box
            return offset > size
    except OSError:
        return False


def stream_duration(video: Video) -> float | None:
    """Seconds the header announces: the stream's own duration, else the container's; None when neither is known."""
    if video.stream.duration:
        return float(video.stream.duration * video.time_base)
    if video.container.duration:
        return video.container.duration / av.time_base
    return None


def survey(video: Video, sampling: Sampling, duration: float | None) -> tuple[list[Candidate], float, bool]:
    """Candidate frames in time order with their histograms, the seconds read, and whether max_seconds cut the
    reading off."""
    # Without a known duration, candidates are as dense as for a short video; choose() spreads them once read.
    min_gap, max_gap = gaps(sampling, min(duration, sampling.max_seconds) if duration else 0.0)
    if duration and duration > SEEK_SURVEY_AFTER_S:
        return seek_survey(video, sampling, duration, min_gap)
    # A cut is noticed within a quarter of min_gap: candidates closer could not all be kept, and sparser ones leave
    # kept frames up to min_gap + spacing apart (fewer than max_frames where they are spread).
    spacing = min_gap / 4
    video.ctx.skip_frame = "NONKEY"
    candidates: list[Candidate] = []
    keyframes: list[int] = []
    end_s, cut_off, timed = 0.0, False, False
    try:
        for packet in video.container.demux(video.stream):
            pts = timestamp(packet)
            if pts is None:  # the flush packet at the end, or a raw stream without timestamps
                continue
            seconds, timed = video.seconds(pts), True
            if seconds > sampling.max_seconds:
                cut_off = True
                break
            end_s = max(end_s, seconds)
            if not packet.is_keyframe:
                continue
            keyframes.append(pts)
            if candidates and seconds // spacing == video.seconds(candidates[-1].pts) // spacing:
                continue  # one keyframe per slot of `spacing` seconds
            frame = video.keyframe(packet)
            if frame is not None:
                candidates.append(Candidate(pts, histogram(frame), keyframe=True))
    except av.error.FFmpegError:
        if not candidates:  # a file damaged before its first frame; one damaged later keeps what was read
            raise
    if not timed:
        raise DecodeError("unsupported", "a video stream without timestamps")
    if not keyframes:  # no packet flagged as a keyframe: decode from the start
        candidates = sample_gop(video, video.start, 0.0, end_s, spacing)
    ends = [video.seconds(pts) for pts in keyframes[1:]] + [end_s]
    for start, end in zip(keyframes, ends, strict=False):
        if end - video.seconds(start) > max_gap / 2:  # a long GOP: sample inside it too
            candidates += sample_gop(video, start, video.seconds(start) + spacing, end, spacing)
    candidates.sort(key=lambda c: c.pts)
    return candidates, end_s, cut_off


def seek_survey(
    video: Video, sampling: Sampling, duration: float, min_gap: float
) -> tuple[list[Candidate], float, bool]:
    """A long video's candidates: the keyframe at or before each of evenly spaced times, reached by seeking."""
    end_s = min(duration, sampling.max_seconds)
    video.ctx.skip_frame = "NONKEY"
    candidates: dict[int, Candidate] = {}
    try:
        for step in range(math.ceil(end_s / (min_gap / 2))):
            video.container.seek(video.pts(step * min_gap / 2), stream=video.stream)
            for packet in video.container.demux(video.stream):
                pts = timestamp(packet)
                if packet.is_keyframe and pts is not None:
                    frame = None if pts in candidates else video.keyframe(packet)
                    if frame is not None:
                        candidates[pts] = Candidate(pts, histogram(frame), keyframe=True)
                    break
    except av.error.FFmpegError:
        if not candidates:
            raise
    return sorted(candidates.values(), key=lambda c: c.pts), end_s, duration > sampling.max_seconds


def sample_gop(video: Video, start: int, from_s: float, end_s: float, spacing: float) -> list[Candidate]:
    """Candidates every `spacing` seconds from `from_s` to `end_s`, decoding every frame from keyframe `start`."""
    samples = []
    try:
        for frame in video.frames_from(start):
            seconds = video.seconds(frame.pts)
            if seconds >= end_s:
                break
            if seconds >= from_s:
                samples.append(Candidate(frame.pts, histogram(frame), keyframe=False))
                from_s = seconds + spacing
    except av.error.FFmpegError:
        pass  # damage inside the GOP: the samples before it stand
    return samples


def gaps(sampling: Sampling, span: float) -> tuple[float, float]:
    """(min_gap, max_gap) for a video of `span` seconds: widened so that max_frames spread over all of it."""
    spread = span / (sampling.max_frames - 1) if sampling.max_frames > 1 else math.inf
    min_gap = max(sampling.min_gap_s, spread)
    return min_gap, max(sampling.max_gap_s, min_gap)


def histogram(frame: av.VideoFrame) -> np.ndarray:
    """The frame's colour signature: 3x16-bin RGB histogram of a tiny swscale copy, summing to 1."""
    width, height = HISTOGRAM_SIZE
    pixels = frame.reformat(width=width, height=height, format="rgb24", interpolation="AREA").to_ndarray()
    bins = (pixels.reshape(-1, 3) // (256 // HISTOGRAM_BINS)).astype(np.intp) + np.arange(3) * HISTOGRAM_BINS
    return np.bincount(bins.ravel(), minlength=3 * HISTOGRAM_BINS) / bins.size


def choose(candidates: list[Candidate], video: Video, sampling: Sampling, span: float) -> list[Candidate]:
    """The kept candidates, in time order (see Sampling). Without a cut, the candidate kept is the last one before
    max_gap would pass, so no gap (the end of the video included) outgrows it where candidates allow."""
    min_gap, max_gap = gaps(sampling, span)
    times = [video.seconds(c.pts) for c in candidates] + [span]
    kept: list[Candidate] = []
    for i, candidate in enumerate(candidates):
        if kept:
            last = video.seconds(kept[-1].pts)
            distance = 0.5 * float(np.abs(candidate.histogram - kept[-1].histogram).sum())
            due = times[i + 1] - last > max_gap
            if times[i] - last < min_gap or not due and distance <= sampling.scene_threshold:
                continue
        kept.append(candidate)
        if len(kept) == sampling.max_frames:
            break
    return kept


def display_size(video: Video, rotation: int) -> tuple[int, int]:
    """(width, height) as shown: the pixel aspect ratio applied, then the rotation."""
    width, height = video.ctx.width, video.ctx.height
    aspect = video.stream.sample_aspect_ratio
    if aspect and aspect != 1:
        width = max(1, round(width * aspect))
    return (height, width) if rotation in (90, -90) else (width, height)


def draft_size(video: Video, prep: ImagePrep) -> tuple[int, int]:
    """The size swscale shrinks a frame to before Pillow's resize: about twice what the model input needs (never
    more than the frame), so Pillow's filter still does the final resampling and the result matches a full-size
    decode resized by Pillow (like a JPEG draft decode)."""
    width, height = display_size(video, 0)
    need_w, need_h = draft_request((width, height), prep)
    scale = min(1.0, 2 * max(need_w / width, need_h / height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def scaled(frame: av.VideoFrame, size: tuple[int, int]) -> Image.Image:
    """The frame as RGB at `size` (stored orientation), scaled by swscale."""
    width, height = size
    if (width, height) == (frame.width, frame.height):
        return frame.to_image()
    return frame.reformat(width=width, height=height, format="rgb24", interpolation="AREA").to_image()


def upright(img: Image.Image, rotation: int) -> Image.Image:
    """The image turned as the video's display matrix says (counter-clockwise degrees)."""
    turns = {90: Image.Transpose.ROTATE_90, -90: Image.Transpose.ROTATE_270, 180: Image.Transpose.ROTATE_180}
    return img.transpose(turns[rotation]) if rotation in turns else img


def container_name(container: av.container.InputContainer, path: Path) -> str:
    """A short name for the container format: MP4, MOV, 3GP, MKV, WEBM, AVI, WMV, ..."""
    name = container.format.name
    if name.startswith("mov,"):
        brand = container.metadata.get("major_brand", "").strip()
        return "MOV" if brand == "qt" else "3GP" if brand.startswith("3g") else "MP4"
    if name == "matroska,webm":
        return "WEBM" if path.suffix.lower() == ".webm" else "MKV"
    return SHORT_NAMES.get(name, name.split(",")[0].upper())


def capture_time(video: Video) -> datetime | None:
    """When the video was shot, as naive local time: Apple's creationdate (the wall time where it was shot), else
    creation_time (UTC, turned into this machine's local time); None when absent, malformed or a zero date."""
    tags = {**video.stream.metadata, **video.container.metadata}
    for key in ("com.apple.quicktime.creationdate", "creation_time"):
        try:
            when = datetime.fromisoformat(tags[key].strip())
        except (KeyError, ValueError):
            continue
        if when.year < 1971:  # QuickTime's and Unix's zero (1904, 1970): the muxer had no date
            return None
        if key == "creation_time":
            when = (when if when.tzinfo else when.replace(tzinfo=UTC)).astimezone()
        return when.replace(tzinfo=None)
    return None
