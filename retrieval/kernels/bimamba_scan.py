"""Bidirectional selective scan of one VideoMamba block in one launch (Triton), and its float64 reference.

Both directions of a "bimamba v2" block scan the same time-major activations: direction 0 from the
first token to the last, direction 1 from the last to the first, each with its own dt, B, C, A, D
and dt bias, both gated by the same z. The result keeps the directions apart, y (B, L, 2, D), so
out_proj takes them as one (B*L, 2D) matrix against [W, W] instead of an add and a flip.
"""
from __future__ import annotations

import functools

import torch

from ..selective_scan import selective_scan_ref
from .support import interpreting, triton_cdiv, triton_unavailable_reason

__all__ = ["TUNING", "bimamba_scan_fn", "bimamba_scan_ref"]

# Launch settings, picked on an H100 by `benchmarks/bench_scan_gpu.py --sweep` at VideoMamba-Ti shapes (batch 8 x
# 64 frames, and batch 32 x 315 tokens, a masked training clip): BENCHMARKS.md, sections 9c (segmented) and 9d (lanes);
# benchmarks/results/scan_blocks_h100.json. Register caps trade a few instructions for resident warps: the
# forward is latency-bound, so 80 registers (24 one-warp programs per SM instead of 16) made it 1.2x faster.
TUNING = {
    # The inference forward in one pass, a channel's states spread over lanes (_bimamba_lanes_triton.py). Its
    # settings are an int, or (from channel-directions per SM, value) pairs: few (64 frames at batch 8: 46.5) leave
    # the loop latency-bound, many (8 frames at batch 64: 372) issue-bound. In H100 A/Bs (BENCHMARKS.md 9f) 64
    # frames ran fastest at 2 states a lane, 3 chunks per loop iteration (1.12x over 1), and 8 frames at 4 states a
    # lane (fewer instructions per channel-step), 2 chunks per iteration (1.25x over 2 states, 1 chunk). The switch
    # at 60 lies between the batches where each won in the encoder at 64 frames (10: 58.2, 2 states 1.09x; 12: 69.8,
    # 4 states 1.04x; 16: 93.1, 4 states 1.36x; BENCHMARKS.md 9g).
    "fwd_lanes_states": ((0, 2), (60, 4)),  # states per lane (0: off, the segmented forward below runs everywhere)
    "fwd_lanes_min_programs_per_sm": 11,  # used where at least this many of its one-warp programs per SM fill the card
    "fwd_lanes_prefetch": 2,  # how many chunks ahead its loads go out
    "fwd_lanes_unroll": ((0, 3), (60, 2)),  # chunks per loop iteration (an iteration's loads all go out at its top)
    "fwd_lanes_maxnreg": None,  # its register cap
    "fwd_lanes_fp32_rows": False,  # B and C copied to fp32 first: no bf16 conversions in the loop
    "fwd_block": (32, 1),  # forward: channels per program (a thread each), warps
    # Cut the sequence into segments until at most this many programs per SM run: per SM, so the split
    # scales with the card (how many fit at once depends on the registers, see the caps below).
    "fwd_programs_per_sm": 56,
    "fwd_min_len": 64,  # keeping segments at least this many steps long
    "fwd_unroll": 4,  # steps per iteration of the forward's loop (unrolling saves the prefetch's register moves)
    "fwd_prefetch": 1,  # how many steps ahead the output pass loads (each step more holds another step's inputs)
    "fwd_summary_prefetch": 1,  # the same for the summary pass (Nsight: it waits on its loads, BENCHMARKS 9c)
    "fwd_fp32_rows": False,  # copy bf16 B and C to fp32 first: 32 conversions a step fewer, 8 more 8-byte loads
    "fwd_maxnreg": 80,  # registers per thread (Triton's `maxnreg`; None: the compiler's choice, 106 here)
    "fwd_save_maxnreg": None,  # the same for the training forward, which also saves chunk states (168)
    "chunk": 8,  # backward chunk length; the forward saves the state entering each chunk
    "bwd_block": (32, 1),  # backward: channels per program, warps
    "bwd_programs_per_sm": 62,  # as fwd_programs_per_sm, for the backward's segments
    "bwd_min_chunks": 4,
    "bwd_summary_prefetch": 0,  # steps the backward's summary pass loads ahead (0: none; Nsight: it waits on loads)
    "bwd_maxnreg": 168,  # 12 resident warps per SM, no spills (the sweep's code took 254 uncapped: 8 warps)
}


