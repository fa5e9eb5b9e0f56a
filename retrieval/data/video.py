"""Video probing, frame sampling and decoding with PyAV (imported lazily), from files or in-memory bytes."""
from __future__ import annotations

import functools
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import VmrError

# Demuxers FFmpeg uses for single still images; such a file is a one-frame video.
_IMAGE_FORMATS = {"image2", "jpeg_pipe", "png_pipe", "webp_pipe", "bmp_pipe", "tiff_pipe"}


@functools.cache
def one_thread() -> dict[str, int]:
    """Keyword arguments that keep FFmpeg's scaler on the calling thread. PyAV 17 made `reformat` threaded; a pool
    it leaves behind hangs a forked child that frees it (seen in CI), and the worker processes are the parallelism
    anyway (one thread each)."""
    import av

    return {"threads": 1} if int(av.__version__.split(".")[0]) >= 17 else {}


@functools.cache
def x264_options() -> dict[str, str]:
    """libx264 options for every encode here, beside the quality ones. With its AVX-512 code, repeats of one clip's
    encode sometimes gave different files (2-4 of 12-16 clips per 40-100 repeats, on an AMD EPYC); capped at AVX2
    they never did (2,560 encodes), at the same speed. Every CPU that x264 uses AVX-512 on has AVX2, so the cap is
    safe."""
    return {"x264-params": "asm=AVX2"} if _has_x264_avx512() else {}


