"""The bidirectional depthwise conv's forward (retrieval/kernels/biconv.py) on the GPU: block sizes swept at
VideoMamba-Ti shapes, each against the HBM floor and checked against the float64 reference (biconv1d_ref).

x is the first half of in_proj's (B, L, 768) bf16 output, as in the model; one call writes both directions.

    python benchmarks/bench_biconv_gpu.py --json biconv.json
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from benchmarks.bench_scan_gpu import card_peaks, settings, timed
from retrieval.kernels import biconv
from retrieval.kernels.biconv import biconv1d_fn, biconv1d_ref

SHAPES = ((64, 1569), (8, 12545))  # 8 and 64 frames: batch x tokens
BT, BD, WARPS = (16, 32, 64), (32, 64, 128, 256), (2, 4, 8)


def sweep(batch: int, seqlen: int, dim: int = 384, width: int = 4, repeats: int = 20) -> list[dict]:
    g = torch.Generator("cuda").manual_seed(0)
    xz = torch.randn(batch, seqlen, 2 * dim, device="cuda", generator=g).bfloat16()
    x = xz[..., :dim]
    w = torch.randn(2, dim, width, device="cuda", generator=g) * 0.3
    b = torch.randn(2, dim, device="cuda", generator=g) * 0.1
    nbytes = batch * seqlen * dim * 2 * 3  # read x once, write both directions
    peak_bytes, _ = card_peaks()
    shipped = biconv.TUNING["fwd_block"]
    with torch.no_grad():
        ref = biconv1d_ref(x.double(), w.double(), b.double())
    rows = []
    blocks = [c for c in itertools.product(BT, BD, WARPS) if 4 <= c[0] * c[1] // (32 * c[2]) <= 64]  # values/thread
    for bt, bd, warps in blocks + [tuple(shipped)] * (tuple(shipped) not in blocks):
        biconv.TUNING["fwd_block"] = (bt, bd, warps)
        with torch.no_grad():
            ms = timed(lambda: biconv1d_fn(x, w, b), repeats) * 1e3
            err = ((biconv1d_fn(x, w, b).double() - ref).abs().max() / ref.abs().max()).item()  # bf16 out
        rows.append({"batch": batch, "seqlen": seqlen, "block": [bt, bd, warps], "ms": ms,
                     "frac_peak_bw": nbytes / (ms / 1e3) / peak_bytes, "max_rel_err_vs_ref": err,
                     "shipped": (bt, bd, warps) == tuple(shipped)})
        print(rows[-1], flush=True)
    biconv.TUNING["fwd_block"] = shipped
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", help="write the rows here")
    p.add_argument("--save-blocks", help="write the kernel settings with the fastest block at 8 frames (the format "
                                         "of bench_scan_gpu.py --save-blocks, which bench_gpu_encoder.py loads)")
    args = p.parse_args(argv)
    rows = [r for batch, seqlen in SHAPES for r in sweep(batch, seqlen)]
    print(f"\n{torch.cuda.get_device_name()}, bf16\n\n| batch x L | shipped block ms | best block | best ms | "
          "best / shipped | best, share of peak HBM |\n|---|---|---|---|---|---|")
    for batch, seqlen in SHAPES:
        shape = [r for r in rows if (r["batch"], r["seqlen"]) == (batch, seqlen)]
        ship, best = next(r for r in shape if r["shipped"]), min(shape, key=lambda r: r["ms"])
        print(f"| {batch} x {seqlen} | {ship['ms']:.3f} | {tuple(best['block'])} | {best['ms']:.3f} | "
              f"{ship['ms'] / best['ms']:.2f}x | {best['frac_peak_bw']:.0%} |")
    if args.save_blocks:
        eight = [r for r in rows if (r["batch"], r["seqlen"]) == SHAPES[0]]
        biconv.TUNING["fwd_block"] = tuple(min(eight, key=lambda r: r["ms"])["block"])
        with open(args.save_blocks, "w") as f:
            json.dump(settings(), f)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
