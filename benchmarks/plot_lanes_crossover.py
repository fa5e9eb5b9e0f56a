"""Plot bench_scan_gpu.py --sweep's lanes_crossover: the single-pass forward's speed-up over the segmented one
against how many of its one-warp programs each SM gets."""
from __future__ import annotations

import argparse
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("result", help="bench_scan_gpu.py --json output of a sweep")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    res = json.load(open(args.result))
    rows = sorted(res["lanes_crossover"], key=lambda r: r["lanes_programs_per_sm"])
    x = [r["lanes_programs_per_sm"] for r in rows]
    y = [r["segmented_ms"] / r["lanes_ms"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(x, y, "o-")
    for r, xi, yi in zip(rows, x, y):
        ax.annotate(f"{r['batch']} x {r['seqlen']}", (xi, yi), textcoords="offset points", xytext=(5, -12),
                    fontsize=8)
    ax.axhline(1.0, color="grey", lw=0.6)
    threshold = res["blocks"]["fwd_lanes_min_programs_per_sm"]
    ax.axvline(threshold, color="grey", ls="--", lw=0.6, label=f"launcher switches at {threshold} per SM")
    ax.set_xscale("log")
    ax.set_xlabel("single-pass programs (one warp each) per SM")
    ax.set_ylabel("segmented ms / single-pass ms")
    ax.set_title(f"Inference scan forward, batch x L, {res['device']}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)


if __name__ == "__main__":
    main()
