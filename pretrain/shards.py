"""Caption annotations + media files -> WebDataset tar shards, deterministic, atomic per shard and resumable."""
from __future__ import annotations

import io
import json
import re
import tarfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from retrieval.data.annotations import (
    IMAGE_EXTENSIONS,
    MEDIA_EXTENSIONS,
    find_video_file,
    load_folder,
    read_annotation_file,
)
from retrieval.data.workers import media_worker_context
from retrieval.errors import UsageError
from retrieval.io import atomic_write

SHARD_PATTERN = "shard-%06d.tar"
PROGRESS_DIR = ".progress"  # one JSON per finished shard: its samples and skipped items


@dataclass
class Item:
    """One media file and all its captions (annotations listing a video several times are merged)."""

    name: str                       # path relative to the media folder, as the annotation gives it
    captions: list[str] = field(default_factory=list)
    meta: dict = field(default_factory=dict)  # extra annotation fields kept in the sample's json (duration, ...)


@dataclass
class ShardOptions:
    shard_size: int = 1000          # annotation items per shard (bad ones are skipped, so shards may hold fewer)
    max_side: int | None = None     # re-encode videos whose longer side exceeds this (None: store bytes as they are)
    fps: float | None = None        # re-encode videos whose frame rate exceeds this
    workers: int = 1                # shards written in parallel (the same samples in the same shards for any value)


# ---------------------------------------------------------------- annotation reading

def _merge(entries) -> list[Item]:
    """Group by media name in order of first appearance; captions keep their order, duplicates dropped."""
    items: dict[str, Item] = {}
    for name, entry in entries:
        item = items.setdefault(name, Item(name, [], entry.meta))
        item.captions += [c for c in dict.fromkeys(entry.captions) if c not in item.captions]
    return list(items.values())


def read_annotations(anno: str | Path | None, media_dir: str | Path) -> list[Item]:
    """Items in a deterministic order from any annotation file `retrieval.data.annotations` reads (VINDLU/UMT
    list, MSRVTT csv / MSRVTT_data.json, ActivityNet, LSMDC) or a plain folder (anno None or a dir).

    The file is read as training data (`strict=False`): an entry without a caption is kept, then skipped with
    that reason; a video listed several times is one item with all its captions."""
    if anno is None or Path(anno).is_dir():
        folder = Path(anno if anno is not None else media_dir)
        return _merge((Path(v.path).relative_to(folder.resolve()).as_posix(), v)
                      for v in load_folder(folder, require_captions=False))
    return _merge((v.path or v.video_id, v) for v in read_annotation_file(anno, strict=False))


# ---------------------------------------------------------------- media checks and re-encoding

def _needs_reencode(info: "MediaSize", max_side: int | None, fps: float | None) -> bool:
    return bool((max_side and max(info.width, info.height) > max_side) or (fps and info.fps > fps * 1.01))


