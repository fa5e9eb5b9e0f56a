"""Compile the bimamba scan and conv kernels for a GPU on a machine without one and count their SASS instructions.

Captures the arguments the real launcher (retrieval.kernels.bimamba_scan) passes at VideoMamba-Ti shapes, compiles
each launch with Triton's own specialisation (ints equal to 1 become constants, multiples of 16 get divisibility
hints, pointers are 16-byte aligned) for `--arch` (default sm_90), and prints per kernel: registers, spills and the
instructions of every loop body (one step of the scan; an unrolled loop shows several steps). Use the Triton version
the GPU machine runs (PYTHONPATH=folder-with-that-triton): register counts differ between versions.

    PYTHONPATH=/tmp/triton36 python benchmarks/triton_sass.py --frames 64 --batch 8
"""
from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import triton
from triton._C.libtriton import native_specialize_impl
from triton.backends.compiler import BaseBackend, GPUTarget
from triton.compiler import ASTSource

from benchmarks.bench_scan_gpu import apply_tuning
from retrieval.kernels import _biconv_triton as KC
from retrieval.kernels import _bimamba_lanes_triton as KL
from retrieval.kernels import _bimamba_triton as K
from retrieval.kernels import bimamba_scan as bs
from retrieval.kernels.biconv import _BiConv
from retrieval.kernels.bimamba_scan import _BiMambaScan

DTYPES = {torch.bfloat16: "bf16", torch.float32: "fp32", torch.float16: "fp16"}


class _Capture:
    """Stands in for a @triton.jit kernel: records each launch instead of running it."""

    def __init__(self, fn, launches):
        self.fn, self.launches = fn, launches

    def __getitem__(self, grid):
        return lambda *args, **kw: self.launches.append((self.fn, grid, args, kw))


def capture_launches(batch: int, seqlen: int, dim: int = 384, dstate: int = 16) -> list:
    """The kernel launches of a forward with grad, one without (the lanes kernel where the launcher picks it) and a
    backward at these shapes, on CPU stand-ins; then the depthwise conv's forward and backward."""
    launches = []
    real = {(mod, n): getattr(mod, n) for mod, n in ((K, "bimamba_fwd_kernel"), (K, "bimamba_bwd_kernel"),
                                                      (KL, "bimamba_fwd_lanes_kernel"), (KC, "biconv_fwd_kernel"),
                                                      (KC, "biconv_bwd_pre_kernel"), (KC, "biconv_bwd_kernel"))}
    for (mod, n), fn in real.items():
        setattr(mod, n, _Capture(fn, launches))
    try:
        bf = torch.bfloat16
        xdbl = torch.zeros(2, batch * seqlen, 2 * dstate + 12, dtype=bf)  # B, C as x_proj's strided views
        u = torch.zeros(2, batch, seqlen, dim, dtype=bf)
        B = xdbl[..., 12:12 + dstate].view(2, batch, seqlen, dstate)
        C = xdbl[..., 12 + dstate:].view(2, batch, seqlen, dstate)

        class Ctx:
            needs_input_grad = [True] * 9

            def save_for_backward(self, *tensors):
                self.saved_tensors = tensors

        ctx = Ctx()
        inputs = (u, u.clone(), torch.zeros(2, dim, dstate), B, C, torch.zeros(2, dim),
                  torch.zeros(batch, seqlen, dim, dtype=bf), torch.zeros(2, dim), True)
        _BiMambaScan.forward(ctx, *inputs)  # with grad: saves the chunk states the backward reads
        ctx.needs_input_grad = [False] * 9
        _BiMambaScan.forward(ctx, *inputs)  # the inference forward too (saves nothing)
        _BiMambaScan.backward(ctx, torch.zeros(batch, seqlen, 2, dim, dtype=bf))
        x = torch.zeros(batch, seqlen, 2 * dim, dtype=bf)[..., :dim]  # in_proj's first half, as the mixer passes it
        _BiConv.forward(ctx, x, torch.zeros(2, dim, 4), torch.zeros(2, dim))
        _BiConv.backward(ctx, torch.zeros(2, batch, seqlen, dim, dtype=bf))
    finally:
        for (mod, n), fn in real.items():
            setattr(mod, n, fn)
    return launches


