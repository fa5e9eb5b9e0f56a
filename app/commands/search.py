"""Search an index with a text query; prints a ranked table (or JSON).

Example: vmr search --index lib.idx "a dog catches a frisbee" -k 5
"""
from __future__ import annotations

import argparse
import json
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("query", nargs="+", help="what to look for (words are joined; quoting is optional)")
    parser.add_argument("--index", required=True, help="index folder (vmr index build --out)")
    parser.add_argument("-k", type=int, default=10, help="results to show")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--segments", action="store_true", help="rank segments instead of one row per video")
    parser.add_argument("--threshold", type=float, default=None, help="drop results scoring below this")
    parser.add_argument("--model", default=None, help="model folder (default: the one the index records)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--rerank", type=int, default=0, metavar="K",
                        help="re-score the top K with the model's matching (ITM) head (release models; re-decodes "
                             "those K segments). 0 = off")


def run(args) -> int:
    from app.ui import clock
    from index.errors import IndexCorruptError, IndexMissingError, ModelMismatchError
    from index.searcher import Searcher
    from retrieval.data.video import VideoError

    try:
        searcher = Searcher(args.index, model=args.model, device=args.device)
        hits = searcher.search(" ".join(args.query), k=max(args.k, args.rerank), group_by_video=not args.segments,
                               threshold=args.threshold)
        if args.rerank:
            from index.rerank import rerank_hits

            hits = rerank_hits(searcher, " ".join(args.query), hits, args.rerank)[:args.k]
    except (IndexMissingError, IndexCorruptError, ModelMismatchError, ValueError, VideoError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps([h.to_dict() for h in hits], indent=2))
        return 0
    if not hits:
        print("no results")
        return 0
    width = min(max(len(h.path) for h in hits), 70)
    if args.rerank:
        print(f"scores: ITM match logits for the top {args.rerank} (re-ranked), similarity below them")
    print(f"{'rank':>4}  {'score':>6}  {'video':<{width}}  segment")
    for h in hits:
        more = f"  (+{len(h.segments) - 1} more)" if len(h.segments) > 1 else ""
        print(f"{h.rank:>4}  {h.score:6.3f}  {h.path:<{width}}  {clock(h.start)}-{clock(h.end)}{more}")
    return 0
