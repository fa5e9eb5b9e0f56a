"""CPU inference benchmark of the whole VideoMamba encoder: `torch` scan backend vs the sequential `ref`."""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

from retrieval import create_video_encoder


def time_forward(model, x, backend: str, repeats: int) -> list[float]:
    os.environ["VMR_SCAN_BACKEND"] = backend
    times = []
    with torch.inference_mode():
        model(x)  # warm-up (allocations, thread pools)
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t0)
    return times


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default="videomamba_tiny")
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--ref-repeats", type=int, default=1, help="the sequential reference is slow")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = create_video_encoder(args.model, num_frames=args.frames, img_size=args.size).eval()
    x = torch.randn(args.batch, 3, args.frames, args.size, args.size)
    fast = time_forward(model, x, "torch", args.repeats)
    with torch.inference_mode():
        os.environ["VMR_SCAN_BACKEND"] = "torch"
        a = model(x)
        os.environ["VMR_SCAN_BACKEND"] = "ref"
        b = model(x)
    ref = time_forward(model, x, "ref", args.ref_repeats)
    t_fast, t_ref = statistics.median(fast), statistics.median(ref)
    rel = ((a - b).abs().max() / b.abs().max()).item()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}")
    print(f"{args.model}, {args.frames} frames, {args.size} px, batch {args.batch}, inference fp32\n")
    print("| backend | s per clip (median) | repeats | speed-up vs ref |")
    print("|---|---|---|---|")
    print(f"| torch | {t_fast / args.batch:.3f} | {len(fast)} | {t_ref / t_fast:.1f}x |")
    print(f"| ref | {t_ref / args.batch:.3f} | {len(ref)} | 1.0x |")
    print(f"\noutput max relative difference torch vs ref: {rel:.2e}")


if __name__ == "__main__":
    main()
