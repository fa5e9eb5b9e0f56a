"""GPU timing of the bidirectional scan alone at VideoMamba-Ti shapes: our Triton kernel vs two mamba-ssm calls.

Both sides get the same inputs in their native layouts (ours time-major (2, B, L, D), mamba-ssm
channel-major (B, D, L) with the second direction already flipped, so its flips are not counted).
Prints a Markdown table and a roofline line (achieved bytes/s and exp/s against the card's limits).
"""
from __future__ import annotations

import argparse
import itertools
import json
import statistics

import torch

from retrieval.kernels import biconv
from retrieval.kernels import bimamba_scan as bs
from retrieval.kernels.bimamba_scan import bimamba_scan_fn

# HBM bandwidth by card (SXM parts); exp2 on the SFUs: 16 per SM per clock x SMs x 1.98 GHz boost (both cards).
PEAK_BYTES_S = {"H100": 3.35e12, "H200": 4.8e12}
BOOST_HZ = 1.98e9


# Sweep grid. Programs per SM around the occupancies the register caps allow on sm_90 (106 registers: 16 warps
# per SM, 80: 24, 72: 28; each scheduler has 16,384 registers), and multiples.
FWD_PER_SM = (18, 25, 28, 36, 50, 56, 62)
FWD_MAXNREG = (None, 80, 72)
FWD_SUMMARY_PREFETCH = (1, 2)  # steps the summary pass loads ahead: 72 registers at 1, 80 at 2 (28 -> 24 warps/SM)
# B and C copied to fp32 (fwd_fp32_rows): the output pass 724 -> 635 instructions per 4 steps but 96 registers
# without a spill (20 warps/SM; at 80 it spills), the summaries 445 -> 400 at 76 registers.
FP32_ROWS_MAXNREG = (80, 96)
# (bwd_programs_per_sm, bwd_maxnreg, fwd_save_maxnreg); 254 registers: 8 warps/SM, 168: 12; the saving forward
# 168: 12, 112: 16.
# the single-pass inference forward: (states per lane, B and C copied to fp32, chunks its loads run ahead, chunks per
# loop iteration). One state a lane is left out: 96 registers and the most instructions per channel-step
# (triton_sass.py). Four states a lane: fewest instructions, but a quarter of one state's warps.
LANES = ((2, False, 2, 1), (2, False, 2, 2), (2, False, 3, 3), (2, True, 2, 2), (4, False, 2, 2), (4, True, 2, 2))
CROSSOVER_SHAPES = ((1, 12545), (2, 12545), (4, 12545), (8, 12545), (16, 1569), (64, 1569), (32, 315))
BWD_CONFIGS = ((62, None, None), (8, None, None), (16, None, None), (12, 168, None), (24, 168, None),
               (62, 168, None), (62, None, 112), (62, 168, 112), (24, 168, 112))
BWD_SUMMARY_PREFETCH = (0, 1, 2)  # the backward's summaries: 72-74 registers at each depth


def card_peaks() -> tuple[float, float]:
    """(bytes/s, exp2/s) of this GPU; bandwidth of an H200 where the name is not recognised."""
    name = torch.cuda.get_device_name()
    bw = next((v for k, v in PEAK_BYTES_S.items() if k in name), PEAK_BYTES_S["H200"])
    return bw, 16 * torch.cuda.get_device_properties(0).multi_processor_count * BOOST_HZ


def timed(fn, repeats: int, warmup: int = 3) -> float:
    """Median seconds of fn() on the GPU (CUDA events)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        torch.cuda.synchronize()
        times.append(s.elapsed_time(e) / 1e3)
    return statistics.median(times)


def make_inputs(batch: int, seqlen: int, dim: int, dstate: int, dtype, seed: int = 0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    r = lambda *s, scale=1.0: (torch.randn(*s, device="cuda", generator=g) * scale)  # noqa: E731
    A = -torch.exp(r(2, dim, dstate, scale=0.5)) * torch.arange(1, dstate + 1, device="cuda")
    xdbl = r(2, batch * seqlen, 2 * dstate + 12).to(dtype)  # B, C as strided views, as in the model
    return dict(u=r(2, batch, seqlen, dim).to(dtype), delta=r(2, batch, seqlen, dim, scale=0.5).to(dtype), A=A,
                B=xdbl[..., 12:12 + dstate].view(2, batch, seqlen, dstate),
                C=xdbl[..., 12 + dstate:].view(2, batch, seqlen, dstate),
                D=r(2, dim), z=r(batch, seqlen, dim).to(dtype), delta_bias=r(2, dim, scale=0.5) - 4.0)


def channel_major(inp):
    """mamba-ssm's layout for each direction: (B, D, L) contiguous, direction 1 pre-flipped."""
    out = []
    for k in range(2):
        f = (lambda t: t.flip(1)) if k == 1 else (lambda t: t)
        cm = lambda t: f(t).transpose(1, 2).contiguous()  # noqa: E731
        out.append(dict(u=cm(inp["u"][k]), delta=cm(inp["delta"][k]), A=inp["A"][k].contiguous(),
                        B=cm(inp["B"][k]), C=cm(inp["C"][k]), D=inp["D"][k].contiguous(), z=cm(inp["z"]),
                        delta_bias=inp["delta_bias"][k].contiguous()))
    return out


