"""Tiny test videos written with PyAV: planted scenes with motion inside each, in any container FFmpeg writes."""

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

# The codec each container gets unless the caller names one.
CODECS = {".webm": "libvpx-vp9", ".avi": "mpeg4", ".wmv": "wmv2", ".asf": "wmv2", ".flv": "flv", ".mpg": "mpeg2video"}
FORMATS = {".wmv": "asf", ".mpg": "vob", ".h264": "h264"}  # suffixes FFmpeg does not map to a muxer by itself

Scene = tuple[tuple[int, int, int] | Image.Image, float]


def make_video(
    path: Path,
    scenes: list[Scene],
    fps: int = 25,
    size: tuple[int, int] = (160, 120),
    codec: str | None = None,
    gop: int | None = None,
    metadata: dict[str, str] | None = None,
    rotation: int = 0,
    faststart: bool = False,
) -> Path:
    """Write `scenes` back to back as a video; the container follows the suffix, the codec CODECS (else H.264).

    A scene is (colour, seconds) or (picture, seconds): a colour fills the frame with a dark bar moving across it,
    a picture (e.g. tests.support.photos.photo, larger than `size`) is panned across, so there is motion inside
    every scene but only a scene change alters the colour histogram much. gop: frames between keyframes, and for
    libx264 no extra keyframes at scene cuts (a long-GOP encoder). metadata: container tags (e.g. creation_time);
    rotation: display rotation in degrees counter-clockwise; faststart: MP4/MOV index at the front.
    """
    codec = codec or CODECS.get(path.suffix.lower(), "libx264")
    options = {"movflags": "faststart+use_metadata_tags"} if faststart else {"movflags": "use_metadata_tags"}
    if path.suffix.lower() not in (".mp4", ".mov", ".m4v", ".3gp"):
        options = {}
    with av.open(str(path), "w", format=FORMATS.get(path.suffix.lower()), options=options) as container:
        container.metadata.update(metadata or {})
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.time_base = Fraction(1, fps)
        if gop:
            stream.codec_context.gop_size = gop
            if codec == "libx264":
                stream.codec_context.options = {"x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0"}
        if rotation:
            stream.set_display_rotation(rotation)
        index = 0
        for content, seconds in scenes:
            count = round(seconds * fps)
            for i in range(count):
                frame = av.VideoFrame.from_ndarray(scene_frame(content, size, i / max(count, 1)), format="rgb24")
                frame.pts = index
                index += 1
                container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def scene_frame(content: tuple[int, int, int] | Image.Image, size: tuple[int, int], progress: float) -> np.ndarray:
    """One frame of a scene, `progress` (0..1) of the way through it."""
    w, h = size
    if isinstance(content, Image.Image):  # pan from the picture's left edge to its right
        left = round((content.width - w) * progress)
        top = (content.height - h) // 2
        return np.asarray(content.convert("RGB").crop((left, top, left + w, top + h)))
    pixels = np.empty((h, w, 3), np.uint8)
    pixels[:] = content
    bar = round((w - w // 10) * progress)
    pixels[:, bar : bar + w // 10] = (np.asarray(content) * 0.3).astype(np.uint8)
    return pixels


def make_audio(path: Path, seconds: float = 1.0, codec: str = "aac") -> Path:
    """An audio-only file (a 440 Hz tone): a container with no video stream."""
    rate = 44100 if codec != "libopus" else 48000
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate)
        samples = np.sin(2 * np.pi * 440 * np.arange(int(seconds * rate)) / rate).astype(np.float32)
        for start in range(0, len(samples), 1024):
            chunk = samples[start : start + 1024].reshape(1, -1)
            frame = av.AudioFrame.from_ndarray(chunk, format="flt", layout="mono")
            frame.sample_rate = rate
            frame.pts = start
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path