def reencode(data: bytes, max_side: int | None, fps: float | None, is_image: bool) -> tuple[bytes, str]:
    """Downscale (longer side <= max_side, even sizes) and/or drop frames to <= fps; H.264 mp4 (jpg for images)."""
    import av

    from retrieval.data.video import encoder_frame, one_thread, x264_options

    info = media_size(data)
    scale = min(1.0, max_side / max(info.width, info.height)) if max_side else 1.0
    w = max(2, int(round(info.width * scale / 2)) * 2)
    h = max(2, int(round(info.height * scale / 2)) * 2)
    src = av.open(io.BytesIO(data), metadata_errors="ignore")
    out_buf = io.BytesIO()
    try:
        stream = src.streams.video[0]
        if is_image:
            frame = next(src.decode(stream))
            with av.open(out_buf, "w", format="image2pipe") as dst:
                vs = dst.add_stream("mjpeg", rate=1)
                vs.width, vs.height, vs.pix_fmt = w, h, "yuvj420p"
                dst.mux(vs.encode(frame.reformat(width=w, height=h, format="yuvj420p", **one_thread())))
                dst.mux(vs.encode())
            return out_buf.getvalue(), "jpg"
        src_fps = info.fps or 25.0
        out_fps = min(src_fps, fps) if fps else src_fps
        from fractions import Fraction

        with av.open(out_buf, "w", format="mp4") as dst:
            vs = dst.add_stream("libx264", rate=Fraction(out_fps).limit_denominator(1001))
            vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
            vs.codec_context.thread_count = 1  # one encoder thread: the shard writers are the parallelism
            vs.options = {"crf": "23", "preset": "veryfast", **x264_options()}
            tb = float(stream.time_base) if stream.time_base else 1.0 / src_fps
            next_t, k = 0.0, 0
            for frame in src.decode(stream):
                t = float(frame.pts) * tb if frame.pts is not None else k / src_fps
                k += 1
                if t + 1e-6 < next_t:
                    continue  # frame-rate reduction: keep the first frame at or after each output tick
                next_t += 1.0 / out_fps
                dst.mux(vs.encode(encoder_frame(frame.to_ndarray(format="rgb24", **one_thread()), w, h)))
            dst.mux(vs.encode())
        return out_buf.getvalue(), "mp4"
    finally:
        src.close()


@dataclass
class MediaSize:
    width: int
    height: int
    fps: float  # 0 for still images


def media_size(data: bytes) -> MediaSize:
    """Frame size and rate from container metadata (for the re-encode decision; decoding is checked separately)."""
    import av

    with av.open(io.BytesIO(data), metadata_errors="ignore") as c:
        if not c.streams.video:
            from retrieval.data.video import VideoError

            raise VideoError("no video stream")
        s = c.streams.video[0]
        rate = s.average_rate or s.guessed_rate
        still = c.format.name in ("image2", "jpeg_pipe", "png_pipe", "webp_pipe")
        return MediaSize(int(s.codec_context.width or 0), int(s.codec_context.height or 0),
                         0.0 if still or not rate else float(rate))


def check_media(data: bytes, name: str) -> MediaSize:
    """Size and rate of in-memory media after decoding its middle frame; raises VideoError with the reason."""
    from retrieval.data.video import read_frames_bytes

    read_frames_bytes(data, 1, "middle", name=name)  # first: its errors carry the readable reasons
    return media_size(data)


# ---------------------------------------------------------------- tar writing

def sample_key(index: int, name: str) -> str:
    """Unique, dot-free WebDataset key: the item's position plus a readable slug of its name."""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", Path(name).with_suffix("").as_posix()).strip("_")
    return f"{index:08d}_{stem[:60]}" if stem else f"{index:08d}"


def _add(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(payload), 0, 0o444  # fixed metadata: reruns give identical bytes
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(payload))


def _write_shard(job: tuple) -> dict:
    """Write one shard atomically; returns its progress record {shard, samples, keys, skipped}."""
    shard, first_index, items, media_dir, out_dir, opts = job
    out_dir, media_dir = Path(out_dir), Path(media_dir)
    final = out_dir / (SHARD_PATTERN % shard)
    progress = out_dir / PROGRESS_DIR / (final.stem + ".json")
    record = {"shard": final.name, "samples": 0, "keys": [], "skipped": []}

    def pack(tmp: Path) -> None:
        with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
            for offset, item in enumerate(items):
                sample = _sample(item, media_dir, opts)
                if isinstance(sample, str):
                    record["skipped"].append({"video": item.name, "reason": sample})
                    continue
                key = sample_key(first_index + offset, item.name)
                meta = {"captions": item.captions, "video": item.name, **item.meta}
                _add(tar, f"{key}.{sample[1]}", sample[0])
                _add(tar, f"{key}.json", json.dumps(meta, ensure_ascii=False).encode("utf-8"))
                _add(tar, f"{key}.txt", item.captions[0].encode("utf-8"))
                record["keys"].append(key)
        record["samples"] = len(record["keys"])
        # the record is renamed before the tar: a tar without its record is never "done". Both "file": a power
        # cut may undo a rename (the shard is then redone), never leave a shard or record that is not whole.
        atomic_write(progress, json.dumps(record, ensure_ascii=False), durable="file")

    # atomic_write's temp names are unique per writer: after kill -9 of the parent, an orphaned pool worker may
    # still be writing this shard while the rerun writes it too; both then finish and rename identical bytes
    atomic_write(final, pack, durable="file")
    return record