def _has_x264_avx512(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether x264 would use its AVX-512 code here: it needs F, CD, BW, DQ and VL (Linux reports them)."""
    try:
        with open(cpuinfo) as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return {"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"} <= set(flags)


class VideoError(VmrError, RuntimeError):
    """A video cannot be used; `reason` says why (e.g. "no video stream", "cannot open: ...")."""

    def __init__(self, reason: str, path: str | None = None):
        super().__init__(f"{path}: {reason}" if path else reason)
        self.reason = reason
        self.path = path


@dataclass(frozen=True)
class VideoInfo:
    """What `probe` learns from container metadata (no decoding)."""

    path: str
    duration: float  # seconds; 0.0 for a still image
    fps: float  # average frame rate
    num_frames: int  # >= 1
    width: int
    height: int


def sample_indices(num_frames_total: int, n: int, mode: str = "middle", rng: Any = None,
                   start: int = 0, end: int | None = None) -> list[int]:
    """Split [start, end) into n equal segments and take the middle ("middle") or a random ("rand") index of each.

    Segment edges are `linspace(0, L, n + 1)` floored and the middle is `(lo + hi - 1) // 2`: the
    VINDLU/UMT/VideoMamba evaluation formula, so indices match the published protocol. When the
    range holds fewer than n frames every segment still gets one frame, so frames repeat in time
    order (e.g. 3 frames, n=8 -> 0 0 0 1 1 1 2 2). `rng`: numpy Generator or seed (rand mode).
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if num_frames_total < 1:
        raise ValueError(f"video has no frames (num_frames_total={num_frames_total})")
    start = max(0, int(start))
    end = num_frames_total if end is None else min(int(end), num_frames_total)
    if start >= num_frames_total:
        raise ValueError(f"start frame {start} is past the last frame ({num_frames_total - 1})")
    end = max(end, start + 1)  # a range shorter than one frame still shows the frame at its start
    length = end - start
    edges = np.linspace(0, length, n + 1).astype(np.int64)
    lo = edges[:-1]
    hi = np.maximum(edges[1:], lo + 1)
    if mode == "middle":
        idx = (lo + hi - 1) // 2
    elif mode == "rand":
        rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        idx = rng.integers(lo, hi)
    else:
        raise ValueError(f"mode must be 'middle' or 'rand', got {mode!r}")
    return (start + np.minimum(idx, length - 1)).tolist()


def probe(path) -> VideoInfo:
    """Duration, frame rate, frame count and size of a video (or image) file; raises VideoError."""
    with _open(path) as container:
        return _info(container, str(path), lambda: _open(path))


def read_frames(path, n: int, mode: str = "middle", start_sec: float | None = None,
                end_sec: float | None = None, rng: Any = None) -> np.ndarray:
    """n frames sampled by `sample_indices` over [start_sec, end_sec) -> uint8 (n, H, W, 3); raises VideoError."""
    return _read(lambda: _open(path), str(path), n, mode, start_sec, end_sec, rng)


def read_frames_bytes(data: bytes, n: int, mode: str = "middle", start_sec: float | None = None,
                      end_sec: float | None = None, rng: Any = None, name: str = "<bytes>") -> np.ndarray:
    """`read_frames` on an in-memory file (e.g. a WebDataset sample); `name` only labels errors."""
    return _read(lambda: _open(data, name), name, n, mode, start_sec, end_sec, rng)


# --- internals -------------------------------------------------------------------------------

class _open:
    """Context manager: open a path or bytes with PyAV, check there is a video stream, always close."""

    def __init__(self, source, name: str | None = None):
        self.source, self.name = source, name

    def __enter__(self):
        import av

        if isinstance(self.source, (bytes, bytearray, memoryview)):
            name = self.name or "<bytes>"
            if len(self.source) == 0:
                raise VideoError("cannot open: empty data", name)
            src = io.BytesIO(bytes(self.source))
        else:
            name = str(self.source)
            if not Path(name).is_file():
                raise VideoError("cannot open: no such file", name)
            if Path(name).stat().st_size == 0:
                raise VideoError("cannot open: empty file (0 bytes)", name)
            src = name
        try:
            self.container = av.open(src, metadata_errors="ignore")
        except (av.FFmpegError, OSError, ValueError) as e:
            raise VideoError(f"cannot open: {_msg(e)}", name) from None
        if not self.container.streams.video:
            kinds = sorted({s.type for s in self.container.streams})
            self.container.close()
            raise VideoError("no video stream" + (f" (only {', '.join(kinds)})" if kinds else ""), name)
        return self.container

    def __exit__(self, *exc):
        self.container.close()
        return False


def encoder_frame(rgb: np.ndarray, width: int | None = None, height: int | None = None, format: str = "yuv420p"):
    """rgb: np.uint8 (H, W, 3) -> an av.VideoFrame for an encoder, resized/converted (libx264: see x264_options)."""
    import av

    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
    return frame.reformat(width=width, height=height, format=format, **one_thread())


def _msg(e: Exception) -> str:
    # FFmpeg errors repeat the file name; keep only the reason.
    text = getattr(e, "strerror", None) or str(e)
    return str(text).split(": '")[0]


def _is_image(container) -> bool:
    return container.format.name in _IMAGE_FORMATS


def _info(container, name: str, reopen) -> VideoInfo:
    stream = container.streams.video[0]
    cc = stream.codec_context
    width, height = int(cc.width or 0), int(cc.height or 0)
    if _is_image(container):
        return VideoInfo(name, 0.0, float(stream.average_rate or stream.guessed_rate or 1), 1, width, height)
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    fps = float(rate) if rate else 0.0
    duration = 0.0
    if stream.duration is not None and stream.time_base is not None:
        duration = float(stream.duration * stream.time_base)
    elif container.duration is not None:
        duration = container.duration / 1_000_000  # AV_TIME_BASE
    num_frames = int(stream.frames or 0)
    if num_frames <= 0 and duration > 0 and fps > 0:
        num_frames = int(round(duration * fps))  # webm/mkv store no frame count
    if num_frames <= 0:
        with reopen() as other:  # no usable metadata: count by demuxing (a copy: raw streams can't seek back)
            num_frames = _count_packets(other, other.streams.video[0])
    if num_frames <= 0:
        raise VideoError("zero frames", name)
    if stream.frames and duration > 0:
        # The average rate that maps frame k to time k / fps across the file; nominal rates can be
        # off (GIF delays are rounded to 1/100 s, so FFmpeg guesses 25/3 for an 8 fps GIF).
        fps = num_frames / duration
    if fps <= 0:
        fps = num_frames / duration if duration > 0 else 25.0
    if duration <= 0:
        duration = num_frames / fps
    return VideoInfo(name, duration, fps, num_frames, width, height)


def _count_packets(container, stream) -> int:
    import av

    count = 0
    try:
        for packet in container.demux(stream):
            count += packet.size > 0
    except av.FFmpegError:
        pass  # truncated: count what is there
    return count


class _NoTimestamps(Exception):
    """Frames carry no pts: fall back to counting frames from the start."""


def _read(reopen, name: str, n: int, mode: str, start_sec, end_sec, rng) -> np.ndarray:
    """`reopen()` gives a fresh container: later passes reopen rather than seek back (raw streams can't)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    rng = rng if isinstance(rng, np.random.Generator) or rng is None else np.random.default_rng(rng)
    if mode == "rand" and rng is None:
        rng = np.random.default_rng()
    with reopen() as container:
        info = _info(container, name, reopen)
        total, fps = info.num_frames, info.fps
        # Segment in seconds -> frame range: frame k shows at k / fps, keep start <= k / fps < end.
        lo = 0 if start_sec is None else max(0, math.ceil(start_sec * fps - 1e-6))
        hi = total if end_sec is None else min(total, math.ceil(end_sec * fps - 1e-6))
        if lo >= total:
            raise VideoError(f"segment starts at {start_sec:g}s, after the end of the video ({info.duration:g}s)",
                             name)
        indices = sample_indices(total, n, mode, rng, lo, hi)
        try:
            frames, decoded_total = _decode_at(container, indices, fps, seek=True)
        except _NoTimestamps:
            frames, decoded_total = None, None  # decode again, counting frames instead of reading pts
    if frames is None and decoded_total is None:
        with reopen() as container:
            frames, decoded_total = _decode_at(container, indices, fps, seek=False)
    if frames is None:
        # Fewer frames decode than the metadata promised (truncated file, or a frame count estimated
        # from a container duration that includes a longer audio track): resample over what decodes.
        if decoded_total < 1:
            raise VideoError("truncated or corrupt: no frame decodes", name)
        if min(decoded_total, hi) - lo < min(n, hi - lo):
            raise VideoError(f"truncated or corrupt: only {decoded_total} of {total} frames decode", name)
        indices = sample_indices(decoded_total, n, mode, rng, lo, min(hi, decoded_total))
        with reopen() as container:
            frames, _ = _decode_at(container, indices, fps, seek=False)
        if frames is None:
            raise VideoError(f"truncated or corrupt: only {decoded_total} of {total} frames decode", name)
    return frames


def _keyframe_times(stream, t0: float) -> np.ndarray:
    """Keyframe times (s) from the container index (all packets in mp4/avi, cues in mkv/webm; may be empty)."""
    try:
        entries = stream.index_entries
        times = [e.timestamp for e in entries if e.is_keyframe]
    except (AttributeError, TypeError):
        return np.zeros(0)
    return np.sort(np.asarray(times, np.float64) * float(stream.time_base) - t0)


def _frames(container, stream):
    """Decoded frames from the current position; survives corrupt packets and unreadable tails."""
    import av

    packets = container.demux(stream)
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            return  # the demuxer's final empty packet has already drained the decoder
        except av.FFmpegError:
            break  # truncated/unreadable data: stop reading, but drain what the decoder holds
        try:
            frames = packet.decode()
        except av.FFmpegError:
            continue  # one corrupt packet: the decoder conceals it and the next frames still decode
        yield from frames
    try:
        yield from stream.decode(None)
    except av.FFmpegError:
        pass


def _decode_at(container, indices: list[int], fps: float, seek: bool):
    """Decode the frames shown at times index / fps -> ((n, H, W, 3) or None if the stream ends early, frames seen).

    Frames are picked by presentation time, so variable-frame-rate files and GIFs sample evenly in
    time. Decoding runs forward and keeps only the wanted frames; it seeks only when a keyframe lies
    between the current position and the next wanted time (i.e. seeking really skips decoding).
    """
    from av.video.reformatter import VideoReformatter

    stream = container.streams.video[0]
    order = sorted(set(indices))
    targets = [i / fps for i in order]
    tol = 0.5 / fps  # timestamps are rounded to the time base (e.g. 1/100 s in GIFs)
    tb = float(stream.time_base) if stream.time_base else 1.0 / fps
    t0 = float(stream.start_time * stream.time_base) if stream.start_time is not None and stream.time_base else 0.0
    keyframes = _keyframe_times(stream, t0) if seek else np.zeros(0)
    reformatter = VideoReformatter()
    picked: dict[int, np.ndarray] = {}
    size = None

    def convert(frame) -> np.ndarray:
        nonlocal size
        if size is None:
            size = (frame.width, frame.height)
        # Same size for all frames even if the stream changes resolution mid-way.
        return reformatter.reformat(frame, format="rgb24", width=size[0], height=size[1], **one_thread()).to_ndarray()

    j, prev, seen, pos, last_time = 0, None, 0, 0.0, -math.inf
    last_seek = -math.inf

    def seek_target() -> float | None:
        # Seek only when a keyframe sits after the current position and at or before the next
        # target, and only forward past the last seek: index times can be dts (a few frames early),
        # so a seek may land one keyframe earlier than planned; never retry it (no loops).
        if not seek or not len(keyframes):
            return None
        k = np.searchsorted(keyframes, targets[j] + tol, side="right") - 1
        if k >= 0 and keyframes[k] > pos + tol and keyframes[k] > last_seek:
            return float(keyframes[k])
        return None

    while j < len(targets):
        kf = seek_target()
        if kf is not None:
            container.seek(int(round((targets[j] + t0) / tb)), stream=stream, backward=True)
            stream.codec_context.flush_buffers()
            prev, last_seek = None, kf
        reseek = False
        for frame in _frames(container, stream):
            if frame.pts is None:
                if seek:
                    raise _NoTimestamps
                t = seen / fps
            else:
                t = float(frame.pts) * tb - t0
            seen += 1
            last_time = max(last_time, t)
            # The wanted frame is the last one shown at or before the target time.
            while j < len(targets) and t > targets[j] + tol:
                picked[order[j]] = convert(prev if prev is not None else frame)
                j += 1
            prev, pos = frame, t
            reseek = j < len(targets) and seek_target() is not None
            if j == len(targets) or reseek:
                break
        if reseek:
            continue
        break  # end of stream (or error)
    if j < len(targets):
        # The stream ended: frames within half a frame of the last decoded one are fine.
        while j < len(targets) and prev is not None and targets[j] <= last_time + tol:
            picked[order[j]] = convert(prev)
            j += 1
    decoded_total = int(math.floor(last_time * fps + 0.5)) + 1 if last_time > -math.inf else 0
    if j < len(targets):
        return None, decoded_total
    return np.stack([picked[i] for i in indices]), decoded_total
