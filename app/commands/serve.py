"""Open the search app (Gradio) for an index; binds to 127.0.0.1 unless --host says otherwise.

Example: vmr app --index lib.idx --port 7860
"""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--index", required=True, help="index folder (vmr index build --out)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="interface to bind; 0.0.0.0 exposes the library to your network")
    parser.add_argument("--port", type=int, default=7860, help="port")
    parser.add_argument("--max-k", type=int, default=50, help="largest k the slider offers")
    parser.add_argument("--model", default=None, help="model folder (default: the one the index records)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")


def run(args) -> int:
    from index.searcher import Searcher

    searcher = Searcher(args.index, model=args.model, device=args.device)
    from app.ui import launch

    info = searcher.info()
    print(f"serving {info['segments']} segments of {', '.join(info['roots'])} on http://{args.host}:{args.port}")
    launch(searcher, host=args.host, port=args.port, max_k=args.max_k, block=True)
    return 0
