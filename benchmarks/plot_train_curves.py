"""Plot bench_train.py --curve-steps loss curves (one per scan backend) and each backend's difference to the first."""
from __future__ import annotations

import argparse
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("result", help="bench_train.py --json output with curves")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    curves = json.load(open(args.result))["curves"]
    fig, axes = plt.subplots(2, len(curves), figsize=(8 * len(curves), 6), squeeze=False,
                             gridspec_kw={"height_ratios": [2, 1]})
    for col, (model, c) in enumerate(curves.items()):
        ax, ax2 = axes[0, col], axes[1, col]
        losses = c["losses"]
        ref_name = c["compare"]["reference"]
        ref = losses[ref_name]
        for name, loss in losses.items():
            line, = ax.plot(range(1, len(loss) + 1), loss, lw=0.9, label=f"scan backend {name}")
            if name != ref_name:
                ax2.plot(range(1, len(loss) + 1), [a - b for a, b in zip(loss, ref)], lw=0.8, color=line.get_color())
        ax.set_title(f"{model}, VTC + MVM: loss from one seed")
        ax.set_ylabel("loss")
        ax.legend()
        ax2.axhline(0, color="grey", lw=0.5)
        ax2.set_ylabel(f"difference to {ref_name}")
        ax2.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)


if __name__ == "__main__":
    main()
