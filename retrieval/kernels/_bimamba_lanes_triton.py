"""The inference forward of the bidirectional scan in one pass: a channel's states spread across lanes.

The segmented kernels (_bimamba_triton.py) give each lane a channel and all its N states, so one video's
6,144 channel-directions fill the GPU only when the sequence is cut into segments, and every segment but
the last is walked twice (a summary pass, then the outputs): half of all exps go to the summaries.

Here G = N / S lanes share a channel, S states each, and one warp (one program) holds 32 / G channels of one
(batch, direction) for the whole sequence: no segments, no second pass. The sequence is walked in chunks of G
steps. At a chunk's start lane g loads step g's u, dt and z of its channel and does that step's per-channel
work (softplus, the gate) once; each step of the chunk then takes delta and delta * u from the lane that
computed them (a warp shuffle). A lane's share of C_t . h_t is kept for each step of the chunk, and a
reduce-scatter over the G lanes (G - 1 lane swaps) leaves step g's sum on lane g, which finishes it (D skip,
gate) and stores it: one store per lane per chunk. A chunk's loads are issued PREFETCH chunks ahead; the loop
walks UNROLL chunks per iteration and issues all of their successors' loads at its top.

It needs enough warps: it beats the segmented forward from ~11 programs per SM and loses below (BENCHMARKS.md 9d);
the launcher (bimamba_scan.lanes_split) decides.

Same layouts as the segmented kernels; B and C rows have a compile-time stride (S_B_T, S_C_T) so each step's
address is an immediate offset from its chunk's.
"""
from __future__ import annotations

import triton
import triton.language as tl

from ._bimamba_triton import LOG2E, _bf16_to_f32, _delta, _halve, _unpack


