"""Ingest: walk a library, skip what is indexed or checkpointed, run reader -> embedder -> writer, then commit.

Several processes (torchrun / deepspeed: RANK, WORLD_SIZE, LOCAL_RANK) share one library: each takes every
WORLD_SIZE-th file of the sorted list, writes its own part, and rank 0 merges the parts once all are DONE
(or `vmr index build --merge` does it later). A rerun after a crash skips every checkpointed file.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import ann
from .errors import IndexMissingError, ModelMismatchError, UsageError
from .library import discover, is_inside, relative_to_root, stat_key
from .reader import Failed, FileTask, SegmentReader, decode_stream
from .store import IndexStore, WriterLock, transaction
from .update import CommitResult, merge
from .writer import PartWriter, done_parts, part_name, read_parts

log = logging.getLogger(__name__)

SETTINGS = ("segment_seconds", "stride", "frames", "img_size")  # fixed at build time: segments must be comparable


def default_workers() -> int:
    return max(1, min(8, (os.cpu_count() or 2) - 1))


@dataclass
class IngestConfig:
    """How a library is cut and encoded (the first four are fixed per index) and how the job runs."""
    segment_seconds: float = 8.0   # window length; clips no longer than this are one segment
    stride: float | None = None    # seconds between window starts (default: segment_seconds, no overlap)
    frames: int | None = None      # frames sampled per segment (default: the model's num_frames)
    batch_size: int = 16           # segments per forward pass
    workers: int = field(default_factory=default_workers)  # decoding processes (0: decode in this process)
    device: str = "auto"           # "auto": this rank's GPU if any, else CPU
    cuda_graphs: bool = False      # replay the encoder from CUDA graphs on a GPU (retrieval.cuda_graphs)
    memory_budget: int = ann.DEFAULT_MEMORY_BUDGET  # bytes the FAISS index may take in RAM
    target_recall: float = ann.TARGET_RECALL        # recall@10 vs exact search the ANN index must measure
    shard_rows: int = 4096         # embeddings per shard file
    checkpoint_seconds: float = 60.0  # flush a checkpoint at least this often
    progress: bool = True
    merge_timeout: float = 24 * 3600.0  # how long rank 0 waits for the other ranks' parts


@dataclass
class IngestReport:
    found: int = 0
    skipped: int = 0          # already indexed with the same size + mtime
    checkpointed: int = 0     # encoded by an earlier, interrupted run
    known_bad: int = 0        # failed before and unchanged since
    encoded: int = 0
    unchanged: int = 0        # stat changed, bytes did not
    segments: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)  # wall seconds of plan (walk + checks), encode, commit
    rank: int = 0
    world: int = 1
    commit: CommitResult | None = None


def dist_env() -> tuple[int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def build(videos, index_dir, model=None, model_path=None, config: IngestConfig | None = None, video_root=None,
          rank: int | None = None, world: int | None = None) -> IngestReport:
    """Create (or resume) the index at `index_dir` for the library `videos`."""
    return _ingest(videos, index_dir, model, model_path, config or IngestConfig(), video_root, rank, world,
                   create=True)


def add(index_dir, videos, model=None, model_path=None, config: IngestConfig | None = None, video_root=None,
        rank: int | None = None, world: int | None = None) -> IngestReport:
    """Index new and changed files of `videos` into an existing index, with the model it was built with."""
    if not IndexStore.exists(index_dir):
        raise IndexMissingError(f"no index at {index_dir}; create it with `vmr index build`")
    return _ingest(videos, index_dir, model, model_path, config or IngestConfig(), video_root, rank, world,
                   create=False)


def _ingest(videos, index_dir, model, model_path, cfg, video_root, rank, world, create) -> IngestReport:
    t0 = time.time()
    env_rank, env_world = dist_env()
    rank, world = env_rank if rank is None else rank, env_world if world is None else world
    index_dir = Path(index_dir).resolve()
    report = IngestReport(rank=rank, world=world)
    if create:
        index_dir.mkdir(parents=True, exist_ok=True)
    with WriterLock(index_dir, exclusive=False):
        store = IndexStore.open(index_dir, create=create)
        try:
            if model is None:
                from retrieval import load_model

                from .embedder import resolve_device
                model_path = model_path or store.state().get("model_path")
                if not model_path:
                    raise UsageError(f"{index_dir}: no model given and none recorded in the index")
                model = load_model(model_path, resolve_device(cfg.device))
            settings = _check_or_record(store, model, model_path, cfg, create)
            found = discover(videos, video_root, exclude=(str(index_dir),))
            tasks, failures = _plan(store, index_dir, found, rank, world, report)
            report.found = len(found.files)
            t_encode = time.time()
            report.phases["plan"] = t_encode - t0
            _encode(index_dir, model, settings, cfg, tasks, failures if rank == 0 else [], rank, world, report)
            report.phases["encode"] = time.time() - t_encode
        finally:
            store.close()
    if rank == 0:
        if world > 1:
            _wait_for_parts(index_dir, world, t0, cfg.merge_timeout)
        t_commit = time.time()
        report.commit = merge(index_dir)
        report.phases["commit"] = time.time() - t_commit
    report.seconds = time.time() - t0
    return report


def _check_or_record(store: IndexStore, model, model_path, cfg: IngestConfig, create: bool) -> dict:
    """Record model and settings in a new index; for an existing one refuse another model or other settings."""
    st = store.state()
    mid = model.model_id
    wanted = {"segment_seconds": float(cfg.segment_seconds), "stride": float(cfg.stride or cfg.segment_seconds),
              "frames": int(cfg.frames or model.config.video.num_frames),
              "img_size": int(model.config.video.img_size)}
    if "model_id" not in st:
        with transaction(store.conn):
            store.set_state(model_id=mid, model_path=str(Path(model_path).resolve()) if model_path else None,
                            memory_budget=int(cfg.memory_budget), target_recall=float(cfg.target_recall), **wanted)
        return wanted
    if st["model_id"] != mid:
        raise ModelMismatchError(st["model_id"], mid, f"the given model ({model_path or 'in memory'})")
    stored = {k: st.get(k) for k in SETTINGS}
    if create and any(stored[k] != wanted[k] for k in SETTINGS):
        diff = ", ".join(f"{k}={stored[k]} (asked {wanted[k]})" for k in SETTINGS if stored[k] != wanted[k])
        raise UsageError(f"{store.dir} already holds an index built with {diff}; use `vmr index add` to extend "
                         "it, or build into a new folder")
    return stored


def _plan(store: IndexStore, index_dir: Path, found, rank: int, world: int, report: IngestReport):
    """This rank's files that need reading, and the discovery failures (rank 0 reports those)."""
    roots = list(store.roots().values())
    keys = []
    for path in found.files:
        root = next((r for r in roots if is_inside(path, r)), found.root)
        keys.append((root, relative_to_root(path, root)))
    keys = sorted(set(keys))
    share = keys[rank::world]  # by position in the sorted list, so every rank derives the same split
    files, fails = store.files(), store.failures()
    parts = read_parts(index_dir, with_segments=False, model_id=store.state().get("model_id"))
    tasks = []
    for key in share:
        path = os.path.join(*key)
        try:
            stat = stat_key(path)
        except OSError as e:
            report.failures.append((path, f"cannot stat: {e.strerror}"))
            continue
        main, part = files.get(key), parts.files.get(key)
        if main is not None and (main["size"], main["mtime_ns"]) == stat:
            report.skipped += 1
        elif part is not None and (part.row["size"], part.row["mtime_ns"]) == stat:
            report.checkpointed += 1
        elif any(f is not None and (f["size"], f["mtime_ns"]) == stat
                 for f in (fails.get(path), parts.failures.get(path))):
            report.known_bad += 1
        else:
            tasks.append(FileTask(key[0], key[1], main["hash"] if main is not None else None))
    rejected = [FileTask(os.path.dirname(os.path.abspath(p)), os.path.basename(p)) for p, _ in found.rejected]
    return tasks, [Failed(t, reason) for t, (_, reason) in zip(rejected, found.rejected)]