def _check(u, delta, A, B, C, D, z, delta_bias) -> None:
    if u.dim() != 4 or u.shape[0] != 2:
        raise ValueError(f"bimamba_scan: u has shape {tuple(u.shape)}, expected (2, batch, seqlen, dim)")
    _, b, L, d = u.shape
    if L == 0:
        raise ValueError("bimamba_scan: seqlen must be >= 1")
    if delta.shape != u.shape:
        raise ValueError(f"bimamba_scan: delta has shape {tuple(delta.shape)}, expected {tuple(u.shape)} like u")
    if A.dim() != 3 or A.shape[:2] != (2, d):
        raise ValueError(f"bimamba_scan: A has shape {tuple(A.shape)}, expected (2, {d}, d_state)")
    n = A.shape[2]
    for name, t in (("B", B), ("C", C)):
        if t.shape != (2, b, L, n):
            raise ValueError(f"bimamba_scan: {name} has shape {tuple(t.shape)}, expected {(2, b, L, n)}")
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None and t.shape != (2, d):
            raise ValueError(f"bimamba_scan: {name} has shape {tuple(t.shape)}, expected (2, {d})")
    if z is not None and z.shape != (b, L, d):
        raise ValueError(f"bimamba_scan: z has shape {tuple(z.shape)}, expected {(b, L, d)}")


def bimamba_scan_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=True):
    """The sequential definition: two `selective_scan_ref` calls, the second on the time-reversed inputs.

    u, delta: (2, B, L, D); A: (2, D, N); B, C: (2, B, L, N); D, delta_bias: (2, D); z: (B, L, D)
    -> y (B, L, 2, D) in u's dtype; y[:, :, k] = direction k's scan, + D u, times silu(z).
    """
    _check(u, delta, A, B, C, D, z, delta_bias)
    outs = []
    for k in range(2):
        flip = (lambda t: t.flip(-1)) if k == 1 else (lambda t: t)
        cm = lambda t: flip(t[k].transpose(1, 2))  # (B, L, X) -> (B, X, L) in scan order  # noqa: E731
        y = selective_scan_ref(cm(u), cm(delta), A[k], cm(B), cm(C), None if D is None else D[k],
                               None if z is None else flip(z.transpose(1, 2)),
                               None if delta_bias is None else delta_bias[k], delta_softplus)
        outs.append(flip(y).transpose(1, 2))  # (B, L, D)
    return torch.stack(outs, dim=2)


def _inner(t: torch.Tensor) -> torch.Tensor:
    """The kernels index channels with unit stride."""
    return t if t.stride(-1) == 1 else t.contiguous()


