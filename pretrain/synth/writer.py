"""File output for the synthetic world: mp4 encoding with PyAV."""
from __future__ import annotations

import functools
import os
from fractions import Fraction
from pathlib import Path

import numpy as np

from retrieval.data.video import encoder_frame, x264_options
from retrieval.io import atomic_write


@functools.lru_cache(maxsize=1)
def video_codec() -> str:
    """libx264 where this PyAV build has it, else mpeg4 (always bundled)."""
    import av

    try:
        av.Codec("libx264", "w")
        return "libx264"
    except Exception:  # av raises UnknownCodecError (or ValueError on old builds) for a missing encoder
        return "mpeg4"


def write_mp4(path: str | os.PathLike, frames: np.ndarray, fps: float) -> None:
    """frames: np.uint8 (T, H, W, 3) with even H and W (yuv420p). Written to a temp file, then renamed."""
    import av

    T, H, W, _ = frames.shape
    if H % 2 or W % 2:
        raise ValueError(f"yuv420p needs even frame sizes, got {W}x{H}")
    codec = video_codec()

    def encode(tmp: Path) -> None:
        with av.open(str(tmp), "w", format="mp4") as container:
            stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
            stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
            # One encoder thread: generation already runs one process per core.
            stream.codec_context.thread_count = 1
            if codec == "libx264":
                stream.options = {"crf": "18", "preset": "veryfast", **x264_options()}
            else:
                stream.bit_rate = max(500_000, 8 * H * W)
            for f in frames:
                container.mux(stream.encode(encoder_frame(f)))
            container.mux(stream.encode())

    atomic_write(path, encode, durable="none")  # the world is regenerated from its seed


