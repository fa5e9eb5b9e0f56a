"""Reader: hash, probe, cut into segments and decode each video's frames, in DataLoader worker processes."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch

from .library import content_hash


@dataclass(frozen=True)
class FileTask:
    """One video to encode; `known_hash` is the indexed content hash, so a touched-but-identical file is cheap."""
    root: str
    rel: str
    known_hash: str | None = None

    @property
    def path(self) -> str:
        return os.path.join(self.root, self.rel)

    @property
    def key(self) -> tuple[str, str]:
        return self.root, self.rel


@dataclass(frozen=True)
class FileInfo:
    """What the metadata table stores per file."""
    root: str
    rel: str
    size: int
    mtime_ns: int
    hash: str
    duration: float = 0.0
    fps: float = 0.0
    width: int = 0
    height: int = 0

    @property
    def key(self) -> tuple[str, str]:
        return self.root, self.rel


@dataclass
class Chunk:
    """Up to `chunk` consecutive segments of one file: spans[i] -> video[i], uint8 (3, T, H, W) resized and
    cropped but not normalised (the Embedder does that on the model's device); `total` segments per file."""
    info: FileInfo
    first: int
    spans: list[tuple[float, float]]
    video: torch.Tensor  # uint8 (S, 3, T, H, W)
    total: int


@dataclass
class Failed:
    """A file that could not be indexed, with the reason shown in the failures report."""
    task: FileTask
    reason: str
    size: int | None = None
    mtime_ns: int | None = None


@dataclass
class Unchanged:
    """Size or mtime changed but the bytes did not: only the stored stat needs updating."""
    info: FileInfo


def plan_segments(duration: float, seconds: float, stride: float | None = None) -> list[tuple[float, float]]:
    """Windows of `seconds` every `stride` s; the last one is aligned to the end so the tail is covered by a full
    window (the model always sees the same time span); a clip no longer than one window is one segment."""
    stride = stride or seconds
    if not duration or not math.isfinite(duration) or duration <= seconds:
        return [(0.0, max(float(duration or 0.0), 0.0))]
    spans, start = [], 0.0
    while start + seconds < duration - 1e-6:
        spans.append((round(start, 3), round(start + seconds, 3)))
        start += stride
    last = (round(duration - seconds, 3), round(duration, 3))
    if spans[-1][0] < last[0] - 1e-6 and spans[-1][1] < duration - 1e-6:
        spans.append(last)
    return spans


class SegmentReader(torch.utils.data.IterableDataset):
    """Yields Chunk / Failed / Unchanged items; each worker process takes every num_workers-th file."""

    def __init__(self, tasks: list[FileTask], num_frames: int, img_size: int, segment_seconds: float,
                 stride: float | None = None, chunk: int = 16):
        super().__init__()
        self.tasks, self.num_frames, self.img_size = tasks, num_frames, img_size
        self.segment_seconds, self.stride, self.chunk = segment_seconds, stride, max(1, chunk)

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        wid, nw = (info.id, info.num_workers) if info else (0, 1)
        for task in self.tasks[wid::nw]:
            yield from self.read(task)

    def read(self, task: FileTask):
        from retrieval.data.transforms import frames_to_uint8
        from retrieval.data.video import probe, read_frames

        size = mtime = None
        try:
            st = os.stat(task.path)
            size, mtime = st.st_size, st.st_mtime_ns
            if size == 0:
                yield Failed(task, "empty file (0 bytes)", size, mtime)
                return
            digest = content_hash(task.path)
            vi = probe(task.path)
            info = FileInfo(task.root, task.rel, size, mtime, digest, float(vi.duration or 0.0), float(vi.fps or 0.0),
                            int(vi.width or 0), int(vi.height or 0))
            if task.known_hash == digest:
                yield Unchanged(info)
                return
            duration = info.duration or (vi.num_frames / vi.fps if vi.fps else 0.0)
            spans = plan_segments(duration, self.segment_seconds, self.stride)
            whole = len(spans) == 1
            for first in range(0, len(spans), self.chunk):
                part = spans[first:first + self.chunk]
                clips = []
                for start, end in part:
                    # the whole-clip case reads without bounds: probed durations can be a frame off
                    frames = (read_frames(task.path, self.num_frames, mode="middle") if whole else
                              read_frames(task.path, self.num_frames, mode="middle", start_sec=start, end_sec=end))
                    clips.append(frames_to_uint8(frames, self.img_size))
                yield Chunk(info, first, part, torch.stack(clips), len(spans))  # (S, 3, T, H, W)
        except Exception as e:  # noqa: BLE001 - one bad file must not stop a library-wide job
            yield Failed(task, _reason(e), size, mtime)


def decode_stream(reader: SegmentReader, workers: int):
    """The reader's items, decoded in `workers` processes started from the fork server (retrieval.data.workers), or
    in this process when `workers` is 0."""
    if workers <= 0:
        return reader
    from retrieval.data.workers import media_worker_context

    return torch.utils.data.DataLoader(reader, batch_size=None, num_workers=workers, collate_fn=identity,
                                       prefetch_factor=2, multiprocessing_context=media_worker_context())


def _reason(e: Exception) -> str:
    reason = getattr(e, "reason", None)  # VideoError carries the bare reason (its str() repeats the path)
    if reason:
        return str(reason)
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def identity(x):
    """collate_fn for batch_size=None loaders: items are already whole (module level so workers can pickle it)."""
    return x