@triton.jit
def _lane_words(ptr, mask, s_n, S: tl.constexpr, PACK: tl.constexpr):
    """This lane's S values of one row of B or C as loaded (ptr: the lane's first value): PACK values per load
    (2 or 4 bf16 as an int32 / int64 word, 2 fp32 as an int64; the launcher checks alignment), or one by one."""
    r = ()
    if PACK > 1:
        bits: tl.constexpr = PACK * ptr.dtype.element_ty.primitive_bitwidth
        p = ptr.to(tl.pointer_type(tl.int64 if bits == 64 else tl.int32))
        for i in tl.static_range(S // PACK):
            r = r + (tl.load(p + i, mask=mask, other=0),)
    else:
        for s in tl.static_range(S):
            r = r + (tl.load(ptr + s * s_n, mask=mask, other=0.0),)
    return r


@triton.jit
def _lane_values(words, S: tl.constexpr, PACK: tl.constexpr):
    """_lane_words' result as S fp32 values: int32 words of two bf16 here, the rest as the segmented kernels
    unpack their rows. An else, not an early return: Triton 3.6 also compiled the code after the return, shifting
    these int32 words by 32 (a warning on the GPU; the value was unused)."""
    if PACK == 2 and words[0].dtype == tl.int32:
        r = ()
        for i in tl.static_range(S // 2):
            r = r + (_bf16_to_f32(words[i]), (words[i] & -65536).to(tl.float32, bitcast=True))
    else:
        r = _unpack(words, S, PACK)
    return r


@triton.jit
def _chunk_loads(u_ptr, dt_ptr, z_ptr, B_ptr, C_ptr, j0, L, g, offs_d, mask_d, s_u_t, s_dt_t, s_z_t, s_B_n, s_C_n,
                 S_B_T: tl.constexpr, S_C_T: tl.constexpr, REVERSE: tl.constexpr, MASKED: tl.constexpr,
                 HAS_Z: tl.constexpr, S: tl.constexpr, G: tl.constexpr, PACK: tl.constexpr):
    """The inputs of the chunk starting at scan position j0: this lane's step (j0 + g) of u, dt, z, and, for
    each of the chunk's G steps, the lane's S values of B_t and C_t (as words). MASKED: the chunk may run
    past the sequence's end (masked loads); otherwise it lies inside it."""
    j = j0 + g
    ok = mask_d & (j < L) if MASKED else mask_d
    t = L - 1 - j if REVERSE else j
    u = tl.load(u_ptr + t * s_u_t + offs_d, mask=ok, other=0.0)
    dt = tl.load(dt_ptr + t * s_dt_t + offs_d, mask=ok, other=0.0)
    z = tl.load(z_ptr + t * s_z_t + offs_d, mask=ok, other=0.0) if HAS_Z else u
    first = L - 1 - j0 if REVERSE else j0  # the chunk's first step in time
    B_ptr += first * S_B_T  # once per chunk, so each step's address is a constant offset from it
    C_ptr += first * S_C_T
    step: tl.constexpr = -1 if REVERSE else 1
    Bw = ()
    Cw = ()
    for i in tl.static_range(G):
        m = (j0 + i < L) if MASKED else mask_d  # mask_d: constant when the channels divide evenly
        Bw = Bw + (_lane_words(B_ptr + step * i * S_B_T, m, s_B_n, S, PACK),)
        Cw = Cw + (_lane_words(C_ptr + step * i * S_C_T, m, s_C_n, S, PACK),)
    return u, dt, z, Bw, Cw, ok, t


@triton.jit
def _chunk(h, inputs, A2, Dv, bias, lane, src, y_ptr, s_y_t, offs_d, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
           HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, S: tl.constexpr, G: tl.constexpr,
           PACK: tl.constexpr):
    """Walk one chunk's G steps from state h (this lane's S states), store its outputs, return the state."""
    u, dt, z, Bw, Cw, ok, t = inputs
    u = u.to(tl.float32)
    d = tl.where(ok, _delta(dt.to(tl.float32), bias, HAS_BIAS, SOFTPLUS), 0.0)  # past the end: h unchanged
    du = d * u
    parts = ()  # this lane's share of C_t . h_t for each step of the chunk
    for i in tl.static_range(G):
        di = tl.gather(d, src + i, 0)  # step i's values, from the lane that computed them
        dui = tl.gather(du, src + i, 0)
        Bt = _lane_values(Bw[i], S, PACK)
        Ct = _lane_values(Cw[i], S, PACK)
        p = tl.zeros_like(di)
        hn = ()
        for s in tl.static_range(S):
            x = tl.exp2(di * A2[s]) * h[s] + dui * Bt[s]
            hn = hn + (x,)
            p += x * Ct[s]
        h = hn
        parts = parts + (p,)
    for k in tl.static_range(G.bit_length() - 1):  # log2(G) halvings leave step g's sum on lane g
        parts = _halve(parts, lane, G >> (k + 1))
    y = parts[0]
    if HAS_D:
        y += Dv * u
    if HAS_Z:
        zf = z.to(tl.float32)
        y = y * zf * tl.sigmoid(zf)
    tl.store(y_ptr + t * s_y_t + offs_d, y.to(y_ptr.dtype.element_ty), mask=ok)
    return h


@triton.jit
def _lanes_direction(u_ptr, dt_ptr, z_ptr, B_ptr, C_ptr, y_ptr, A2, Dv, bias, lane, g, src, offs_d, mask_d, L,
                     s_u_t, s_dt_t, s_z_t, s_B_n, s_C_n, s_y_t, S_B_T: tl.constexpr, S_C_T: tl.constexpr,
                     REVERSE: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
                     SOFTPLUS: tl.constexpr, S: tl.constexpr, G: tl.constexpr, PACK: tl.constexpr,
                     PREFETCH: tl.constexpr, UNROLL: tl.constexpr):
    h = ()
    for s in tl.static_range(S):
        h = h + (tl.zeros_like(A2[0]),)
    # (constexprs are passed one by one: inside a tuple they would stop being constant)
    load_args = (u_ptr, dt_ptr, z_ptr, B_ptr, C_ptr)
    lane_args = (L, g, offs_d, mask_d, s_u_t, s_dt_t, s_z_t, s_B_n, s_C_n)
    chunk_args = (A2, Dv, bias, lane, src, y_ptr, s_y_t, offs_d)
    # Whole chunks, UNROLL per iteration, whose loads go out PREFETCH chunks ahead: all of an iteration's at its top.
    # (ptxas makes the loop's head wait for every outstanding load, BENCHMARKS.md 9e: a load issued mid-iteration
    # would have only the rest of it to arrive, one issued at the top has the whole iteration.)
    n_iter = (L // G - PREFETCH) // UNROLL
    done = 0
    if n_iter > 0:
        ahead = ()
        for p in tl.static_range(PREFETCH):
            ahead = ahead + (_chunk_loads(*load_args, p * G, *lane_args, S_B_T, S_C_T, REVERSE, False, HAS_Z, S, G,
                                          PACK),)
        for it in tl.range(n_iter):
            window = ahead
            for i in tl.static_range(UNROLL):
                window = window + (_chunk_loads(*load_args, (it * UNROLL + PREFETCH + i) * G, *lane_args, S_B_T,
                                                S_C_T, REVERSE, False, HAS_Z, S, G, PACK),)
            for i in tl.static_range(UNROLL):
                h = _chunk(h, window[i], *chunk_args, HAS_D, HAS_Z, HAS_BIAS, SOFTPLUS, S, G, PACK)
            ahead = window[UNROLL:]
        for i in tl.static_range(PREFETCH):  # the chunks still in flight
            h = _chunk(h, ahead[i], *chunk_args, HAS_D, HAS_Z, HAS_BIAS, SOFTPLUS, S, G, PACK)
        done = (n_iter * UNROLL + PREFETCH) * G
    for j0 in range(done, L, G):  # what is left (fewer than UNROLL whole chunks, a partial one): masked
        inputs = _chunk_loads(*load_args, j0, *lane_args, S_B_T, S_C_T, REVERSE, True, HAS_Z, S, G, PACK)
        h = _chunk(h, inputs, *chunk_args, HAS_D, HAS_Z, HAS_BIAS, SOFTPLUS, S, G, PACK)


@triton.jit
def bimamba_fwd_lanes_kernel(u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, z_ptr, y_ptr, L, Dm,
                             s_u_k, s_u_b, s_u_t, s_dt_k, s_dt_b, s_dt_t, s_B_k, s_B_b, s_B_n, s_C_k, s_C_b, s_C_n,
                             s_z_b, s_z_t, s_y_b, s_y_t, s_y_k,
                             S_B_T: tl.constexpr, S_C_T: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
                             HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, N: tl.constexpr, S: tl.constexpr,
                             PACK: tl.constexpr, EVEN_D: tl.constexpr, PREFETCH: tl.constexpr,
                             UNROLL: tl.constexpr = 1):
    """Grid (channel blocks of 32 / (N / S) channels, batch, direction); one warp per program."""
    G: tl.constexpr = N // S
    CW: tl.constexpr = 32 // G
    pid_d, b, k = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    lane = tl.arange(0, 32)
    g = lane % G
    src = lane - g  # the first lane of this lane's channel
    offs_d = pid_d * CW + lane // G
    if EVEN_D:
        mask_d = tl.full([32], 1, tl.int1)
    else:
        mask_d = offs_d < Dm
    A2 = ()
    for s in tl.static_range(S):
        A2 = A2 + (tl.load(A_ptr + (k * Dm + offs_d) * N + g * S + s, mask=mask_d, other=0.0) * LOG2E,)
    Dv = tl.load(D_ptr + k * Dm + offs_d, mask=mask_d, other=0.0) if HAS_D else None
    bias = tl.load(bias_ptr + k * Dm + offs_d, mask=mask_d, other=0.0) if HAS_BIAS else None
    u_ptr += k * s_u_k + b * s_u_b
    dt_ptr += k * s_dt_k + b * s_dt_b
    B_ptr += k * s_B_k + b * s_B_b + g * S * s_B_n
    C_ptr += k * s_C_k + b * s_C_b + g * S * s_C_n
    z_ptr += b * s_z_b
    y_ptr += b * s_y_b + k * s_y_k
    args = (u_ptr, dt_ptr, z_ptr, B_ptr, C_ptr, y_ptr, A2, Dv, bias, lane, g, src, offs_d, mask_d, L,
            s_u_t, s_dt_t, s_z_t, s_B_n, s_C_n, s_y_t)
    if k == 0:
        _lanes_direction(*args, S_B_T, S_C_T, False, HAS_D, HAS_Z, HAS_BIAS, SOFTPLUS, S, G, PACK, PREFETCH, UNROLL)
    else:
        _lanes_direction(*args, S_B_T, S_C_T, True, HAS_D, HAS_Z, HAS_BIAS, SOFTPLUS, S, G, PACK, PREFETCH, UNROLL)