def _sample(item: Item, media_dir: Path, opts: ShardOptions) -> tuple[bytes, str] | str:
    """(media bytes, extension) to store for an item, or the reason it is skipped."""
    # found as eval finds it: the name as given, else its stem with any media extension (ids often come without)
    path = find_video_file(media_dir, item.name) or media_dir / item.name
    ext = path.suffix.lower().lstrip(".")
    if not item.captions:
        return "no caption"
    if ext not in MEDIA_EXTENSIONS:
        return f"unsupported file type {path.suffix or '(none)'}"
    if not path.is_file():
        return "missing file"
    import av

    from retrieval.data.video import VideoError

    try:
        data = path.read_bytes()
        info = check_media(data, item.name)
        if _needs_reencode(info, opts.max_side, opts.fps):
            data, ext = reencode(data, opts.max_side, opts.fps, ext in IMAGE_EXTENSIONS)
    except (VideoError, av.FFmpegError, OSError, ValueError, EOFError, StopIteration) as e:
        return getattr(e, "reason", None) or f"{type(e).__name__}: {e}"
    return data, ext


def _done(out_dir: Path, shard: int) -> dict | None:
    final = out_dir / (SHARD_PATTERN % shard)
    progress = out_dir / PROGRESS_DIR / (final.stem + ".json")
    if final.is_file() and progress.is_file():
        return json.loads(progress.read_text(encoding="utf-8"))
    return None


def write_shards(items: list[Item], media_dir: str | Path, out_dir: str | Path,
                 options: ShardOptions | None = None, progress: bool = True) -> dict:
    """Write items into OUT/shard-%06d.tar (shard k = items [k*S, (k+1)*S)), skip finished shards; return the report.

    The report (also OUT/report.json) lists shards with sample counts, and every skipped item with its reason.
    """
    opts = options or ShardOptions()
    if opts.shard_size < 1:
        raise UsageError(f"shard size must be >= 1, got {opts.shard_size}")
    out_dir, media_dir = Path(out_dir), Path(media_dir)
    (out_dir / PROGRESS_DIR).mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob("*.tmp"):  # a killed run's half-written shard
        stale.unlink()
    S = opts.shard_size
    n_shards = (len(items) + S - 1) // S
    records: dict[int, dict] = {}
    jobs = []
    for k in range(n_shards):
        done = _done(out_dir, k)
        if done is not None:
            records[k] = done
        else:
            jobs.append((k, k * S, items[k * S:(k + 1) * S], str(media_dir), str(out_dir), opts))

    from tqdm import tqdm

    bar = tqdm(total=n_shards, initial=len(records), desc="shards", unit="shard", disable=not progress)
    if opts.workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=min(opts.workers, len(jobs)), mp_context=media_worker_context()) as pool:
            for rec, job in zip(pool.map(_write_shard, jobs), jobs):
                records[job[0]] = rec
                bar.update()
    else:
        for job in jobs:
            records[job[0]] = _write_shard(job)
            bar.update()
    bar.close()
    ordered = [records[k] for k in range(n_shards)]
    report = {
        "items": len(items),
        "samples": sum(r["samples"] for r in ordered),
        "shards": [{"shard": r["shard"], "samples": r["samples"]} for r in ordered],
        "urls": f"{out_dir}/shard-{{{0:06d}..{max(n_shards - 1, 0):06d}}}.tar" if n_shards else "",
        "skipped": [s for r in ordered for s in r["skipped"]],
    }
    # "none": it is rebuilt from the (durable) progress records by every run
    atomic_write(out_dir / "report.json", json.dumps(report, indent=1, ensure_ascii=False), durable="none")
    return report
