"""Build and update the searchable index of a video library (build, add, remove, info).

`build` is resumable: rerun the same command after a crash and it finishes the job. Under torchrun/deepspeed
(RANK, WORLD_SIZE) each rank encodes a share and rank 0 merges; `build --merge --out DIR` merges by hand.
"""
from __future__ import annotations

import argparse
import json
import sys


def _bytes(text: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    t = text.strip().lower().rstrip("b")
    return int(float(t[:-1]) * units[t[-1]]) if t and t[-1] in units else int(t)


def _runtime_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch-size", type=int, default=16, help="segments per forward pass (default: %(default)s)")
    p.add_argument("--workers", type=int, default=None, help="decoding processes (default: cores - 1, max 8)")
    p.add_argument("--device", default="auto", help="auto (default: this rank's GPU, else CPU) | cpu | cuda | cuda:N")
    p.add_argument("--cuda-graphs", action="store_true",
                   help="on a GPU, replay the encoder from CUDA graphs (faster for small models and short clips)")
    p.add_argument("--video-root", default=None,
                   help="folder that list/json entries are relative to (default: the list file's folder)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    fmt = argparse.HelpFormatter  # defaults are written into the help texts (many are "the model's", not a value)

    b = sub.add_parser("build", help="encode a library into a new index (resumes an interrupted build)",
                       formatter_class=fmt)
    b.add_argument("--videos", help="library folder, list file (one path a line) or VINDLU annotation json")
    b.add_argument("--model", help="model folder (retrieval.save_model output)")
    b.add_argument("--out", required=True, help="index folder to create")
    b.add_argument("--segment-seconds", type=float, default=8.0,
                   help="window length; shorter clips are one segment (default: %(default)s)")
    b.add_argument("--stride", type=float, default=None, help="seconds between windows (default: segment length)")
    b.add_argument("--frames", type=int, default=None, help="frames per segment (default: the model's)")
    b.add_argument("--memory-budget", type=_bytes, default="4G",
                   help="RAM the FAISS index may use, e.g. 512M, 8G (default: 4G)")
    b.add_argument("--target-recall", type=float, default=0.95,
                   help="recall@10 vs exact search the ANN index must measure (default: %(default)s)")
    b.add_argument("--merge", action="store_true", help="only merge the ranks' finished parts into --out")
    _runtime_args(b)

    a = sub.add_parser("add", help="index new and changed files (unchanged ones are not re-encoded)",
                       formatter_class=fmt)
    a.add_argument("--index", required=True, help="index folder")
    a.add_argument("--videos", required=True, help="folder, list file or VINDLU json")
    a.add_argument("--model", default=None, help="model folder (default: the one the index records)")
    _runtime_args(a)

    r = sub.add_parser("remove", help="drop files or folders from the index", formatter_class=fmt)
    r.add_argument("--index", required=True, help="index folder")
    r.add_argument("--videos", nargs="*", default=[], metavar="PATH",
                   help="files or folders to drop (absolute, or relative to the cwd or the library root)")
    r.add_argument("--missing", action="store_true", help="drop every indexed file that no longer exists")

    i = sub.add_parser("info", help="model, settings, counts, FAISS type and measured recall", formatter_class=fmt)
    i.add_argument("--index", required=True, help="index folder")
    i.add_argument("--json", action="store_true", help="print JSON")
    i.add_argument("--failures", action="store_true", help="list every file that could not be indexed")


def run(args) -> int:
    from retrieval.errors import UsageError

    if not getattr(args, "action", None):
        raise UsageError("choose an action: build | add | remove | info (see `vmr index --help`)")
    if args.action == "build" and not args.merge and not (args.videos and args.model):
        raise UsageError("build needs --videos and --model (or --merge)")
    if args.action == "remove" and not (args.videos or args.missing):
        raise UsageError("remove needs --videos PATH... and/or --missing")
    return {"build": _build, "add": _add, "remove": _remove, "info": _info}[args.action](args)


def _config(args, **extra):
    from index.ingest import IngestConfig, default_workers

    return IngestConfig(batch_size=args.batch_size, workers=default_workers() if args.workers is None else args.workers,
                        device=args.device, cuda_graphs=args.cuda_graphs, progress=not args.no_progress, **extra)


def _card(model_path):
    """The card of a model folder; None when it has none (or is not a folder `retrieval.save_model` wrote)."""
    from retrieval.model import read_card

    try:
        return read_card(model_path) if model_path else None
    except (OSError, ValueError):  # no config.yaml there: loading the model reports that properly
        return None


def _warn_domain(model_path, roots, command: str) -> None:
    from app.card import domain_warning

    warning = domain_warning(_card(model_path), roots, command)
    if warning:
        print(warning, file=sys.stderr)


def _build(args) -> int:
    from app.card import library_root
    from index import ingest
    from index.update import merge

    if args.merge:
        _print_commit(merge(args.out), args.out)
        return 0
    cfg = _config(args, segment_seconds=args.segment_seconds, stride=args.stride, frames=args.frames,
                  memory_budget=args.memory_budget, target_recall=args.target_recall)
    _warn_domain(args.model, [library_root(args.videos, args.video_root)], "index build")
    report = ingest.build(args.videos, args.out, model_path=args.model, config=cfg, video_root=args.video_root)
    return _print_report(report, args.out)


def _add(args) -> int:
    from app.card import library_root
    from index import ingest

    model_path = args.model or ingest.info(args.index)["model_path"]
    _warn_domain(model_path, [library_root(args.videos, args.video_root)], "index add")
    report = ingest.add(args.index, args.videos, model_path=args.model, config=_config(args),
                        video_root=args.video_root)
    return _print_report(report, args.index)


def _remove(args) -> int:
    from index.update import remove

    result, unmatched = remove(args.index, args.videos, args.missing)
    for path in unmatched:
        print(f"not in the index: {path}", file=sys.stderr)
    print(f"removed {result.files_removed} files ({result.segments_removed} segments); "
          f"{result.segments_total} segments remain (version {result.version})")
    return 0


def _print_report(report, index_dir) -> int:
    print(f"{report.found} videos found: {report.encoded} encoded ({report.segments} segments), "
          f"{report.skipped} already indexed, {report.checkpointed} from an interrupted run, "
          f"{report.unchanged} touched but unchanged, {report.known_bad} known unreadable; {report.seconds:.1f}s")
    if report.failures:
        print(f"{len(report.failures)} files could not be indexed:")
        for path, reason in report.failures[:20]:
            print(f"  {path}: {reason}")
        if len(report.failures) > 20:
            print(f"  ... and {len(report.failures) - 20} more (`vmr index info --index {index_dir} --failures`)")
    if report.commit is not None:
        _print_commit(report.commit, index_dir)
    elif report.world > 1:
        print(f"rank {report.rank}: part written; rank 0 merges it")
    indexed = report.encoded + report.skipped + report.checkpointed + report.unchanged
    return 1 if report.failures and not indexed else 0  # exit 1 only when nothing at all could be indexed


def _print_commit(result, index_dir) -> None:
    ix = result.index or {}
    what = (f"{ix.get('factory')}" + ("" if ix.get("exact", True) else
                                        f", nprobe={ix.get('nprobe')}, measured recall@10={ix.get('recall_at_10')}"))
    print(f"index {index_dir}: version {result.version}, {result.segments_total} segments "
          f"(+{result.segments_added} -{result.segments_removed}); FAISS {what}")


def _info(args) -> int:
    from app.card import as_dict, card_lines
    from index.ingest import info

    data = info(args.index)
    card = _card(data["model_path"])
    if args.json:
        if not args.failures:
            data.pop("failures_list")
        print(json.dumps({**data, "card": as_dict(card)}, indent=2))
        return 0
    fx = data["faiss"]
    print(f"index:     {data['index_dir']} (version {data['version']}, {data['disk_bytes'] / 2**20:.1f} MiB on disk)")
    print(f"model:     {data['model_id']}  ({data['model_path']})")
    print("settings:  " + ", ".join(f"{k}={v}" for k, v in data["settings"].items()))
    print("libraries: " + ", ".join(data["roots"]))
    print(f"contents:  {data['files']} videos, {data['segments']} segments, {data['failures']} failures")
    if fx.get("kind"):
        recall = "exact" if fx.get("exact") else (f"nprobe={fx.get('nprobe')}, recall@10={fx.get('recall_at_10')} "
                                                  f"measured on {fx.get('recall_queries')} stored vectors")
        print(f"faiss:     {fx.get('factory')} ({fx.get('bytes', 0) / 2**20:.1f} MiB), {recall}")
    print("card:      " + card_lines(None)[0] if card is None else "\n".join(["card:", *card_lines(card)]))
    if data["pending_checkpoints"]:
        print(f"pending:   {data['pending_checkpoints']} encoded files not merged yet (rerun the build or "
              "`vmr index build --merge`)")
    if args.failures:
        for path, reason in data["failures_list"]:
            print(f"  {path}: {reason}")
    return 0
