"""Plot VideoMamba-Ti (triton) against the SDPA ViT-Ti, run by run, from bench_gpu_encoder.py --json outputs:
videos/s ratio per frame count, with the issue's targets."""
from __future__ import annotations

import argparse
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

TARGETS = {8: 0.5, 64: 1.0}  # issue 15: >= 0.5x SDPA at 8 frames, >= 1.0x at 64


def ratios(path: str) -> dict[int, float]:
    """{frames: triton videos/s / SDPA videos/s} of one bench_gpu_encoder.py JSON."""
    rows = json.load(open(path))["rows"]
    return {r["frames"]: r["videomamba_tiny_triton"]["videos_per_s"] / r["vit_ti_sdpa"]["videos_per_s"]
            for r in rows if "videomamba_tiny_triton" in r}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("runs", nargs="+", metavar="LABEL=JSON[,JSON]",
                   help="a label and the encoder JSONs of one run (one per frame count, or one for several)")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    labels, points = [], {f: [] for f in TARGETS}
    for run in args.runs:
        label, _, files = run.partition("=")
        found = {}
        for path in files.split(","):
            found.update(ratios(path))
        labels.append(label)
        for f in TARGETS:
            points[f].append(found.get(f, float("nan")))
    fig, axes = plt.subplots(1, len(TARGETS), figsize=(10, 3.8))
    for ax, (frames, target) in zip(axes, TARGETS.items()):
        ax.bar(range(len(labels)), points[frames], color="tab:blue")
        for i, v in enumerate(points[frames]):
            ax.annotate(f"{v:.2f}x", (i, v), textcoords="offset points", xytext=(0, 3), ha="center", fontsize=8)
        ax.axhline(target, color="tab:red", ls="--", lw=1, label=f"target {target}x")
        ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=8)
        ax.set_title(f"{frames} frames")
        ax.set_ylabel("triton v/s / SDPA ViT-Ti v/s")
        ax.legend(loc="lower right", fontsize=8)
    fig.suptitle("VideoMamba-Ti inference against a fused-attention ViT-Ti, one H100 run per bar")
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)


if __name__ == "__main__":
    main()