def run_ours(inp, backward: bool):
    leaves = {k: v.detach().requires_grad_(backward) for k, v in inp.items()}
    y = bimamba_scan_fn(**leaves)
    if backward:
        y.backward(torch.ones_like(y))
    return y


def run_mamba(dirs, backward: bool):
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    ys = []
    for d in dirs:
        leaves = {k: v.detach().requires_grad_(backward) for k, v in d.items()}
        y = selective_scan_fn(leaves["u"], leaves["delta"], leaves["A"], leaves["B"], leaves["C"], leaves["D"],
                              leaves["z"], leaves["delta_bias"], delta_softplus=True)
        if backward:
            y.backward(torch.ones_like(y))
        ys.append(y)
    return ys


def settings() -> dict:
    """The kernel settings a --save-blocks file holds: the scan's TUNING, and the conv's under "biconv"."""
    return {**bs.TUNING, "biconv": dict(biconv.TUNING)}


def apply_tuning(items: list[str]) -> None:
    """KEY=INT (or KEY=none) overrides of bimamba_scan.TUNING, as --tuning takes them; ValueError names a bad one."""
    for item in items:
        key, _, value = item.partition("=")
        if key not in bs.TUNING or not value:
            raise ValueError(f"expected KEY=INT with KEY one of {', '.join(bs.TUNING)}, got {item!r}")
        bs.TUNING[key] = None if value.lower() == "none" else int(value)


def _tuples(d: dict) -> dict:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}


def load_blocks(saved: dict) -> None:
    """Apply a --save-blocks file."""
    saved = dict(saved)
    biconv.TUNING.update(_tuples(saved.pop("biconv", {})))
    bs.TUNING.update(_tuples(saved))


def timed_fwd(inp) -> float:
    with torch.no_grad():
        return timed(lambda: run_ours(inp, False), 5, 1) * 1e3


def _sweep(rows: list, key: str, measure, **launch) -> None:
    """Time one complete set of launch settings and record it (every row holds all the settings it ran with)."""
    bs.TUNING.update(launch)
    rows.append({**launch, key: measure()})
    print(rows[-1], flush=True)


def _keep_fastest(rows: list, key: str) -> dict:
    best = {k: v for k, v in min(rows, key=lambda r: r[key]).items() if k in bs.TUNING}
    bs.TUNING.update(best)
    return best


def sweep_forward(inp) -> list[dict]:
    """Stage by stage, each from the fastest so far: programs per SM x register cap, the summaries' prefetch
    depth, then B and C copied to fp32 (with their own caps). Leaves the fastest in TUNING."""
    rows, key, measure = [], "fwd_ms", lambda: timed_fwd(inp)
    for per_sm, maxnreg in itertools.product(FWD_PER_SM, FWD_MAXNREG):
        _sweep(rows, key, measure, fwd_lanes_states=0, fwd_programs_per_sm=per_sm, fwd_maxnreg=maxnreg,
               fwd_summary_prefetch=FWD_SUMMARY_PREFETCH[0], fwd_fp32_rows=False)
    best = _keep_fastest(rows, key)
    for prefetch in FWD_SUMMARY_PREFETCH[1:]:  # the summaries wait on their loads (Nsight, BENCHMARKS 9c)
        _sweep(rows, key, measure, **{**best, "fwd_summary_prefetch": prefetch})
    best = _keep_fastest(rows, key)
    for maxnreg in FP32_ROWS_MAXNREG:  # fewer instructions per step, more registers
        _sweep(rows, key, measure, **{**best, "fwd_fp32_rows": True, "fwd_maxnreg": maxnreg})
    best = _keep_fastest(rows, key)
    rows += sweep_lanes(inp, best)
    return rows


