"""Pack captioned videos (and images) into WebDataset tar shards for pretraining.

Reads any annotation file `vmr eval` reads (VINDLU/UMT json list of {video|image, caption}, MSRVTT csv or
MSRVTT_data.json, ActivityNet, LSMDC) or a plain folder of name.mp4 + name.txt. Video bytes are stored as they
are unless --max-side/--fps ask for a re-encode; bad or missing files are skipped and listed with reasons in
OUT/report.json. Rerunning after an interruption finishes the missing shards and yields the same shard contents.
"""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--anno", default=None,
                        help="annotation file (json/csv) or a folder of name.mp4 + name.txt (default: --videos itself)")
    parser.add_argument("--videos", required=True, help="folder the annotation's video paths are relative to")
    parser.add_argument("--out", required=True, help="output folder for shard-%%06d.tar and report.json")
    parser.add_argument("--shard-size", type=int, default=1000, help="annotation items per shard")
    parser.add_argument("--workers", type=int, default=1, help="shards written in parallel (same output for any value)")
    parser.add_argument("--max-side", type=int, default=None, help="re-encode videos whose longer side exceeds this")
    parser.add_argument("--fps", type=float, default=None, help="re-encode videos whose frame rate exceeds this")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from pretrain.shards import ShardOptions, read_annotations, write_shards

    items = read_annotations(args.anno, args.videos)
    report = write_shards(items, args.videos, args.out,
                          ShardOptions(shard_size=args.shard_size, max_side=args.max_side, fps=args.fps,
                                       workers=args.workers), progress=not args.quiet)
    print(f"wrote {report['samples']} samples from {report['items']} items into {len(report['shards'])} shards: "
          f"{report['urls']}")
    if report["skipped"]:
        print(f"skipped {len(report['skipped'])} items (reasons in {args.out}/report.json), e.g.:")
        for s in report["skipped"][:5]:
            print(f"  {s['video']}: {s['reason']}")
    return 0