class _BiMambaScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus):
        from . import _bimamba_triton as k
        u, delta = _inner(u), _inner(delta)
        z = None if z is None else _inner(z)
        A = A.float().contiguous()  # (2, D, N); in the model already so, no copy
        D = None if D is None else D.float().contiguous()
        delta_bias = None if delta_bias is None else delta_bias.float().contiguous()
        _, bsz, L, dim = u.shape
        n = A.shape[2]
        save = any(ctx.needs_input_grad)
        if not save and (S := lanes_split(n, dim, bsz, u.device)):
            return _forward_lanes(u, delta, A, B, C, D, z, delta_bias, delta_softplus, S)
        BT, (BD, warps) = TUNING["chunk"], TUNING["fwd_block"]
        n_chunks = triton_cdiv(L, BT)
        y = u.new_empty(bsz, L, 2, dim)
        h = u.new_empty((2, bsz, n_chunks, n, dim) if save else (1,), dtype=torch.float32)  # chunk-entry states
        n_dblk = triton_cdiv(dim, BD)
        n_seg, seg_len = split_sequence(L, n_dblk * bsz * 2, TUNING["fwd_programs_per_sm"] * sm_count(u.device),
                                        TUNING["fwd_min_len"])
        E = u.new_empty((2, bsz, n_seg, n, dim) if n_seg > 1 else (1,), dtype=torch.float32)
        S = u.new_empty((2, bsz, n_seg, dim) if n_seg > 1 else (1,), dtype=torch.float32)
        dummy = A  # stands in for absent optional tensors (never read)
        zz = z if z is not None else u[0]
        grid = (n_dblk, bsz * n_seg, 2)
        Bk, Ck = B, C  # what the forward's kernels read; the backward reads B and C as given
        if TUNING["fwd_fp32_rows"] and B.dtype == torch.bfloat16:
            Bk, Ck = B.float(), C.float()  # a small copy each, so the loop converts no bf16
        args = (u, delta, A, Bk, Ck, D if D is not None else dummy,
                delta_bias if delta_bias is not None else dummy, zz, y, h, E, S, L, dim, seg_len, n_seg,
                u.stride(0), u.stride(1), u.stride(2), delta.stride(0), delta.stride(1), delta.stride(2),
                Bk.stride(0), Bk.stride(1), Bk.stride(2), Bk.stride(3), Ck.stride(0), Ck.stride(1), Ck.stride(2),
                Ck.stride(3), zz.stride(0), zz.stride(1), y.stride(0), y.stride(1), y.stride(2),
                h.stride(0) if save else 0, h.stride(1) if save else 0, h.stride(2) if save else 0)
        flags = dict(HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
                     SOFTPLUS=softplus_mode(delta_softplus), BT=BT, BD=BD, N=n,
                     PACK=packed_rows(Bk, Ck, fp32_words=TUNING["fwd_fp32_rows"]),
                     EVEN_D=dim % BD == 0, UNROLL=TUNING["fwd_unroll"], num_warps=warps)
        if n_seg > 1:  # segment summaries first (few registers: no cap); the output launch chains them
            k.bimamba_fwd_kernel[grid](*args, SUMMARY=True, SAVE=False, PREFETCH=TUNING["fwd_summary_prefetch"],
                                       **flags)
        cap = register_cap(TUNING["fwd_save_maxnreg" if save else "fwd_maxnreg"])
        k.bimamba_fwd_kernel[grid](*args, SUMMARY=False, SAVE=save, PREFETCH=TUNING["fwd_prefetch"], **flags, **cap)
        if save:
            ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, h)
            ctx.delta_softplus, ctx.chunk = bool(delta_softplus), BT
        return y

    @staticmethod
    def backward(ctx, gy):
        from . import _bimamba_triton as k
        u, delta, A, B, C, D, z, delta_bias, h = ctx.saved_tensors
        gy = _inner(gy)
        _, bsz, L, dim = u.shape
        n = A.shape[2]
        BT, (BD, warps) = ctx.chunk, TUNING["bwd_block"]
        n_chunks = h.shape[2]
        n_dblk = triton_cdiv(dim, BD)
        n_seg, seg_chunks = split_sequence(n_chunks, n_dblk * bsz * 2,
                                           TUNING["bwd_programs_per_sm"] * sm_count(u.device),
                                           TUNING["bwd_min_chunks"])
        f32 = dict(dtype=torch.float32, device=u.device)
        gu = torch.empty_like(u)
        gdt = torch.empty_like(delta)
        gBC = torch.empty(n_dblk, 2, bsz, L, 2 * n, **f32)  # dL/dB, dL/dC summed over each program's channels
        gz = torch.empty(2, bsz, L, dim, **f32) if z is not None else gdt  # per direction, summed below
        parts = 2 * bsz * n_seg  # dL/dA, dL/dD, dL/dbias summed over each program's steps
        gA = torch.empty(parts, n, dim, **f32)
        gD, gbias = torch.empty(parts, dim, **f32), torch.empty(parts, dim, **f32)
        E = u.new_empty((2, bsz, n_seg, n, dim), dtype=torch.float32)
        S = u.new_empty((2, bsz, n_seg, dim), dtype=torch.float32)
        W = u.new_empty((2 * bsz * n_seg * n_dblk, BT + 1, n, BD), dtype=torch.float32)  # recomputed states
        dummy = A
        zz = z if z is not None else u[0]
        grid = (n_dblk, bsz * n_seg, 2)
        args = (u, delta, A, B, C, D if D is not None else dummy,
                delta_bias if delta_bias is not None else dummy, zz, gy, h, W,
                gu, gdt, gBC, gz, gA, gD, gbias, E, S, L, dim, n_chunks, n_seg, seg_chunks,
                u.stride(0), u.stride(1), u.stride(2), delta.stride(0), delta.stride(1), delta.stride(2),
                B.stride(0), B.stride(1), B.stride(2), B.stride(3), C.stride(0), C.stride(1), C.stride(2),
                C.stride(3), zz.stride(0), zz.stride(1), gy.stride(0), gy.stride(1), gy.stride(2),
                h.stride(0), h.stride(1), h.stride(2),
                gu.stride(0), gu.stride(1), gu.stride(2), gBC.stride(0), gBC.stride(1), gBC.stride(2), gBC.stride(3),
                gz.stride(0), gz.stride(1), gz.stride(2))
        flags = dict(HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
                     SOFTPLUS=softplus_mode(ctx.delta_softplus), BT=BT, BD=BD, N=n, PACK=packed_rows(B, C),
                     EVEN_D=dim % BD == 0, num_warps=warps)
        if n_seg > 1:
            k.bimamba_bwd_kernel[grid](*args, SUMMARY=True, PREFETCH=TUNING["bwd_summary_prefetch"], **flags)
        k.bimamba_bwd_kernel[grid](*args, SUMMARY=False, **flags, **register_cap(TUNING["bwd_maxnreg"]))
        per_dir = lambda t: t.view(2, bsz * n_seg, *t.shape[1:]).sum(1)  # noqa: E731
        gBC = gBC.sum(0)
        return (gu, gdt, per_dir(gA).transpose(1, 2), gBC[..., :n].to(B.dtype), gBC[..., n:].to(C.dtype),
                per_dir(gD) if D is not None else None,
                gz.sum(0).to(z.dtype) if z is not None else None,
                per_dir(gbias) if delta_bias is not None else None, None)


