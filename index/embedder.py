"""The index's side of the mapper (retrieval.inference): batches decoded segments across files; encodes queries."""
from __future__ import annotations

import os
import queue
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np
import torch

from retrieval.inference import encode_clips, encode_texts

from .reader import Chunk, Failed, FileInfo, Unchanged


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """"auto" -> the rank's GPU (LOCAL_RANK under torchrun/deepspeed) when CUDA is present, else the CPU."""
    if str(device) != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
    return torch.device("cpu")


def encode_threads(device: torch.device) -> int:
    """Intra-op threads for a long CPU encode, chosen once from how busy the cores are: all of them unless other
    jobs oversubscribe the cores, then fewer. Threads meet at a barrier in every op, so when one is descheduled
    the others wait: on the 2-core box at load 7-9, one thread encoded 3-10x faster than two; at load <= 2, two
    threads were faster (34.9 s against 45.2 s for the demo; BENCHMARKS.md section 4b). VMR_CPU_THREADS=N
    overrides."""
    if device.type != "cpu":
        return torch.get_num_threads()
    if os.environ.get("VMR_CPU_THREADS"):
        return max(1, int(os.environ["VMR_CPU_THREADS"]))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    busy = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0  # runnable processes, last minute
    # Up to `cores` runnable jobs (this one's own recent work included) leave every core to us.
    want = cores if busy <= cores else int(2 * cores - busy + 0.5)
    return max(1, min(torch.get_num_threads(), want))


@contextmanager
def threads_for_encoding(device: torch.device):
    """`encode_threads` for the duration of a build, then the process's setting again."""
    before = torch.get_num_threads()
    torch.set_num_threads(encode_threads(device))
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


@dataclass
class Encoded:
    """All segments of one file with their embeddings, float16 (S, E), ready for the writer."""
    info: FileInfo
    spans: list[tuple[float, float]]
    embeddings: np.ndarray


class Embedder:
    """Runs the model: `encode_video` / `encode_text` on plain arrays, and `run` over the reader's stream."""

    def __init__(self, model, device: str | torch.device = "auto", batch_size: int = 16, cuda_graphs: bool = False):
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.batch_size = max(1, batch_size)
        self.cuda_graphs = cuda_graphs

    @property
    def num_frames(self) -> int:
        return int(self.model.config.video.num_frames)

    @property
    def img_size(self) -> int:
        return int(self.model.config.video.img_size)

    def encode_video(self, video: torch.Tensor) -> np.ndarray:
        """(B, 3, T, H, W) uint8 frames (normalised on the device) or normalised float -> float16 (B, E),
        L2-normalised."""
        (emb,) = encode_clips(self.model, [video], self.device, cuda_graphs=self.cuda_graphs)
        return emb.cpu().numpy().astype(np.float16)

    def encode_text(self, texts: list[str]) -> np.ndarray:
        """list of B strings -> float32 (B, E), L2-normalised."""
        return encode_texts(self.model, texts, batch_size=max(1, len(texts)))

    def run(self, items: Iterable[Chunk | Failed | Unchanged]) -> Iterator["Encoded | Failed | Unchanged"]:
        """Batch segments across files (a long video fills many batches, short ones share one) and yield each
        file once all its segments are encoded; a file that fails mid-way is dropped whole.

        `items` are drawn by a helper thread that also moves each chunk to the device, so receiving from the
        decode workers and the host-to-device copies overlap with this thread's kernel launches (on a GPU the
        small encoder is launch-bound: one thread doing both ran at ~40% of the encoder's speed)."""
        files: dict[tuple[str, str], dict] = {}
        pending: list[tuple[tuple[str, str], int, torch.Tensor]] = []

        def flush(n: int):
            nonlocal pending
            batch, pending = pending[:n], pending[n:]
            emb = self.encode_video(torch.stack([t for _, _, t in batch]))
            for (key, idx, _), e in zip(batch, emb):
                if key in files:  # gone when the file failed after this batch was queued
                    st = files[key]
                    st["emb"][idx] = e
                    st["done"] += 1

        def finished():
            for key in [k for k, st in files.items() if st["done"] == st["total"]]:
                st = files.pop(key)
                yield Encoded(st["info"], st["spans"], st["emb"].array)

        for item in _prefetched(items, self.device):
            if isinstance(item, Chunk):
                key = item.info.key
                if key not in files:
                    files[key] = {"info": item.info, "spans": [], "emb": _LazyRows(item.total), "done": 0,
                                  "total": item.total}
                files[key]["spans"].extend(item.spans)
                pending.extend((key, item.first + j, item.video[j]) for j in range(len(item.spans)))
                while len(pending) >= self.batch_size:
                    flush(self.batch_size)
                yield from finished()
            elif isinstance(item, Failed):
                if files.pop(item.task.key, None) is not None:
                    pending = [p for p in pending if p[0] != item.task.key]
                yield item
            else:
                yield item
        while pending:
            flush(self.batch_size)
        yield from finished()
        for st in files.values():  # the stream ended mid-file (a worker died): report rather than drop silently
            yield Failed(_task_of(st["info"]), f"decoding stopped after {st['done']} of {st['total']} segments")


_END = object()


class _Raised:
    def __init__(self, error: BaseException):
        self.error = error


def _prefetched(items: Iterable, device: torch.device, depth: int = 64) -> Iterator:
    """`items` drawn in a helper thread, up to `depth` ahead; on CUDA each Chunk's frames are already on their
    way to the device (pinned copy on a side stream, waited for here before use). Errors re-raise here; closing
    the generator stops the helper."""
    cuda = device.type == "cuda"
    stream = torch.cuda.Stream(device) if cuda else None
    out: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(x) -> bool:
        while not stop.is_set():
            try:
                out.put(x, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    def work():
        try:
            for item in items:
                if cuda and isinstance(item, Chunk):
                    with torch.cuda.stream(stream):
                        video = item.video.pin_memory().to(device, non_blocking=True)
                        ready = torch.cuda.Event()
                        ready.record(stream)
                    item = (Chunk(item.info, item.first, item.spans, video, item.total), ready)
                if not put(item):
                    return
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, which re-raises it
            put(_Raised(e))
        put(_END)

    helper = threading.Thread(target=work, name="vmr-embedder-prefetch", daemon=True)
    helper.start()
    try:
        while True:
            item = out.get()
            if item is _END:
                return
            if isinstance(item, _Raised):
                raise item.error
            if isinstance(item, tuple):
                item, ready = item
                current = torch.cuda.current_stream(device)
                current.wait_event(ready)
                item.video.record_stream(current)  # the side stream's allocation is used on this stream
            yield item
    finally:
        stop.set()
        helper.join(timeout=5)


class _LazyRows:
    """Per-file embedding rows, allocated once the embedding width is known (from the first encoded batch)."""

    def __init__(self, total: int):
        self.total, self.array = total, None

    def __setitem__(self, idx: int, value: np.ndarray) -> None:
        if self.array is None:
            self.array = np.zeros((self.total, value.shape[-1]), np.float16)
        self.array[idx] = value


def _task_of(info: FileInfo):
    from .reader import FileTask

    return FileTask(info.root, info.rel)
