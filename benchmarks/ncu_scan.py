"""Run the bidirectional scan a few times at VideoMamba-Ti shapes, for a kernel profiler to attach to.

The first call compiles; profile the later ones. With Nsight Compute on the GPU machine (one forward is a summary
launch and an output launch, so skip the first two):

    ncu -k regex:bimamba_fwd --launch-skip 2 --launch-count 2 --section SpeedOfLight --section Occupancy \
        --section WarpStateStats --section SchedulerStats --section SourceCounters python benchmarks/ncu_scan.py
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from benchmarks.bench_scan_gpu import apply_tuning, make_inputs, run_ours


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seqlen", type=int, default=12545, help="1 + 64 frames x 196 patches")
    p.add_argument("--calls", type=int, default=2)
    p.add_argument("--backward", action="store_true", help="forward + backward (default: inference forward)")
    p.add_argument("--tuning", nargs="*", default=[], metavar="KEY=INT",
                   help="override launch settings, e.g. fwd_lanes_unroll=2 (bimamba_scan.TUNING)")
    args = p.parse_args(argv)
    try:
        apply_tuning(args.tuning)
    except ValueError as e:
        p.error(f"--tuning: {e}")
    inp = make_inputs(args.batch, args.seqlen, 384, 16, torch.bfloat16)
    for _ in range(args.calls):
        with torch.set_grad_enabled(args.backward):
            run_ours(inp, args.backward)
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()
