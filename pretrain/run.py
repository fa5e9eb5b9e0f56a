"""Pretraining entry point: `deepspeed pretrain/run.py --config X.yaml [key=value ...]` (or `python ...`)."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from contextlib import ExitStack, contextmanager
from pathlib import Path

if __package__ in (None, ""):  # `python pretrain/run.py`: make the repo importable without installing it
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

log = logging.getLogger("pretrain")
PROG = "pretrain/run.py"  # how it is started (`python pretrain/run.py`, `deepspeed pretrain/run.py`); no console script


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, help="experiment YAML (only what differs from the defaults)")
    p.add_argument("--out", default=None, help="run folder (overrides run.out)")
    p.add_argument("--resume", default=None,
                   help="'auto' (latest checkpoint in the run folder, fresh start if none) or a checkpoint folder")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help="set by the deepspeed launcher")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. optim.lr=1e-4 data.batch_size=16")
    return p


def prepare_synthetic(cfg, run_dir: Path, is_main: bool) -> None:
    """Generate the synthetic world + shards into RUN/synth when asked and missing; point data/val at them."""
    from pretrain.distributed import barrier
    from pretrain.shards import ShardOptions, read_annotations, write_shards

    s = cfg.synth
    root = run_dir / "synth"
    train_dir, shard_dir, val_dir = root / "train", root / "shards", root / "val"
    workers = s.workers or os.cpu_count() or 1
    if is_main:
        from pretrain.synth import generate

        if not (train_dir / "annotations.json").is_file():
            generate(train_dir, s.train_videos, "train", seed=s.seed, size=s.size, frames=s.frames,
                     workers=workers, progress=False)
        if not (shard_dir / "report.json").is_file():
            write_shards(read_annotations(train_dir / "annotations.json", train_dir / "videos"), train_dir / "videos",
                         shard_dir, ShardOptions(shard_size=s.shard_size, workers=workers), progress=False)
        if s.val_videos > 0 and not (val_dir / "annotations.json").is_file():
            generate(val_dir, s.val_videos, "test", seed=s.seed, size=s.size, frames=s.frames,
                     workers=workers, progress=False)
    barrier()
    from pretrain.config import SourceConfig

    n_shards = len(list(shard_dir.glob("shard-*.tar")))
    cfg.data.sources = [SourceConfig(urls=f"{shard_dir}/shard-{{000000..{n_shards - 1:06d}}}.tar", name="synth")]
    if s.val_videos > 0 and not cfg.val.anno:
        cfg.val.anno, cfg.val.videos = str(val_dir / "annotations.json"), str(val_dir / "videos")


@contextmanager
def exclusive_run_dir(run_dir: Path):
    """Hold RUN/.lock (flock) while this run uses the folder; a second run on it waits for the first to exit.

    After SIGTERM the `deepspeed` launcher exits at once (143) while its ranks are still finishing their step and
    writing the preemption checkpoint, so `timeout ... deepspeed ...; deepspeed ... --resume auto` would start the
    resume beside them: it would pick the previous checkpoint and both would write the same folder. The lock is
    the rank-0 process's (and its data workers', which share the open file): it goes when they are gone, killed
    or not."""
    import fcntl

    f = open(run_dir / ".lock", "a+", encoding="utf-8")
    try:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "?"
            log.warning("%s is in use by another run (pid %s; a preempted run still writing its checkpoint?): "
                        "waiting for it to exit", run_dir, holder)
            fcntl.flock(f, fcntl.LOCK_EX)
            log.warning("%s: the other run has exited; starting", run_dir)
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        yield
    finally:
        f.close()  # releases the lock


def _setup_logging(rank: int) -> None:
    """INFO from rank 0, warnings from the others, on the `pretrain` loggers (root logging stays the caller's)."""
    logger = logging.getLogger("pretrain")
    logger.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    handler = next((h for h in logger.handlers if getattr(h, "_vmr_pretrain", False)), None)
    if handler is None:
        handler = logging.StreamHandler()
        handler._vmr_pretrain = True
        logger.addHandler(handler)
    handler.setFormatter(logging.Formatter(f"%(asctime)s [rank {rank}] %(name)s: %(message)s"))


def main(argv: list[str] | None = None) -> dict:
    """Parse, resolve the config, write it to the run folder, train; returns the run summary."""
    args = build_parser().parse_args(argv)
    from pretrain.config import load_train_config
    from pretrain.distributed import barrier, init_distributed
    from pretrain.engine import resolve_engine_kind
    from retrieval.config import save_yaml, to_dict

    overrides = list(args.overrides)
    if args.out:
        overrides.append(f"run.out={args.out}")
    cfg = load_train_config(args.config, overrides)
    kind = resolve_engine_kind(cfg.engine.kind)
    dist = init_distributed(kind)
    _setup_logging(dist.rank)
    if kind == "torch" and cfg.engine.kind == "auto":
        log.warning("deepspeed is not importable: training with plain PyTorch (single process)")
    run_dir = Path(cfg.run.out)
    from pretrain.train import train

    with ExitStack() as stack:
        if dist.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            stack.enter_context(exclusive_run_dir(run_dir))
        barrier()  # the other ranks wait here while rank 0 waits for the folder
        if cfg.synth.train_videos > 0:
            prepare_synthetic(cfg, run_dir, dist.is_main)
        if dist.is_main:
            resolved = to_dict(cfg)
            resolved["engine"]["kind"] = kind
            save_yaml(resolved, run_dir / "config.yaml")
        return train(cfg, run_dir, dist, kind, resume=args.resume)


def cli(argv: list[str] | None = None) -> int:
    """`python pretrain/run.py`: a user error (VmrError: a bad config, ...) or a full / read-only disk is one line
    `pretrain/run.py: ...` on stderr and exit 2, like `vmr`. Anything else keeps its traceback (a bug to report)."""
    from retrieval.errors import VmrError

    try:
        main(argv)
    except (VmrError, OSError) as e:  # OSError: disk full, read-only or missing paths; the message names them
        print(f"{PROG}: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(cli())
