"""Search an index with a text query, or with a clip (--like): prints a ranked table (or JSON).

A score is the cosine similarity of the query's and the segment's embeddings, from -1 to 1 (higher is closer);
its scale depends on the model, so compare scores within one search. Examples:
vmr search --index lib.idx "a dog catches a frisbee" -k 5;  vmr search --index lib.idx --like clip.mp4@0:10-0:18
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("query", nargs="*", help="what to look for (words are joined; quoting is optional)")
    parser.add_argument("--like", metavar="VIDEO[@START-END]", default=None,
                        help="search by example: segments that look like this clip (START-END in seconds or m:ss; "
                             "default the whole file); the clip's own indexed segments are left out")
    parser.add_argument("--index", required=True, help="index folder (vmr index build --out)")
    parser.add_argument("-k", type=int, default=10, help="results to show")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--segments", action="store_true", help="rank segments instead of one row per video")
    parser.add_argument("--all-segments", action="store_true",
                        help="under each video, list every matching segment instead of counting them")
    parser.add_argument("--threshold", type=float, default=None,
                        help="drop results scoring below this (a cosine similarity, -1..1)")
    parser.add_argument("--model", default=None, help="model folder (default: the one the index records)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--rerank", type=int, default=0, metavar="K",
                        help="re-score the top K with the model's matching (ITM) head (release models; re-decodes "
                             "those K segments). 0 = off")


def parse_like(text: str) -> tuple[str, float | None, float | None]:
    """"clip.mp4", "clip.mp4@12-20" or "clip.mp4@0:12-0:20" -> (path, start, end); ValueError when malformed."""
    from retrieval.errors import UsageError

    path, sep, span = text.rpartition("@")
    if not sep or os.path.isfile(text):
        return text, None, None
    m = re.fullmatch(r"\s*([\d.:]+)\s*-\s*([\d.:]+)\s*", span)
    try:
        return path, _seconds(m.group(1)), _seconds(m.group(2))
    except (AttributeError, ValueError):
        raise UsageError(f"--like {text}: START-END must be seconds or m:ss, e.g. clip.mp4@12-20 or "
                         "clip.mp4@0:12-0:20") from None


def _seconds(text: str) -> float:
    parts = text.strip().split(":")
    if not 1 <= len(parts) <= 3 or not all(parts):
        raise ValueError(text)
    value = 0.0
    for p in parts:
        value = value * 60 + float(p)
    return value


def run(args) -> int:
    from app.card import domain_warning
    from app.table import hits_table
    from index.searcher import Searcher, check_clip
    from retrieval.errors import UsageError

    text = " ".join(args.query).strip()
    if text and args.like:
        raise UsageError("give a text query or --like VIDEO[@START-END], not both")
    if args.rerank and args.like:
        raise UsageError("--rerank re-scores text queries; it does not apply to --like")
    like = parse_like(args.like) if args.like else None
    if like:
        check_clip(*like)  # a bad clip is reported before the model loads
    searcher = Searcher(args.index, model=args.model, device=args.device)
    warning = domain_warning(getattr(searcher.model, "card", None), searcher.roots(), "search")
    if warning:
        print(warning, file=sys.stderr)
    opts = dict(k=max(args.k, args.rerank), group_by_video=not args.segments, threshold=args.threshold)
    hits = searcher.search_video(*like, **opts) if like else searcher.search(text, **opts)
    if args.rerank:
        from index.rerank import rerank_hits

        hits = rerank_hits(searcher, text, hits, args.rerank)
    hits = hits[:args.k]
    if args.json:
        print(json.dumps([h.to_dict() for h in hits], indent=2))
        return 0
    if args.rerank and hits:
        print(f"scores: ITM match logits for the top {args.rerank} (re-ranked), cosine similarity below them")
    print("\n".join(hits_table(hits, all_segments=args.all_segments,
                               more_hint="" if args.all_segments else "(--all-segments lists them)")))
    return 0