def _encode(index_dir, model, settings, cfg: IngestConfig, tasks, failures, rank, world, report) -> None:
    from tqdm import tqdm

    from .embedder import Embedder, Encoded, threads_for_encoding
    from .reader import Unchanged

    writer = PartWriter(index_dir, part_name(rank, world), model.model_id, cfg.shard_rows, cfg.checkpoint_seconds)
    ok = False
    try:
        for item in failures:
            writer.write(item)
            report.failures.append((item.task.path, item.reason))
        if tasks:
            embedder = Embedder(model, cfg.device, cfg.batch_size, cuda_graphs=cfg.cuda_graphs)
            reader = SegmentReader(tasks, settings["frames"], settings["img_size"], settings["segment_seconds"],
                                   settings["stride"], chunk=cfg.batch_size)
            stream = decode_stream(reader, min(cfg.workers, len(tasks)))
            desc = "indexing" if world == 1 else f"indexing (rank {rank}/{world})"
            t0 = time.time()
            with threads_for_encoding(embedder.device), tqdm(
                    total=len(tasks), unit="file", desc=desc, disable=not cfg.progress, position=rank,
                    dynamic_ncols=True) as bar:
                for item in embedder.run(stream):
                    writer.write(item)
                    if isinstance(item, Encoded):
                        report.encoded += 1
                        report.segments += len(item.spans)
                    elif isinstance(item, Unchanged):
                        report.unchanged += 1
                    else:
                        report.failures.append((item.task.path, item.reason))
                    bar.update(1)
                    rate = report.segments / max(time.time() - t0, 1e-9)
                    bar.set_postfix(segments=report.segments, seg_s=f"{rate:.1f}", failed=len(report.failures),
                                    refresh=False)
        ok = True
    finally:
        try:
            writer.close(done=ok)  # an interrupted run still checkpoints the files it finished
        except Exception:  # noqa: BLE001 - keep the original error; the rerun redoes the unflushed files
            if ok:
                raise
            log.exception("could not flush the checkpoint of the interrupted run")