def _forward_lanes(u, delta, A, B, C, D, z, delta_bias, delta_softplus, S: int) -> torch.Tensor:
    """The inference forward in one pass, S states per lane (_bimamba_lanes_triton.py); inputs as the launcher
    prepared them."""
    from . import _bimamba_lanes_triton as k
    _, bsz, L, dim = u.shape
    n = A.shape[2]
    G = n // S
    y = u.new_empty(bsz, L, 2, dim)
    if TUNING["fwd_lanes_fp32_rows"] and B.dtype == torch.bfloat16:
        B, C = B.float(), C.float()  # a small copy each, so the loop converts no bf16
    dummy = A
    zz = z if z is not None else u[0]
    k.bimamba_fwd_lanes_kernel[(triton_cdiv(dim, 32 // G), bsz, 2)](
        u, delta, A, B, C, D if D is not None else dummy, delta_bias if delta_bias is not None else dummy, zz, y,
        L, dim, u.stride(0), u.stride(1), u.stride(2), delta.stride(0), delta.stride(1), delta.stride(2),
        B.stride(0), B.stride(1), B.stride(3), C.stride(0), C.stride(1), C.stride(3),
        zz.stride(0), zz.stride(1), y.stride(0), y.stride(1), y.stride(2),
        S_B_T=B.stride(2), S_C_T=C.stride(2), HAS_D=D is not None, HAS_Z=z is not None,
        HAS_BIAS=delta_bias is not None, SOFTPLUS=softplus_mode(delta_softplus), N=n, S=S,
        PACK=lane_pack(B, C, S), EVEN_D=dim % (32 // G) == 0, **lanes_loop(lanes_work(dim, bsz, u.device)),
        num_warps=1, **register_cap(TUNING["fwd_lanes_maxnreg"]))
    return y


def split_sequence(length: int, programs: int, target: int, min_len: int) -> tuple[int, int]:
    """(segments, units per segment) for a sequence of `length` units (steps or chunks) when `programs`
    programs would run unsplit: at most `target` programs in all (at least one segment), segments at least
    `min_len` long (a split costs a summary pass over part of the inputs)."""
    n_seg = max(1, min(target // programs, length // max(1, min_len)))
    seg = triton_cdiv(length, n_seg)
    return triton_cdiv(length, seg), seg


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device; 1 elsewhere (Triton's interpreter runs one program at a time)."""
    return _sm_count(device.index if device.index is not None else torch.cuda.current_device()) \
        if device.type == "cuda" else 1


def register_cap(maxnreg: int | None) -> dict:
    """Launch options capping registers per thread (Triton's `maxnreg`); none under the interpreter."""
    return {} if maxnreg is None or interpreting() else {"maxnreg": maxnreg}


def softplus_mode(delta_softplus: bool) -> int:
    """The kernels' SOFTPLUS flag: 0 off, 1 precise log2 (what Triton's interpreter runs), 2 the GPU's fast lg2."""
    if not delta_softplus:
        return 0
    return 1 if interpreting() else 2


def _words_fit(B: torch.Tensor, C: torch.Tensor, per_word: int, word_bytes: int) -> bool:
    """Can B and C be read per_word values at a time through word_bytes-wide loads: one dtype, d_state a
    multiple of per_word, unit stride on the state, and every row word-aligned."""
    def ok(t):
        return (t.dtype == B.dtype and t.shape[-1] % per_word == 0 and t.stride(-1) == 1
                and t.data_ptr() % word_bytes == 0 and all(s % per_word == 0 for s in t.stride()[:-1]))
    return ok(B) and ok(C)


def packed_rows(B: torch.Tensor, C: torch.Tensor, fp32_words: bool = False) -> int:
    """The kernels' PACK flag: how many values of B_t and C_t they may read per 8-byte (int64) load, 4 bf16
    or (with fp32_words) 2 fp32, where d_state is a multiple of that, the state has unit stride and every
    row is 8-byte aligned; 0: one load per value."""
    per_word = {torch.bfloat16: 4, torch.float32: 2 if fp32_words else 0}.get(B.dtype, 0)
    return per_word if per_word and _words_fit(B, C, per_word, 8) else 0


def lane_pack(B: torch.Tensor, C: torch.Tensor, states_per_lane: int) -> int:
    """The lanes kernel's PACK flag: how many of a lane's states of B_t and C_t one load reads (4 or 2 bf16 per
    int64 / int32 word, 2 fp32 per int64), where aligned; 1: one load per value."""
    options = {torch.bfloat16: ((4, 8), (2, 4)), torch.float32: ((2, 8),)}.get(B.dtype, ())
    for per_word, nbytes in options:
        if states_per_lane % per_word == 0 and _words_fit(B, C, per_word, nbytes):
            return per_word
    return 1


def lanes_split(d_state: int, dim: int, batch: int, device: torch.device) -> int:
    """States per lane for the single-pass inference forward (bimamba_fwd_lanes_kernel), or 0 where the
    segmented kernels run instead: the setting is off, d_state / states is not a power of two up to 32, or
    too few one-warp programs (one per 32 / lanes-per-channel channels, batch and direction) fill the card."""
    S = by_work(TUNING["fwd_lanes_states"], lanes_work(dim, batch, device))
    if not S or d_state % S:
        return 0
    G = d_state // S
    if G > 32 or G & (G - 1):
        return 0
    programs = lanes_programs(d_state, S, dim, batch)
    return S if programs >= TUNING["fwd_lanes_min_programs_per_sm"] * sm_count(device) else 0


def lanes_work(dim: int, batch: int, device: torch.device) -> float:
    """Channel-directions per SM: what the lanes kernel's settings are keyed on (TUNING)."""
    return dim * batch * 2 / sm_count(device)


def by_work(rule, work: float):
    """A lanes setting at this much work: an int as it is, else the value of the last (from, value) pair reached."""
    if isinstance(rule, int):
        return rule
    return [value for start, value in sorted(rule) if work >= start][-1]


def lanes_loop(work: float) -> dict:
    """The lanes kernel's PREFETCH and UNROLL at this many channel-directions per SM."""
    return {"PREFETCH": by_work(TUNING["fwd_lanes_prefetch"], work),
            "UNROLL": by_work(TUNING["fwd_lanes_unroll"], work)}


def lanes_programs(d_state: int, states_per_lane: int, dim: int, batch: int) -> int:
    """How many one-warp programs the single-pass forward launches: one per block of 32 / (d_state /
    states_per_lane) channels, batch and direction."""
    return triton_cdiv(dim, 32 // (d_state // states_per_lane)) * batch * 2


def bimamba_scan_fn(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=True):
    """Both directions of a bidirectional selective scan in one Triton launch, forward and backward.

    u, delta: (2, B, L, D); A: (2, D, N) real; B, C: (2, B, L, N); D, delta_bias: (2, D); z: (B, L, D)
    -> y (B, L, 2, D) in u's dtype. Direction 0: h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t;
    direction 1 runs from t = L-1 down; y_t = (C_t . h_t + D u_t) * silu(z_t). State and math in fp32.
    """
    _check(u, delta, A, B, C, D, z, delta_bias)
    reason = triton_unavailable_reason(u.device)
    if reason is not None:
        raise RuntimeError(f"bimamba_scan_fn: {reason}")
    return _BiMambaScan.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