def sweep_lanes(inp, segmented: dict | None = None) -> list[dict]:
    """The single-pass forward's settings against the segmented forward (its settings as given, else as in
    TUNING); leaves the fastest in TUNING."""
    rows, key, measure = [], "fwd_ms", lambda: timed_fwd(inp)
    if segmented is None:
        segmented = {k: bs.TUNING[k] for k in ("fwd_programs_per_sm", "fwd_maxnreg", "fwd_summary_prefetch",
                                              "fwd_fp32_rows")}
        _sweep(rows, key, measure, **segmented, fwd_lanes_states=0)
    bs.TUNING.update(segmented, fwd_lanes_states=0)
    with torch.no_grad():
        ref = run_ours(inp, False).float()
    for states, fp32_rows, prefetch, unroll in LANES:  # one pass, no segments (taken at any size here)
        _sweep(rows, key, measure, **{**segmented, "fwd_lanes_states": states, "fwd_lanes_fp32_rows": fp32_rows,
                                      "fwd_lanes_prefetch": prefetch, "fwd_lanes_unroll": unroll,
                                      "fwd_lanes_min_programs_per_sm": 0})
        with torch.no_grad():  # every variant's output against the segmented forward's
            rows[-1]["max_rel_diff_vs_segmented"] = ((run_ours(inp, False).float() - ref).abs().max()
                                                     / ref.abs().max()).item()
    _keep_fastest(rows, key)
    return rows


def lanes_setting(text: str) -> tuple[int, ...]:
    """--ab-lanes' PREFETCH,UNROLL[,STATES] as ints."""
    values = tuple(int(v) for v in text.split(","))
    if len(values) not in (2, 3):
        raise argparse.ArgumentTypeError(f"expected PREFETCH,UNROLL[,STATES], got {text!r}")
    return values


def use_lanes(setting: tuple[int, ...], default_states: int = 2) -> None:
    """Run the single-pass forward everywhere with this (prefetch, unroll[, states per lane])."""
    prefetch, unroll, states = (*setting, default_states)[:3]
    bs.TUNING.update(fwd_lanes_states=states, fwd_lanes_prefetch=prefetch, fwd_lanes_unroll=unroll,
                     fwd_lanes_min_programs_per_sm=0)


def ab_lanes(inp, settings: list[tuple[int, ...]], rounds: int = 3, repeats: int = 20) -> list[dict]:
    """The single-pass forward at each (prefetch, unroll[, states per lane]), interleaved over several rounds in one
    process (a sweep times each setting once, so drift between them reads as a difference); median ms per setting,
    and each output against the first setting's. Leaves the fastest in TUNING."""
    launcher = {k: bs.TUNING[k] for k in ("fwd_lanes_states", "fwd_lanes_min_programs_per_sm")}
    use = lambda setting: use_lanes(setting, launcher["fwd_lanes_states"] or 2)  # noqa: E731
    times, ref, rows = {s: [] for s in settings}, None, []
    for _ in range(rounds):
        for setting in settings:
            use(setting)
            with torch.no_grad():
                times[setting].append(timed(lambda: run_ours(inp, False), repeats) * 1e3)
    for setting in settings:
        use(setting)
        with torch.no_grad():
            y = run_ours(inp, False).float()
        ref = y if ref is None else ref
        rows.append({k: bs.TUNING[k] for k in ("fwd_lanes_prefetch", "fwd_lanes_unroll", "fwd_lanes_states")}
                    | {"fwd_ms": statistics.median(times[setting]), "rounds_ms": times[setting],
                       "max_rel_diff_vs_first": ((y - ref).abs().max() / ref.abs().max()).item()})
        print(rows[-1], flush=True)
    best = _keep_fastest(rows, "fwd_ms")
    bs.TUNING.update(launcher, fwd_lanes_states=best["fwd_lanes_states"])
    return rows