def _wait_for_parts(index_dir: Path, world: int, since: float, timeout: float) -> None:
    """Rank 0 waits for ranks 1..world-1 to mark their parts DONE (finished during this launch)."""
    names = [part_name(r, world) for r in range(1, world)]
    deadline = time.monotonic() + timeout
    while True:
        done = done_parts(index_dir)
        # a DONE left by an earlier launch that never merged is older than this launch (allow clock skew)
        missing = [n for n in names if done.get(n, 0.0) < since - 60]
        if not missing:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"parts {missing} of {index_dir} are not DONE after {timeout:.0f}s; when those ranks "
                               f"have finished, run `vmr index build --merge --out {index_dir}`")
        time.sleep(2.0)


def info(index_dir) -> dict:
    """Everything `vmr index info` shows: model, settings, counts, FAISS type and its measured recall."""
    store = IndexStore.open(index_dir)
    try:
        with transaction(store.conn, write=False):
            st = store.state()
            counts = store.counts()
            roots = list(store.roots().values())
            failures = [(r["path"], r["reason"]) for r in store.failures().values()]
        parts = read_parts(index_dir, with_segments=False)
        disk = sum(f.stat().st_size for f in Path(index_dir).rglob("*") if f.is_file())
        return {"index_dir": str(Path(index_dir).resolve()), "version": st.get("version"),
                "model_id": st.get("model_id"), "model_path": st.get("model_path"),
                "settings": {k: st.get(k) for k in SETTINGS}, "roots": roots, **counts,
                "faiss": st.get("index") or {}, "failures_list": failures,
                "pending_checkpoints": len(parts.files), "disk_bytes": disk,
                "created": st.get("created"), "updated": st.get("updated")}
    finally:
        store.close()
