"""Try vmr in one command: a synthetic video library, indexed with the embedded demo model, example queries, the app.

The library (default 200 clips of the synthetic test split) and its index are cached under ~/.cache/vmr/demo
and reused on the next run. The app binds to 127.0.0.1 unless --host says otherwise; --no-app stops after
the example queries.
"""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--library", default=None,
                        help="demo library folder (default: a folder per settings under ~/.cache/vmr/demo)")
    parser.add_argument("--videos", type=int, default=200, help="clips in the demo library")
    parser.add_argument("--model", default=None,
                        help="model folder written by retrieval.save_model (default: the embedded demo model)")
    parser.add_argument("--no-app", action="store_true", help="stop after the example queries")
    parser.add_argument("--host", default="127.0.0.1",
                        help="interface the app binds; 0.0.0.0 exposes it to your network")
    parser.add_argument("--port", type=int, default=7860, help="app port")
    parser.add_argument("--seed", type=int, default=0, help="library generation and query choice")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--workers", type=int, default=None, help="decoding processes (default: cores - 1, max 8)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args) -> int:
    from app.demo import run_demo

    return run_demo(videos=args.videos, library=args.library, model=args.model, seed=args.seed,
                    device=args.device, workers=args.workers, progress=not args.no_progress,
                    app=not args.no_app, host=args.host, port=args.port)