def lanes_crossover(dim: int, dstate: int) -> list[dict]:
    """The inference forward at several (batch, L), segmented against single-pass with the swept settings; sets
    fwd_lanes_min_programs_per_sm to the fewest programs per SM from which the single pass wins at every
    larger measured size (off where it never does)."""
    states = bs.TUNING["fwd_lanes_states"] or 2
    cuda = torch.device("cuda")
    per_sm = lambda batch: bs.lanes_programs(  # noqa: E731
        dstate, bs.by_work(states, bs.lanes_work(dim, batch, cuda)), dim, batch) / bs.sm_count(cuda)
    rows = []
    for batch, seqlen in CROSSOVER_SHAPES:
        inp = make_inputs(batch, seqlen, dim, dstate, torch.bfloat16)
        row = {"batch": batch, "seqlen": seqlen, "lanes_programs_per_sm": per_sm(batch)}
        for name, on in (("segmented_ms", 0), ("lanes_ms", states)):
            bs.TUNING.update(fwd_lanes_states=on, fwd_lanes_min_programs_per_sm=0)
            row[name] = timed_fwd(inp)
        rows.append(row)
        print(row, flush=True)
    wins = sorted(rows, key=lambda r: r["lanes_programs_per_sm"])
    threshold = None
    for i, r in enumerate(wins):
        if all(w["lanes_ms"] < w["segmented_ms"] for w in wins[i:]):
            threshold = r["lanes_programs_per_sm"]
            break
    bs.TUNING.update(fwd_lanes_states=states if threshold is not None else 0,
                     fwd_lanes_min_programs_per_sm=int(threshold) if threshold is not None else 0)
    return rows


def sweep_backward(inp) -> list[dict]:
    """Forward + backward with the forward's settings fixed: the backward's split and caps, then its summaries'
    prefetch depth. Leaves the fastest in TUNING."""
    rows, key, measure = [], "fwdbwd_ms", lambda: timed(lambda: run_ours(inp, True), 3, 1) * 1e3
    for per_sm, maxnreg, save_maxnreg in BWD_CONFIGS:
        _sweep(rows, key, measure, bwd_programs_per_sm=per_sm, bwd_maxnreg=maxnreg, fwd_save_maxnreg=save_maxnreg,
               bwd_summary_prefetch=BWD_SUMMARY_PREFETCH[0])
    best = _keep_fastest(rows, key)
    for prefetch in BWD_SUMMARY_PREFETCH[1:]:  # the backward's summaries wait on their loads too
        _sweep(rows, key, measure, **{**best, "bwd_summary_prefetch": prefetch})
    _keep_fastest(rows, key)
    return rows


