"""Plot the boundary step of gpu_issue15.sh: the single-pass forward's shipped settings timed against each other
(bench_scan_gpu.py --ab-lanes) over batch sizes, per video, against channel-directions per SM (what the launcher's
rule is keyed on), with the rule's switch."""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from retrieval.kernels import bimamba_scan  # noqa: E402

H100_SMS = 132


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("results", nargs="+", help="bench_scan_gpu.py --ab-lanes --json outputs, one per batch size")
    p.add_argument("--sms", type=int, default=H100_SMS, help="the card's SM count (H100 and H200: 132)")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    lines, device = defaultdict(list), None
    for path in args.results:
        res = json.load(open(path))
        device, shape = res["device"], res["shape"]
        work = shape["dim"] * shape["batch"] * 2 / args.sms
        for row in res["ab_lanes"]:
            label = f"{row['fwd_lanes_states']} states a lane, {row['fwd_lanes_unroll']} chunks per iteration"
            lines[label].append((work, row["fwd_ms"] / shape["batch"] * 1e3))
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, points in sorted(lines.items()):
        ax.plot(*zip(*sorted(points)), "o-", label=label)
    switch = bimamba_scan.TUNING["fwd_lanes_states"][-1][0]
    ax.axvline(switch, color="grey", ls="--", lw=0.6, label=f"the rule switches at {switch}")
    ax.set_xlabel("channel-directions per SM (batch x 384 x 2 / SMs)")
    ax.set_ylabel("forward us per video")
    ax.set_title(f"Inference scan forward at 64 frames (L 12,545), {device}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)


if __name__ == "__main__":
    main()