def compile_launch(fn, args, kw, arch: int):
    kw = dict(kw)
    options = {"num_warps": kw.pop("num_warps", 4), "num_stages": kw.pop("num_stages", 3)}
    if "maxnreg" in kw:
        options["maxnreg"] = kw.pop("maxnreg")
    values = dict(zip([n for n in fn.arg_names if n not in kw], args), **kw)
    signature, constexprs, attrs = {}, {}, {}
    for i, (name, param) in enumerate(zip(fn.arg_names, fn.params)):
        v = values[name] if name in values else param.default  # a defaulted constexpr left out
        if param.is_constexpr:
            signature[name], constexprs[(i,)] = "constexpr", v
        elif isinstance(v, torch.Tensor):
            signature[name], attrs[(i,)] = "*" + DTYPES[v.dtype], [["tt.divisibility", 16]]
        elif isinstance(v, int) and not param.do_not_specialize:
            kind, key = native_specialize_impl(BaseBackend, v, False, True, True)
            signature[name] = kind
            if kind == "constexpr":
                constexprs[(i,)] = v
            elif key == "D":
                attrs[(i,)] = [["tt.divisibility", 16]]
        else:
            signature[name] = "i32"
    src = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)


def control(high: int) -> str:
    """The scheduling fields ptxas puts in bits 105-125 of a Volta-to-Hopper instruction (high: its upper 64 bits):
    stall cycles, the scoreboard a variable-latency op sets (write, read) and the scoreboards it waits for. A wait
    on a scoreboard waits for every op still pending on it."""
    c = high >> 41
    sb = lambda v: "-" if v == 7 else str(v)  # noqa: E731
    waits = "".join(str(b) for b in range(6) if c >> (11 + b) & 1)
    return f"stall {c & 15:2d} set w{sb(c >> 5 & 7)} r{sb(c >> 8 & 7)} wait [{waits:<6}]"


def sass_report(compiled) -> tuple[str, list[tuple[int, collections.Counter, list[str]]]]:
    """(resource line, [(instructions, opcode counts, listing with control fields) per loop body]) from cuobjdump."""
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "k.cubin"
        cubin.write_bytes(compiled.asm["cubin"])
        sass = subprocess.run([tool, "-sass", cubin], capture_output=True, text=True, check=True).stdout
        res = subprocess.run([tool, "-res-usage", cubin], capture_output=True, text=True, check=True).stdout
    resources = re.search(r"REG:\d+.*?LOCAL:\d+", res).group(0)
    code = [(int(a, 16), op, int(hi, 16)) for a, op, hi in
            re.findall(r"/\*([0-9a-f]{4,})\*/\s+([^;]*);\s*/\* 0x[0-9a-f]+ \*/\s*/\* (0x[0-9a-f]+) \*/", sass)]
    loops = []
    for addr, op, _ in code:
        m = re.search(r"BRA\s+(?:`\(\.L_x_\d+\)|0x([0-9a-f]+))", op)
        if m and m.group(1) and int(m.group(1), 16) < addr:  # a backward branch closes a loop
            body = [(a, o, hi) for a, o, hi in code if int(m.group(1), 16) <= a <= addr]
            ops = collections.Counter(re.sub(r"^@!?U?P\w+\s+", "", o).split()[0] for _, o, _ in body)
            loops.append((len(body), ops, [f"{a:05x}  {control(hi)}  {o}" for a, o, hi in body]))
    return resources, loops


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, default=64)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--arch", type=int, default=90, help="compute capability x 10 (90: H100/H200)")
    p.add_argument("--top", type=int, default=10, help="opcodes listed per loop")
    p.add_argument("--sms", type=int, default=132, help="SMs the launcher sizes its grids for (132: H100/H200 SXM)")
    p.add_argument("--control", metavar="NAME",
                   help="list the longest loop of kernels whose name contains NAME with ptxas's scheduling fields "
                        "(stall, scoreboards set and waited for; BENCHMARKS.md 9e)")
    p.add_argument("--tuning", nargs="*", default=[], metavar="KEY=INT",
                   help="override launch settings, e.g. fwd_maxnreg=72 or fwd_maxnreg=none "
                        "(TUNING in retrieval/kernels/bimamba_scan.py)")
    args = p.parse_args(argv)
    os.environ.pop("TRITON_INTERPRET", None)
    seqlen = 1 + args.frames * 196
    bs.sm_count = lambda device: args.sms
    try:
        apply_tuning(args.tuning)
    except ValueError as e:
        p.error(f"--tuning: {e}")
    print(f"triton {triton.__version__}, sm_{args.arch}, batch {args.batch}, L {seqlen}")
    seen = set()
    for fn, grid, a, kw in capture_launches(args.batch, seqlen):
        name = fn.fn.__name__ + (" summary" if kw.get("SUMMARY") else "") + (" +save" if kw.get("SAVE") else "")
        if name in seen:
            continue
        seen.add(name)
        resources, loops = sass_report(compile_launch(fn, a, kw, args.arch))
        print(f"\n{name}: grid {grid}, {resources}")
        for n, ops, _ in loops:
            print(f"  loop of {n} instructions: " + ", ".join(f"{k} {v}" for k, v in ops.most_common(args.top)))
        if args.control and args.control in name and loops:
            print("\n".join(max(loops, key=lambda loop: loop[0])[2]))


if __name__ == "__main__":
    main()
