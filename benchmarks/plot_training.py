"""Plot a pretraining run's loss (RUN/steps.jsonl) and zero-shot R@1 checkpoints into a PNG for BENCHMARKS.md."""
from __future__ import annotations

import argparse
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("steps", help="RUN/steps.jsonl")
    p.add_argument("--val", nargs="*", default=[], help="step:R@1 pairs from the run log")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    rows = [json.loads(line) for line in open(args.steps, encoding="utf-8")]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], lw=0.8, color="tab:blue", label="VTC loss")
    ax.set_xlabel("optimizer step (batch 256)")
    ax.set_ylabel("loss", color="tab:blue")
    ax.set_yscale("log")
    if args.val:
        pts = [tuple(map(float, v.split(":"))) for v in args.val]
        ax2 = ax.twinx()
        ax2.plot([s for s, _ in pts], [r for _, r in pts], "o-", color="tab:red", label="held-out R@1")
        ax2.set_ylabel("text-to-video R@1 (%), 1000 held-out videos", color="tab:red")
        ax2.set_ylim(0, 100)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)


if __name__ == "__main__":
    main()
