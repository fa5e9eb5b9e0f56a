"""Plot bench_deepspeed_gpu.py's loss curves (steps.json) side by side, plus each run's difference to the torch
engine."""
from __future__ import annotations

import argparse
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("steps", help="steps.json from bench_deepspeed_gpu.py")
    p.add_argument("--size", default="tiny")
    p.add_argument("--kill-at", type=int, default=None, help="mark the preemption step")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    runs = {k.split("_", 1)[1]: v for k, v in json.load(open(args.steps)).items() if k.startswith(args.size + "_")}
    base = {r["step"]: r["loss"] for r in runs.get("torch", [])}
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(8, 6), sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    for name, rows in runs.items():
        steps, loss = [r["step"] for r in rows], [r["loss"] for r in rows]
        style = {"ls": "--"} if name.endswith("resumed") else {}
        line, = ax.plot(steps, loss, lw=0.9, label=name.replace("_resumed", " (SIGTERM + --resume auto)"), **style)
        if name != "torch" and base:
            ax2.plot(steps, [value - base.get(s, float("nan")) for s, value in zip(steps, loss)], lw=0.8,
                     color=line.get_color(), **style)
    if args.kill_at:
        for a in (ax, ax2):
            a.axvline(args.kill_at, color="grey", lw=0.6, ls=":")
    ax.set_ylabel("training loss (VTC + masked-token alignment)")
    ax.legend(fontsize=8)
    ax2.axhline(0, color="black", lw=0.5)
    ax2.set_ylabel("loss - torch engine's")
    ax2.set_xlabel("optimizer step (one seed, same samples in every run)")
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)


if __name__ == "__main__":
    main()
