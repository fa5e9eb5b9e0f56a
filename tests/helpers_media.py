"""Tiny synthetic media for tests: write short clips (frame index encoded as a grey level), images, audio-only files."""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Callable

import numpy as np

# container extension -> (codec, pixel format); chosen so every file decodes with a stock FFmpeg build.
_CODECS = {
    ".mp4": ("libx264", "yuv420p"),
    ".m4v": ("libx264", "yuv420p"),
    ".mov": ("libx264", "yuv420p"),
    ".mkv": ("libx264", "yuv420p"),
    ".webm": ("libvpx-vp9", "yuv420p"),
    ".avi": ("mpeg4", "yuv420p"),
    ".gif": ("gif", "rgb8"),
}


def index_color(i: int) -> tuple[int, int, int]:
    """Colour that encodes frame index `i` (< 4096): one base-16 digit per channel, levels 8 + 16 * digit.

    Steps of 16 survive lossy codecs and RGB -> YUV -> RGB round trips (errors stay within +-8).
    """
    return (8 + 16 * (i % 16), 8 + 16 * ((i // 16) % 16), 8 + 16 * ((i // 256) % 16))


def color_index(frame: np.ndarray) -> int:
    """Inverse of `index_color` for a decoded (H, W, 3) uint8 frame (uses the mean colour)."""
    digits = [int(round((float(frame[..., c].mean()) - 8) / 16)) for c in range(3)]
    return digits[0] + 16 * digits[1] + 256 * digits[2]


def _index_pattern(num_frames: int, width: int, height: int) -> Callable[[int], np.ndarray]:
    def frame(i: int) -> np.ndarray:
        return np.zeros((height, width, 3), np.uint8) + np.array(index_color(i), np.uint8)
    return frame


def write_test_video(path, num_frames: int = 16, size: tuple[int, int] = (64, 48), fps: float = 8,
                     pattern: str | Callable[[int], np.ndarray] = "index", codec: str | None = None,
                     pts: list[int] | None = None, gop: int | None = None, faststart: bool = False) -> Path:
    """Write a clip of `num_frames` frames of `size` = (width, height) at `fps`; the container follows the suffix.

    pattern: "index" (frame i is the flat colour `index_color(i)`), "noise" (seeded random, hard to
    compress, for timing), or a callable i -> (H, W, 3) uint8. `pts` (in 1/1000 s units) makes a variable
    frame rate clip (use .mkv: its duration is exact); `gop` sets the keyframe interval (seeking tests);
    `faststart` puts the mp4 index first, so a truncated copy still opens.
    """
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    width, height = size
    default_codec, pix_fmt = _CODECS.get(path.suffix.lower(), ("libx264", "yuv420p"))
    codec = codec or default_codec
    if pattern == "index":
        make = _index_pattern(num_frames, width, height)
    elif pattern == "noise":
        rng = np.random.default_rng(0)
        base = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        make = lambda i: np.roll(base, 3 * i, axis=1)  # noqa: E731 - moving texture, real motion vectors
    else:
        make = pattern
    rate = Fraction(fps).limit_denominator(1000)
    muxer_options = {"movflags": "+faststart"} if faststart and path.suffix.lower() in (".mp4", ".m4v", ".mov") else {}
    with av.open(str(path), "w", options=muxer_options) as out:
        stream = out.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        if codec == "libx264":
            stream.options = {"crf": "10", "preset": "veryfast"}
        elif codec == "libvpx-vp9":
            stream.options = {"crf": "10", "b": "0", "deadline": "realtime", "cpu-used": "8"}
        elif codec == "mpeg4":
            stream.options = {"qscale": "2"}
        if gop:
            stream.codec_context.gop_size = gop
        if pts is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        for i in range(num_frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(make(i)), format="rgb24")
            if pts is not None:
                frame.pts, frame.time_base = pts[i], Fraction(1, 1000)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def write_test_image(path, color: tuple[int, int, int] = (200, 100, 50), size: tuple[int, int] = (40, 30)) -> Path:
    """Write a flat-colour jpg/png image of `size` = (width, height)."""
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    width, height = size
    codec, pix_fmt = ("png", "rgb24") if path.suffix.lower() == ".png" else ("mjpeg", "yuvj420p")
    array = np.zeros((height, width, 3), np.uint8) + np.array(color, np.uint8)
    with av.open(str(path), "w", format="image2") as out:
        stream = out.add_stream(codec, rate=1)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
            out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def write_test_audio(path, seconds: float = 1.0, rate: int = 8000) -> Path:
    """Write an audio-only file (a sine tone), e.g. `.m4a`/`.wav`, for the 'no video stream' case."""
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    codec = "pcm_s16le" if path.suffix.lower() == ".wav" else "aac"
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=rate)
        stream.layout = "mono"
        samples = (np.sin(np.arange(int(seconds * rate)) * 0.05) * 8000).astype(np.int16)
        fmt = "s16" if codec == "pcm_s16le" else "fltp"
        data = samples[None] if fmt == "s16" else (samples[None] / 32768).astype(np.float32)
        frame = av.AudioFrame.from_ndarray(data, format=fmt, layout="mono")
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path
