"""CPU timing of the selective-scan backends (ref, torch, mambapy pscan) at the VideoMamba-tiny shape, as Markdown."""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from retrieval.selective_scan import selective_scan_fn, selective_scan_ref  # noqa: E402


def make_inputs(batch: int, dim: int, dstate: int, seqlen: int, seed: int = 0) -> dict:
    """Inputs shaped and laid out like BiMambaMixer's: delta and z are (B, D, L) views of time-major buffers."""
    g = torch.Generator().manual_seed(seed)
    dt = torch.exp(torch.rand(dim, generator=g) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))

    def time_major(*shape):  # (B, L, D) buffer seen as (B, D, L), as after rearrange "b l d -> b d l"
        return torch.randn(shape[0], shape[2], shape[1], generator=g).transpose(1, 2)

    return dict(
        u=torch.randn(batch, dim, seqlen, generator=g),  # causal conv output: contiguous (B, D, L)
        delta=time_major(batch, dim, seqlen) * 0.5,
        A=-torch.arange(1, dstate + 1.0).repeat(dim, 1),  # -exp(A_log) at init
        B=torch.randn(batch, dstate, seqlen, generator=g),
        C=torch.randn(batch, dstate, seqlen, generator=g),
        D=torch.ones(dim),
        z=time_major(batch, dim, seqlen),
        delta_bias=dt + torch.log(-torch.expm1(-dt)),  # dt_proj.bias at init
    )


def mambapy_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """The same op built on mambapy's Blelloch parallel scan, as mambapy's own selective_scan does it."""
    from mambapy.pscan import pscan

    if delta_bias is not None:
        delta = delta + delta_bias[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    dT = delta.transpose(1, 2)  # (B, L, D)
    decay = torch.exp(dT.unsqueeze(-1) * A)  # (B, L, D, N)
    drive = (dT * u.transpose(1, 2)).unsqueeze(-1) * B.transpose(1, 2).unsqueeze(2)  # (B, L, D, N)
    hs = pscan(decay, drive)  # (B, L, D, N)
    y = (hs @ C.transpose(1, 2).unsqueeze(-1)).squeeze(-1).transpose(1, 2)  # (B, D, L)
    if D is not None:
        y = y + u * D[:, None]
    if z is not None:
        y = y * F.silu(z)
    return y


BACKENDS = {
    "ref": lambda **kw: selective_scan_ref(**kw),
    "torch": lambda **kw: selective_scan_fn(**kw, backend="torch"),
    "mambapy": mambapy_scan,
}


def time_calls(fn, repeats: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def run_backend(name: str, inputs: dict, grad_out: torch.Tensor, repeats: int, warmup: int):
    fn = BACKENDS[name]

    def forward():
        with torch.no_grad():
            return fn(**inputs, delta_softplus=True)

    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in inputs.items()}

    def forward_backward():
        y = fn(**leaves, delta_softplus=True)
        return torch.autograd.grad((y * grad_out).sum(), list(leaves.values()))

    fwd = time_calls(forward, repeats, warmup)
    fwd_bwd = time_calls(forward_backward, repeats, warmup)
    return fwd, fwd_bwd, forward(), dict(zip(leaves, forward_backward()))


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--dim", type=int, default=384, help="d_inner (VideoMamba-tiny: 2 x 192)")
    p.add_argument("--dstate", type=int, default=16)
    p.add_argument("--seqlen", type=int, default=1569, help="8 frames x 196 patches + cls")
    p.add_argument("--repeats", type=int, default=10, help="timed calls per fast backend (ref: 1)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--backends", default="ref,torch,mambapy")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    inputs = make_inputs(args.batch, args.dim, args.dstate, args.seqlen)
    grad_out = torch.randn(args.batch, args.dim, args.seqlen, generator=torch.Generator().manual_seed(1))
    names = [n.strip() for n in args.backends.split(",") if n.strip()]
    results = {}
    for name in names:
        slow = name == "ref"  # seconds per call at this length: one timed call, no warm-up
        results[name] = run_backend(name, inputs, grad_out, 1 if slow else args.repeats, 0 if slow else args.warmup)
        print(f"# {name} done", file=sys.stderr, flush=True)

    print(f"Selective scan, B={args.batch} D={args.dim} N={args.dstate} L={args.seqlen}, fp32, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}\n")
    print("| backend | forward ms (median / min) | fwd+bwd ms (median / min) | fwd speed-up vs ref "
          "| fwd+bwd speed-up vs ref | max rel err y / grads vs ref |")
    print("|---|---|---|---|---|---|")
    ref = results.get("ref")
    for name, (fwd, fwd_bwd, y, grads) in results.items():
        sp_f = sp_b = err = "-"
        if ref is not None and name != "ref":
            sp_f = f"{statistics.median(ref[0]) / statistics.median(fwd):.1f}x"
            sp_b = f"{statistics.median(ref[1]) / statistics.median(fwd_bwd):.1f}x"
            err = f"{rel_err(y, ref[2]):.1e} / {max(rel_err(grads[k], ref[3][k]) for k in grads):.1e}"
        print(f"| {name} | {statistics.median(fwd):.1f} / {min(fwd):.1f} | "
              f"{statistics.median(fwd_bwd):.1f} / {min(fwd_bwd):.1f} | {sp_f} | {sp_b} | {err} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
