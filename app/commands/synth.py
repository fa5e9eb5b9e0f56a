"""Generate the synthetic captioned-video world: procedural mp4s plus a VINDLU-style annotations.json.

Splits: train (held-out colour-shape-motion triples excluded, 2-3 captions per video), test (only held-out
triples, one caption each, every attribute tuple unique) and temporal (pairs of videos that differ only in
time: reversed playback or swapped event order, with the twin's caption recorded).
"""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output folder (gets videos/ and annotations.json)")
    parser.add_argument("--videos", type=int, default=200, help="number of videos (even for --split temporal)")
    parser.add_argument("--split", choices=("train", "test", "temporal"), default="train")
    parser.add_argument("--seed", type=int, default=0, help="same seed and arguments give identical output")
    parser.add_argument("--size", type=int, default=224, help="frame side in pixels (even)")
    parser.add_argument("--frames", type=int, default=32, help="frames per video")
    parser.add_argument("--fps", type=float, default=8, help="frame rate written into the mp4")
    parser.add_argument("--paraphrase", choices=("template", "unseen"), default="template",
                        help="caption wording: the fixed template vocabulary, or synonyms never used in it")
    parser.add_argument("--workers", type=int, default=1, help="processes rendering in parallel (output unchanged)")


def run(args: argparse.Namespace) -> int:
    from pretrain.synth import generate

    records = generate(args.out, args.videos, args.split, seed=args.seed, size=args.size, frames=args.frames,
                       fps=args.fps, paraphrase=args.paraphrase, workers=args.workers)
    print(f"wrote {len(records)} {args.split} videos to {args.out}/videos and {args.out}/annotations.json")
    return 0
