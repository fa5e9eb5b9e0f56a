"""GPU timing of the Triton mixer's projections at VideoMamba-Ti shapes, each as the model runs it and in other
layouts, to see whether cuBLAS picks a slower kernel for the model's layout (the encoder profile shows Ampere-era
`cutlass_80 ... align2` kernels for in_proj and out_proj on an H100).

    python benchmarks/bench_proj_gemm_gpu.py --frames 8 --batch 64

Prints a Markdown table: ms per call, and the HBM traffic each GEMM needs at least, as a share of the card's peak.
"""
from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F

from benchmarks.bench_scan_gpu import PEAK_BYTES_S, timed

D_MODEL, D_INNER, DT_RANK, D_STATE = 192, 384, 12, 16


def cases(tokens: int) -> dict:
    """name -> (fn, least bytes moved). The first of each projection is the model's own call (mamba.py)."""
    g = torch.Generator(device="cuda").manual_seed(0)
    r = lambda *s: torch.randn(*s, device="cuda", generator=g, dtype=torch.bfloat16)  # noqa: E731
    hidden, w_in = r(tokens, D_MODEL), r(2 * D_INNER, D_MODEL)
    y, w_out = r(tokens, 2 * D_INNER), r(D_MODEL, 2 * D_INNER)
    u, x_w = r(2, tokens, D_INNER), r(2, DT_RANK + 2 * D_STATE, D_INNER)
    x_dbl, dt_w = r(2, tokens, DT_RANK + 2 * D_STATE), r(2, D_INNER, DT_RANK)
    w_in_t, w_out_t = w_in.t().contiguous(), w_out.t().contiguous()
    dt_in = x_dbl[..., :DT_RANK]
    b = 2  # bytes per bf16
    in_bytes = tokens * (D_MODEL + 2 * D_INNER) * b
    out_bytes = tokens * (2 * D_INNER + D_MODEL) * b
    x_bytes = 2 * tokens * (D_INNER + DT_RANK + 2 * D_STATE) * b
    dt_bytes = 2 * tokens * (DT_RANK + D_INNER) * b
    return {
        "in_proj: F.linear (model)": (lambda: F.linear(hidden, w_in), in_bytes),
        "in_proj: x @ W^T contiguous": (lambda: hidden @ w_in_t, in_bytes),
        "out_proj: F.linear, K = 2 Di (model)": (lambda: F.linear(y, w_out), out_bytes),
        "out_proj: y @ W^T contiguous": (lambda: y @ w_out_t, out_bytes),
        "x_proj: bmm (model)": (lambda: torch.bmm(u, x_w.transpose(1, 2)), x_bytes),
        "dt_proj: bmm on the strided view (model)": (lambda: torch.bmm(dt_in, dt_w.transpose(1, 2)), dt_bytes),
        "dt_proj: bmm on a contiguous copy (copy included)": (
            lambda: torch.bmm(dt_in.contiguous(), dt_w.transpose(1, 2)), dt_bytes),
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--json", help="write results here")
    args = p.parse_args(argv)
    tokens = args.batch * (1 + args.frames * 196)
    name = torch.cuda.get_device_name()
    peak = next((v for k, v in PEAK_BYTES_S.items() if k in name), PEAK_BYTES_S["H200"])
    rows = []
    for lib in ("cublas", "cublaslt"):
        torch.backends.cuda.preferred_blas_library(lib)
        for case, (fn, nbytes) in cases(tokens).items():
            ms = timed(fn, args.repeats, warmup=5) * 1e3
            rows.append({"blas": lib, "case": case, "ms": ms, "frac_peak_bw": nbytes / (ms / 1e3) / peak})
    torch.backends.cuda.preferred_blas_library("default")
    print(f"\n{name}, {args.frames} frames x batch {args.batch} ({tokens} tokens), bf16\n")
    print("| projection | cuBLAS ms | cuBLASLt ms | least traffic at peak, cuBLAS |\n|---|---|---|---|")
    for case in dict.fromkeys(r["case"] for r in rows):
        a, lt = (next(r for r in rows if r["case"] == case and r["blas"] == lib) for lib in ("cublas", "cublaslt"))
        print(f"| {case} | {a['ms']:.4f} | {lt['ms']:.4f} | {a['frac_peak_bw']:.0%} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": name, "frames": args.frames, "batch": args.batch, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