def traffic_bytes(batch, seqlen, dim, dstate, elem=2) -> float:
    """Least HBM traffic of one forward: read u, dt (both directions), z, B, C; write y (both)."""
    per_token = (2 * 2 * dim + dim + 2 * 2 * dstate + 2 * dim) * elem
    return batch * seqlen * per_token


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seqlen", type=int, default=12545, help="1 + 64 frames x 196 patches")
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--dstate", type=int, default=16)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--sweep", action="store_true", help="time block-size configs first and keep the fastest")
    p.add_argument("--sweep-lanes", action="store_true",
                   help="sweep only the single-pass forward's settings (the others as in TUNING)")
    p.add_argument("--ab-lanes", nargs="+", type=lanes_setting, metavar="PREFETCH,UNROLL[,STATES]",
                   help="time these single-pass settings against each other (interleaved rounds) and keep the "
                        "fastest, e.g. --ab-lanes 2,1 2,2 1,1,4 (states per lane: as in TUNING unless given)")
    p.add_argument("--compile-only", action="store_true",
                   help="with --ab-lanes: run each setting once and exit (several such processes, one setting each, "
                        "fill Triton's cache in parallel: each setting takes ~20 s to compile)")
    p.add_argument("--save-blocks", help="with a sweep or --ab-lanes: write the chosen settings here")
    p.add_argument("--load-blocks", help="use block sizes from a --save-blocks file")
    p.add_argument("--no-compare", action="store_true",
                   help="with a sweep or --ab-lanes: stop after them (no mamba-ssm comparison, no backward)")
    p.add_argument("--json", help="write results here")
    args = p.parse_args(argv)
    dt = torch.bfloat16
    inp = make_inputs(args.batch, args.seqlen, args.dim, args.dstate, dt)
    res = {"device": torch.cuda.get_device_name(), "shape": vars(args), "sweep": []}
    if args.load_blocks:
        with open(args.load_blocks) as f:
            load_blocks(json.load(f))
    if args.compile_only:
        for setting in args.ab_lanes or ():
            use_lanes(setting)
            with torch.no_grad():
                run_ours(inp, False)
        return
    if args.sweep or args.sweep_lanes or args.ab_lanes:  # the fastest settings are kept
        if args.ab_lanes:
            res["ab_lanes"] = ab_lanes(inp, args.ab_lanes)
        else:  # forward settings (inference), then the backward's
            res["sweep"] = sweep_forward(inp) + sweep_backward(inp) if args.sweep else sweep_lanes(inp)
            res["lanes_crossover"] = lanes_crossover(args.dim, args.dstate)
        if args.save_blocks:
            with open(args.save_blocks, "w") as f:
                json.dump(settings(), f)
        if args.json:  # the sweep's results stand on their own (the comparison below needs mamba-ssm)
            with open(args.json, "w") as f:
                json.dump(res, f, indent=1)
        if args.no_compare:
            return
    res["blocks"] = settings()
    # parity with mamba-ssm on these inputs (bf16 in, fp32 state on both sides)
    dirs = channel_major(inp)
    with torch.no_grad():
        ours = run_ours(inp, False).float()
        ref = run_mamba(dirs, False)
    ref = torch.stack([ref[0].transpose(1, 2), ref[1].flip(-1).transpose(1, 2)], dim=2).float()
    res["max_rel_err_vs_mamba"] = ((ours - ref).abs().max() / ref.abs().max()).item()
    t = {}
    with torch.no_grad():
        t["ours_fwd"] = timed(lambda: run_ours(inp, False), args.repeats)
        t["mamba_fwd"] = timed(lambda: run_mamba(dirs, False), args.repeats)
    t["ours_fwdbwd"] = timed(lambda: run_ours(inp, True), args.repeats)
    t["mamba_fwdbwd"] = timed(lambda: run_mamba(dirs, True), args.repeats)
    res["ms"] = {k: v * 1e3 for k, v in t.items()}
    res["speedup_fwd"] = t["mamba_fwd"] / t["ours_fwd"]
    res["speedup_fwdbwd"] = t["mamba_fwdbwd"] / t["ours_fwdbwd"]
    nbytes = traffic_bytes(args.batch, args.seqlen, args.dim, args.dstate)
    nexp = 2 * args.batch * args.seqlen * args.dim * args.dstate
    peak_bytes, peak_exp = card_peaks()
    res["roofline_fwd"] = {"bytes": nbytes, "exps": nexp, "bytes_per_s": nbytes / t["ours_fwd"],
                           "exp_per_s": nexp / t["ours_fwd"], "frac_peak_bw": nbytes / t["ours_fwd"] / peak_bytes,
                           "frac_peak_exp": nexp / t["ours_fwd"] / peak_exp, "peak_bytes_s": peak_bytes,
                           "peak_exp_s": peak_exp, "floor_ms": max(nbytes / peak_bytes, nexp / peak_exp) * 1e3}
    ms = res["ms"]
    print(f"\n{res['device']}, batch {args.batch}, L {args.seqlen}, d_inner {args.dim}, d_state {args.dstate}, bf16; "
          f"blocks {res['blocks']}; max rel. err vs mamba-ssm {res['max_rel_err_vs_mamba']:.1e}\n")
    print("| pass | mamba-ssm, 2 calls (ms) | Triton bimamba, 1 call (ms) | speed-up |\n|---|---|---|---|")
    print(f"| forward | {ms['mamba_fwd']:.3f} | {ms['ours_fwd']:.3f} | {res['speedup_fwd']:.2f}x |")
    print(f"| forward + backward | {ms['mamba_fwdbwd']:.3f} | {ms['ours_fwdbwd']:.3f} | {res['speedup_fwdbwd']:.2f}x |")
    r = res["roofline_fwd"]
    print(f"\nroofline (forward): {r['bytes_per_s'] / 1e12:.2f} TB/s = {r['frac_peak_bw']:.0%} "
          f"of {peak_bytes / 1e12:.2f} TB/s; {r['exp_per_s'] / 1e12:.2f} Texp/s = {r['frac_peak_exp']:.0%} "
          f"of {peak_exp / 1e12:.2f} Texp/s; "
          f"floor {r['floor_ms']:.3f} ms")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
