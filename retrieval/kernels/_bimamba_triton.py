"""Triton kernels of the bidirectional selective scan (imported lazily: see retrieval/kernels/__init__.py).

Layout is time-major with channels contiguous, the layout in_proj's GEMM writes, so no transposes:
u, dt (2, B, L, D); B, C (2, B, L, N), any strides; z (B, L, D) shared by both directions;
A (2, D, N) contiguous; D, bias (2, D); y (B, L, 2, D). Direction 0 scans t = 0 .. L-1, direction 1 scans
t = L-1 .. 0 on the same inputs, so no flipped copies exist anywhere.

These are the segmented kernels: training's forward and backward, and the inference forward where the batch is
too small for the single-pass one (_bimamba_lanes_triton.py, which spreads a channel's states over lanes).
Every kernel here gives each lane one channel and keeps that channel's N states in registers as a tuple
of N (BD,) vectors: per-channel work (softplus, gate, D skip) runs once per channel, B_t and C_t are
scalars every lane reads (four bf16 per 8-byte load where aligned), and nothing crosses lanes but
the backward's sums over channels (dL/dB, dL/dC). exp is exp2 with log2(e) folded into A.

Forward: a program walks one segment of the sequence step by step, the loads of the step PREFETCH
ahead issued before this step's arithmetic. Segments give enough warps to hide the loads' latency: a summary
launch leaves each segment's end state from zero and the sum of its deltas, and the output launch
enters each segment with the state its predecessors leave. With grad, the forward also saves the
state entering every BT-step chunk (fp32, (2, B, n_chunks, N, D)).

Backward: a program walks its segment's chunks against the scan order. Per chunk it recomputes the
states from the saved entry state into a per-program scratch (BT + 1 slots of (N, BD) fp32, reused
chunk after chunk, so it stays in L2), then steps backwards through the chunk with the adjoint
dL/dh in registers. The adjoint entering a segment comes from a summary launch, chained like the
forward's states (the same recurrence, run the other way).
"""
from __future__ import annotations

import triton
import triton.language as tl
from triton.language.extra import libdevice

LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)


@triton.jit
def _softplus(x, SOFTPLUS: tl.constexpr):
    """log(1 + e^x) without overflow, in base 2; below e^-|x| ~ 1e-7 the log term rounds to 0, an absolute
    error < 1e-7. SOFTPLUS == 2 (compiled for a GPU) takes log2 from the hardware's approximate lg2 (one
    instruction, ~2^-22 relative) instead of a libm polynomial; Triton's interpreter has only the latter."""
    e = 1.0 + tl.exp2(-tl.abs(x) * LOG2E)
    if SOFTPLUS == 2:
        lg = libdevice.fast_log2f(e)
    else:
        lg = tl.log2(e)
    return tl.maximum(x, 0.0) + LN2 * lg


@triton.jit
def _delta(dt_raw, bias, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """The step size: softplus(dt + bias) when SOFTPLUS (1: precise, 2: fast log2), else dt + bias."""
    pre = dt_raw + bias if HAS_BIAS else dt_raw
    return _softplus(pre, SOFTPLUS) if SOFTPLUS else pre


@triton.jit
def _zeros(like, N: tl.constexpr):
    """A state of N zero vectors shaped like `like`."""
    h = ()
    for n in tl.static_range(N):
        h = h + (tl.zeros_like(like),)
    return h


@triton.jit
def _load_state(ptr, offs, mask, s_n, N: tl.constexpr):
    """N (BD,) fp32 vectors at ptr + n * s_n + offs: an (N, D) state, channels contiguous."""
    h = ()
    for n in tl.static_range(N):
        h = h + (tl.load(ptr + n * s_n + offs, mask=mask, other=0.0),)
    return h


@triton.jit
def _store_state(ptr, h, offs, mask, s_n, N: tl.constexpr):
    for n in tl.static_range(N):
        tl.store(ptr + n * s_n + offs, h[n], mask=mask)


@triton.jit
def _bf16_to_f32(w):
    """The bf16 in the low 16 bits of int32 w, as fp32 (a bf16 is the top half of an fp32)."""
    return (w << 16).to(tl.float32, bitcast=True)


@triton.jit
def _row_words(ptr, s_n, N: tl.constexpr, PACK: tl.constexpr):
    """Step t's B_t or C_t as loaded: with PACK (values per 8-byte word: 4 bf16 or 2 fp32; the launcher checks
    unit stride and 8-byte alignment) N/PACK int64 words, else N scalars. Every lane reads the same addresses."""
    r = ()
    if PACK:
        p64 = ptr.to(tl.pointer_type(tl.int64))
        for i in tl.static_range(N // PACK):
            r = r + (tl.load(p64 + i),)
    else:
        for n in tl.static_range(N):
            r = r + (tl.load(ptr + n * s_n),)
    return r


@triton.jit
def _unpack(words, N: tl.constexpr, PACK: tl.constexpr):
    """_row_words' result as N fp32 scalars (fp32 words are two registers: nothing to convert)."""
    r = ()
    if PACK == 2:
        for i in tl.static_range(N // 2):
            r = r + (words[i].to(tl.int32).to(tl.float32, bitcast=True),
                     (words[i] >> 32).to(tl.int32).to(tl.float32, bitcast=True))
    elif PACK == 4:
        for i in tl.static_range(N // 4):
            lo = words[i].to(tl.int32)
            hi = (words[i] >> 32).to(tl.int32)
            r = r + (_bf16_to_f32(lo), (lo & -65536).to(tl.float32, bitcast=True),
                     _bf16_to_f32(hi), (hi & -65536).to(tl.float32, bitcast=True))
    else:
        for n in tl.static_range(N):
            r = r + (words[n].to(tl.float32),)
    return r


@triton.jit
def _row(ptr, s_n, N: tl.constexpr, PACK: tl.constexpr):
    """Step t's B_t or C_t as N fp32 scalars."""
    return _unpack(_row_words(ptr, s_n, N, PACK), N, PACK)


@triton.jit
def _clamp_step(t, L):
    """Step t kept inside the sequence: a prefetch past either end reads a valid step (never used) instead of
    masking its loads."""
    return tl.minimum(tl.maximum(t, 0), L - 1)


@triton.jit
def _vec(ptr, t, s_t, offs_d, mask_d):
    return tl.load(ptr + t * s_t + offs_d, mask=mask_d, other=0.0).to(tl.float32)


@triton.jit
def _chain(h, E_ptr, S_ptr, A2, offs_d, mask_d, Dm, seg, n_seg, FROM_END: tl.constexpr, N: tl.constexpr):
    """Carry h through the summaries of segments 0 .. seg-1 (n_seg-1 .. seg+1 when FROM_END), farthest
    first: h <- exp2(A2 S_s) h + E_s, the recurrence's transfer over a whole segment."""
    n_before = n_seg - 1 - seg if FROM_END else seg
    for j in range(n_before):
        s = n_seg - 1 - j if FROM_END else j
        dsum = tl.load(S_ptr + s * Dm + offs_d, mask=mask_d, other=0.0)
        hn = ()
        for n in tl.static_range(N):
            e = tl.load(E_ptr + (s * N + n) * Dm + offs_d, mask=mask_d, other=0.0)
            hn = hn + (tl.exp2(dsum * A2[n]) * h[n] + e,)
        h = hn
    return h


@triton.jit
def _step(h, A2, u, d, Bt, Ct, WITH_Y: tl.constexpr, N: tl.constexpr):
    """h_t = exp2(d A2) h_{t-1} + d u B_t; returns the new state and C_t . h_t (0 unless WITH_Y)."""
    du = d * u
    y = tl.zeros_like(u)
    hn = ()
    for n in tl.static_range(N):
        x = tl.exp2(d * A2[n]) * h[n] + du * Bt[n]
        hn = hn + (x,)
        if WITH_Y:
            y += x * Ct[n]
    return hn, y


@triton.jit
def _program(A_ptr, D_ptr, bias_ptr, Dm, HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, EVEN_D: tl.constexpr,
             BD: tl.constexpr, N: tl.constexpr):
    """This program's (channel block, batch, segment, direction), channels, and per-channel parameters."""
    pid_d, pid_bs, k = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_d = pid_d * BD + tl.arange(0, BD)
    if EVEN_D:
        mask_d = tl.full([BD], 1, tl.int1)
    else:
        mask_d = offs_d < Dm
    A = _load_state(A_ptr + k * Dm * N, offs_d * N, mask_d, 1, N)  # A as (2, D, N), read once
    A2 = ()
    for n in tl.static_range(N):
        A2 = A2 + (A[n] * LOG2E,)
    Dv = tl.load(D_ptr + k * Dm + offs_d, mask=mask_d, other=0.0) if HAS_D else None
    bias = tl.load(bias_ptr + k * Dm + offs_d, mask=mask_d, other=0.0) if HAS_BIAS else None
    return pid_d, pid_bs, k, offs_d, mask_d, A2, Dv, bias


# --- forward ---


@triton.jit
def _fwd_loads(u_ptr, dt_ptr, B_ptr, C_ptr, z_ptr, t, s_u_t, s_dt_t, s_B_t, s_B_n, s_C_t, s_C_n, s_z_t,
               offs_d, mask_d, SUMMARY: tl.constexpr, HAS_Z: tl.constexpr, N: tl.constexpr, PACK: tl.constexpr):
    """Step t's inputs as the forward consumes them: u, dt, B_t and C_t as loaded words (kept packed until
    used: fewer live registers), z; the summary pass reads no C and no z."""
    u, d = _vec(u_ptr, t, s_u_t, offs_d, mask_d), _vec(dt_ptr, t, s_dt_t, offs_d, mask_d)
    Bw = _row_words(B_ptr + t * s_B_t, s_B_n, N, PACK)
    Cw = Bw if SUMMARY else _row_words(C_ptr + t * s_C_t, s_C_n, N, PACK)
    z = _vec(z_ptr, t, s_z_t, offs_d, mask_d) if HAS_Z and not SUMMARY else u
    return u, d, Bw, Cw, z


@triton.jit
def _fwd_direction(u_ptr, dt_ptr, B_ptr, C_ptr, z_ptr, y_ptr, h_ptr, E_ptr, S_ptr, A2, Dv, bias,
                   offs_d, mask_d, L, Dm, seg, seg_len, n_seg,
                   s_u_t, s_dt_t, s_B_t, s_B_n, s_C_t, s_C_n, s_z_t, s_y_t, s_h_c,
                   REVERSE: tl.constexpr, SUMMARY: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
                   HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, SAVE: tl.constexpr,
                   BT: tl.constexpr, N: tl.constexpr, PACK: tl.constexpr, UNROLL: tl.constexpr,
                   PREFETCH: tl.constexpr):
    t0 = seg * seg_len
    t1 = tl.minimum(t0 + seg_len, L)
    h = _zeros(A2[0], N)
    if not SUMMARY:  # enter with what the segments before this one (in scan order) leave behind
        h = _chain(h, E_ptr, S_ptr, A2, offs_d, mask_d, Dm, seg, n_seg, REVERSE, N)
    dsum = tl.zeros_like(A2[0])
    # Software-pipelined by hand: step t+PREFETCH's loads are issued before step t's arithmetic.
    dir_step = -1 if REVERSE else 1
    t = t1 - 1 if REVERSE else t0
    ahead = ()
    for p in tl.static_range(PREFETCH):
        tp = _clamp_step(t + p * dir_step, L)
        ahead = ahead + (_fwd_loads(u_ptr, dt_ptr, B_ptr, C_ptr, z_ptr, tp, s_u_t, s_dt_t, s_B_t, s_B_n, s_C_t,
                                    s_C_n, s_z_t, offs_d, mask_d, SUMMARY, HAS_Z, N, PACK),)
    for i in tl.range(t1 - t0, loop_unroll_factor=UNROLL):
        tn = _clamp_step(t + PREFETCH * dir_step, L)
        later = _fwd_loads(u_ptr, dt_ptr, B_ptr, C_ptr, z_ptr, tn, s_u_t, s_dt_t, s_B_t, s_B_n, s_C_t, s_C_n,
                           s_z_t, offs_d, mask_d, SUMMARY, HAS_Z, N, PACK)
        u, d, Bw, Cw, z = ahead[0]
        if SAVE:  # the state entering each BT-step chunk (scan order), which the backward starts from
            if REVERSE:
                if ((t + 1) % BT == 0) | (t == L - 1):
                    _store_state(h_ptr + (t // BT) * s_h_c, h, offs_d, mask_d, Dm, N)
            else:
                if t % BT == 0:
                    _store_state(h_ptr + (t // BT) * s_h_c, h, offs_d, mask_d, Dm, N)
        d = _delta(d, bias, HAS_BIAS, SOFTPLUS)
        Bt = _unpack(Bw, N, PACK)
        h, y = _step(h, A2, u, d, Bt, Bt if SUMMARY else _unpack(Cw, N, PACK), not SUMMARY, N)
        if SUMMARY:
            dsum += d
        else:
            if HAS_D:
                y += Dv * u
            if HAS_Z:
                y = y * z * tl.sigmoid(z)
            tl.store(y_ptr + t * s_y_t + offs_d, y.to(y_ptr.dtype.element_ty), mask=mask_d)
        ahead = ahead[1:] + (later,)
        t += dir_step
    if SUMMARY:
        _store_state(E_ptr + seg * N * Dm, h, offs_d, mask_d, Dm, N)
        tl.store(S_ptr + seg * Dm + offs_d, dsum, mask=mask_d)


@triton.jit
def bimamba_fwd_kernel(u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, z_ptr, y_ptr, h_ptr, E_ptr, S_ptr,
                       L, Dm, seg_len, n_seg,
                       s_u_k, s_u_b, s_u_t, s_dt_k, s_dt_b, s_dt_t,
                       s_B_k, s_B_b, s_B_t, s_B_n, s_C_k, s_C_b, s_C_t, s_C_n,
                       s_z_b, s_z_t, s_y_b, s_y_t, s_y_k, s_h_k, s_h_b, s_h_c,
                       SUMMARY: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
                       SOFTPLUS: tl.constexpr, SAVE: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr,
                       N: tl.constexpr, PACK: tl.constexpr, EVEN_D: tl.constexpr, UNROLL: tl.constexpr,
                       PREFETCH: tl.constexpr):
    """Grid (channel blocks, batch x segments, direction); a SUMMARY launch first when segments > 1."""
    pid_d, pid_bs, k, offs_d, mask_d, A2, Dv, bias = _program(A_ptr, D_ptr, bias_ptr, Dm, HAS_D, HAS_BIAS,
                                                              EVEN_D, BD, N)
    b, seg = pid_bs // n_seg, pid_bs % n_seg
    u_ptr += k * s_u_k + b * s_u_b
    dt_ptr += k * s_dt_k + b * s_dt_b
    B_ptr += k * s_B_k + b * s_B_b
    C_ptr += k * s_C_k + b * s_C_b
    z_ptr += b * s_z_b
    y_ptr += b * s_y_b + k * s_y_k
    h_ptr += k * s_h_k + b * s_h_b
    E_ptr += (k * tl.num_programs(1) + b * n_seg) * N * Dm
    S_ptr += (k * tl.num_programs(1) + b * n_seg) * Dm
    args = (u_ptr, dt_ptr, B_ptr, C_ptr, z_ptr, y_ptr, h_ptr, E_ptr, S_ptr, A2, Dv, bias,
            offs_d, mask_d, L, Dm, seg, seg_len, n_seg,
            s_u_t, s_dt_t, s_B_t, s_B_n, s_C_t, s_C_n, s_z_t, s_y_t, s_h_c)
    if k == 0:
        _fwd_direction(*args, False, SUMMARY, HAS_D, HAS_Z, HAS_BIAS, SOFTPLUS, SAVE, BT, N, PACK, UNROLL,
                       PREFETCH)
    else:
        _fwd_direction(*args, True, SUMMARY, HAS_D, HAS_Z, HAS_BIAS, SOFTPLUS, SAVE, BT, N, PACK, UNROLL,
                       PREFETCH)


# --- backward ---


@triton.jit
def _lane_swap(x, lane, K: tl.constexpr):
    """x of lane ^ K (a warp shuffle on the GPU)."""
    return tl.gather(x, lane ^ K, 0)


@triton.jit
def _halve(v, lane, K: tl.constexpr):
    """One reduce-scatter stage: lanes pair up across bit K; each keeps the half of v (2K values) its
    bit selects, plus its partner's copy of that half."""
    upper = (lane & K) != 0
    out = ()
    for j in tl.static_range(K):
        keep = tl.where(upper, v[j + K], v[j])
        give = tl.where(upper, v[j], v[j + K])
        out = out + (keep + _lane_swap(give, lane, K),)
    return out


@triton.jit
def _store_channel_sums(ptr, v, lane, mask_d, BD: tl.constexpr, NV: tl.constexpr):
    """ptr[i] = sum over the program's lanes of v[i], for the NV (BD,) vectors of v. With NV == BD
    (d_state 16, 32 channels per program: the model's case) a reduce-scatter of 31 lane swaps leaves
    sum i on lane i, and one coalesced store writes them all; otherwise one reduction per value."""
    if NV == BD:
        masked = ()
        for i in tl.static_range(NV):
            masked = masked + (tl.where(mask_d, v[i], 0.0),)
        v = masked
        for s in tl.static_range(BD.bit_length() - 1):  # log2(BD) halvings
            v = _halve(v, lane, BD >> (s + 1))
        tl.store(ptr + lane, v[0])
    else:
        for i in tl.static_range(NV):
            tl.store(ptr + i, tl.sum(tl.where(mask_d, v[i], 0.0), axis=0))


@triton.jit
def _bwd_summary_loads(dt_ptr, C_ptr, z_ptr, g_ptr, t, s_dt_t, s_C_t, s_C_n, s_z_t, s_g_t, offs_d, mask_d,
                       HAS_Z: tl.constexpr, N: tl.constexpr, PACK: tl.constexpr):
    """Step t's inputs to the adjoint summary: dt, dL/dy, z (dL/dy again without a gate), C_t's words."""
    g = _vec(g_ptr, t, s_g_t, offs_d, mask_d)
    z = _vec(z_ptr, t, s_z_t, offs_d, mask_d) if HAS_Z else g
    return _vec(dt_ptr, t, s_dt_t, offs_d, mask_d), g, z, _row_words(C_ptr + t * s_C_t, s_C_n, N, PACK)


@triton.jit
def _bwd_summary_direction(dt_ptr, C_ptr, z_ptr, g_ptr, E_ptr, S_ptr, A2, bias, offs_d, mask_d, L, Dm,
                           seg, seg_chunks, s_dt_t, s_C_t, s_C_n, s_z_t, s_g_t,
                           REVERSE: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
                           SOFTPLUS: tl.constexpr, BT: tl.constexpr, N: tl.constexpr, PACK: tl.constexpr,
                           PREFETCH: tl.constexpr):
    """The adjoint's segment summary: r = a_first dL/dh_first (what flows out of the segment's first step,
    in scan order, into the step before it) from a zero inflow, and the sum of the segment's deltas.
    With PREFETCH > 0, step t+PREFETCH's loads (against the scan order) are issued before step t's work."""
    lo = seg * seg_chunks * BT
    hi = tl.minimum(lo + seg_chunks * BT, L)
    r = _zeros(A2[0], N)
    dsum = tl.zeros_like(A2[0])
    dir_step = 1 if REVERSE else -1  # against the scan order
    t = lo if REVERSE else hi - 1
    ahead = ()
    for p in tl.static_range(PREFETCH):
        tp = _clamp_step(t + p * dir_step, L)
        ahead = ahead + (_bwd_summary_loads(dt_ptr, C_ptr, z_ptr, g_ptr, tp, s_dt_t, s_C_t, s_C_n, s_z_t, s_g_t,
                                            offs_d, mask_d, HAS_Z, N, PACK),)
    for j in range(hi - lo):
        if PREFETCH > 0:
            tn = _clamp_step(t + PREFETCH * dir_step, L)
            later = _bwd_summary_loads(dt_ptr, C_ptr, z_ptr, g_ptr, tn, s_dt_t, s_C_t, s_C_n, s_z_t, s_g_t,
                                       offs_d, mask_d, HAS_Z, N, PACK)
            dt, g, z, Cw = ahead[0]
            ahead = ahead[1:] + (later,)
        else:  # t from j rather than carried: the code before prefetching, and its SASS
            t = lo + j if REVERSE else hi - 1 - j
            dt, g, z, Cw = _bwd_summary_loads(dt_ptr, C_ptr, z_ptr, g_ptr, t, s_dt_t, s_C_t, s_C_n, s_z_t, s_g_t,
                                              offs_d, mask_d, HAS_Z, N, PACK)
        d = _delta(dt, bias, HAS_BIAS, SOFTPLUS)
        if HAS_Z:
            g = g * z * tl.sigmoid(z)
        Ct = _unpack(Cw, N, PACK)
        rn = ()
        for n in tl.static_range(N):
            rn = rn + (tl.exp2(d * A2[n]) * (g * Ct[n] + r[n]),)
        r = rn
        dsum += d
        t += dir_step
    _store_state(E_ptr + seg * N * Dm, r, offs_d, mask_d, Dm, N)
    tl.store(S_ptr + seg * Dm + offs_d, dsum, mask=mask_d)


@triton.jit
def _recompute_chunk(u_ptr, dt_ptr, B_ptr, h, w_ptr, A2, bias, offs_d, mask_d, lane, lo, hi,
                     s_u_t, s_dt_t, s_B_t, s_B_n, REVERSE: tl.constexpr, HAS_BIAS: tl.constexpr,
                     SOFTPLUS: tl.constexpr, BD: tl.constexpr, N: tl.constexpr, PACK: tl.constexpr):
    """The chunk's states in scan order into the scratch: slot 0 the entry state, slot j+1 the state
    after the chunk's j-th step. Returns the state after its last step."""
    _store_state(w_ptr, h, lane, mask_d, BD, N)
    for j in range(hi - lo):
        t = hi - 1 - j if REVERSE else lo + j
        d = _delta(_vec(dt_ptr, t, s_dt_t, offs_d, mask_d), bias, HAS_BIAS, SOFTPLUS)
        Bt = _row(B_ptr + t * s_B_t, s_B_n, N, PACK)
        h, _ = _step(h, A2, _vec(u_ptr, t, s_u_t, offs_d, mask_d), d, Bt, Bt, False, N)
        _store_state(w_ptr + (j + 1) * N * BD, h, lane, mask_d, BD, N)
    return h


@triton.jit
def _bwd_direction(u_ptr, dt_ptr, B_ptr, C_ptr, z_ptr, g_ptr, h_ptr, w_ptr,
                   gu_ptr, gdt_ptr, gBC_ptr, gz_ptr, gA_ptr, gD_ptr, gbias_ptr, E_ptr, S_ptr,
                   A2, Dv, bias, offs_d, mask_d, L, Dm, n_chunks, seg, n_seg, seg_chunks,
                   s_u_t, s_dt_t, s_B_t, s_B_n, s_C_t, s_C_n, s_z_t, s_g_t, s_h_c, s_gx_t, s_gbc_t, s_gz_t,
                   REVERSE: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
                   SOFTPLUS: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr, N: tl.constexpr,
                   PACK: tl.constexpr):
    lane = tl.arange(0, BD)
    # r: a_{t+1} dL/dh_{t+1}, what flows into step t from the step after it in scan order.
    r = _chain(_zeros(A2[0], N), E_ptr, S_ptr, A2, offs_d, mask_d, Dm, seg, n_seg, not REVERSE, N)
    gA = _zeros(A2[0], N)
    gD = tl.zeros_like(A2[0])
    gbias = tl.zeros_like(A2[0])
    c0 = seg * seg_chunks
    c1 = tl.minimum(c0 + seg_chunks, n_chunks)
    for i in range(c1 - c0):
        c = c0 + i if REVERSE else c1 - 1 - i  # chunks against the scan order
        lo = c * BT
        hi = tl.minimum(lo + BT, L)
        h = _recompute_chunk(u_ptr, dt_ptr, B_ptr, _load_state(h_ptr + c * s_h_c, offs_d, mask_d, Dm, N), w_ptr,
                             A2, bias, offs_d, mask_d, lane, lo, hi, s_u_t, s_dt_t, s_B_t, s_B_n,
                             REVERSE, HAS_BIAS, SOFTPLUS, BD, N, PACK)
        for j in range(hi - lo):
            jj = hi - lo - 1 - j  # the step's position in the chunk, in scan order
            t = lo + jj if not REVERSE else hi - 1 - jj
            u = _vec(u_ptr, t, s_u_t, offs_d, mask_d)
            pre = _vec(dt_ptr, t, s_dt_t, offs_d, mask_d)
            pre = pre + bias if HAS_BIAS else pre
            d = _softplus(pre, SOFTPLUS) if SOFTPLUS else pre
            g = _vec(g_ptr, t, s_g_t, offs_d, mask_d)
            Bt = _row(B_ptr + t * s_B_t, s_B_n, N, PACK)
            Ct = _row(C_ptr + t * s_C_t, s_C_n, N, PACK)
            h_prev = _load_state(w_ptr + jj * N * BD, lane, mask_d, BD, N)
            if HAS_Z:  # the gate needs y_t = C_t . h_t + D u_t
                z = _vec(z_ptr, t, s_z_t, offs_d, mask_d)
                y = Dv * u if HAS_D else tl.zeros_like(u)
                for n in tl.static_range(N):
                    y += Ct[n] * h[n]
                sz = tl.sigmoid(z)
                tl.store(gz_ptr + t * s_gz_t + offs_d, g * y * sz * (1.0 + z * (1.0 - sz)), mask=mask_d)
                g = g * z * sz  # dL/dy before the gate
            du = d * u
            gx = tl.zeros_like(u)
            gq = tl.zeros_like(u)
            rn = ()
            gAn = ()
            sums = ()  # per-lane shares of dL/dB_t (first N) and dL/dC_t (last N)
            for n in tl.static_range(N):
                gh = g * Ct[n] + r[n]  # dL/dh_t
                sums = sums + (gh * du,)
                gx += gh * Bt[n]
                p = tl.exp2(d * A2[n]) * gh
                q = p * h_prev[n]  # dL/dA_n = sum_t q d_t; dL/dd_t gets sum_n q A_n
                gAn = gAn + (gA[n] + q * d,)
                gq += q * A2[n]
                rn = rn + (p,)
            for n in tl.static_range(N):
                sums = sums + (g * h[n],)
            _store_channel_sums(gBC_ptr + t * s_gbc_t, sums, lane, mask_d, BD, 2 * N)
            r = rn
            gA = gAn
            gdelta = gq * LN2 + gx * u
            gu = gx * d
            if HAS_D:
                gu += Dv * g
                gD += g * u
            if SOFTPLUS:
                gdelta = gdelta * tl.sigmoid(pre)
            gdelta = tl.where(mask_d, gdelta, 0.0)
            gbias += gdelta
            tl.store(gu_ptr + t * s_gx_t + offs_d, gu, mask=mask_d)
            tl.store(gdt_ptr + t * s_gx_t + offs_d, gdelta, mask=mask_d)
            h = h_prev
    _store_state(gA_ptr, gA, offs_d, mask_d, Dm, N)
    if HAS_D:
        tl.store(gD_ptr + offs_d, gD, mask=mask_d)
    if HAS_BIAS:
        tl.store(gbias_ptr + offs_d, gbias, mask=mask_d)


@triton.jit
def bimamba_bwd_kernel(u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, z_ptr, g_ptr, h_ptr, w_ptr,
                       gu_ptr, gdt_ptr, gBC_ptr, gz_ptr, gA_ptr, gD_ptr, gbias_ptr, E_ptr, S_ptr,
                       L, Dm, n_chunks, n_seg, seg_chunks,
                       s_u_k, s_u_b, s_u_t, s_dt_k, s_dt_b, s_dt_t,
                       s_B_k, s_B_b, s_B_t, s_B_n, s_C_k, s_C_b, s_C_t, s_C_n,
                       s_z_b, s_z_t, s_g_b, s_g_t, s_g_k, s_h_k, s_h_b, s_h_c,
                       s_gx_k, s_gx_b, s_gx_t, s_gbc_p, s_gbc_k, s_gbc_b, s_gbc_t, s_gz_k, s_gz_b, s_gz_t,
                       SUMMARY: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
                       SOFTPLUS: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr, N: tl.constexpr,
                       PACK: tl.constexpr, EVEN_D: tl.constexpr, PREFETCH: tl.constexpr = 0):
    """Grid and segments as in bimamba_fwd_kernel (segments of whole chunks). Partial sums the launcher
    adds up: dL/dB and dL/dC per channel block, (n_dblk, 2, B, L, 2N); dL/dA, dL/dD, dL/dbias per
    (direction, batch, segment)."""
    pid_d, pid_bs, k, offs_d, mask_d, A2, Dv, bias = _program(A_ptr, D_ptr, bias_ptr, Dm, HAS_D, HAS_BIAS,
                                                              EVEN_D, BD, N)
    b, seg = pid_bs // n_seg, pid_bs % n_seg
    u_ptr += k * s_u_k + b * s_u_b
    dt_ptr += k * s_dt_k + b * s_dt_b
    B_ptr += k * s_B_k + b * s_B_b
    C_ptr += k * s_C_k + b * s_C_b
    z_ptr += b * s_z_b
    g_ptr += b * s_g_b + k * s_g_k
    E_ptr += (k * tl.num_programs(1) + b * n_seg) * N * Dm
    S_ptr += (k * tl.num_programs(1) + b * n_seg) * Dm
    if SUMMARY:
        args = (dt_ptr, C_ptr, z_ptr, g_ptr, E_ptr, S_ptr, A2, bias, offs_d, mask_d, L, Dm,
                seg, seg_chunks, s_dt_t, s_C_t, s_C_n, s_z_t, s_g_t)
        if k == 0:
            _bwd_summary_direction(*args, False, HAS_Z, HAS_BIAS, SOFTPLUS, BT, N, PACK, PREFETCH)
        else:
            _bwd_summary_direction(*args, True, HAS_Z, HAS_BIAS, SOFTPLUS, BT, N, PACK, PREFETCH)
    else:
        part = k * tl.num_programs(1) + pid_bs  # this program's row of the dL/dA, dL/dD, dL/dbias sums
        w_ptr += (part * tl.num_programs(0) + pid_d) * (BT + 1) * N * BD
        h_ptr += k * s_h_k + b * s_h_b
        gu_ptr += k * s_gx_k + b * s_gx_b
        gdt_ptr += k * s_gx_k + b * s_gx_b
        gBC_ptr += pid_d * s_gbc_p + k * s_gbc_k + b * s_gbc_b
        gz_ptr += k * s_gz_k + b * s_gz_b
        gA_ptr += part * N * Dm
        gD_ptr += part * Dm
        gbias_ptr += part * Dm
        args = (u_ptr, dt_ptr, B_ptr, C_ptr, z_ptr, g_ptr, h_ptr, w_ptr, gu_ptr, gdt_ptr, gBC_ptr, gz_ptr,
                gA_ptr, gD_ptr, gbias_ptr, E_ptr, S_ptr, A2, Dv, bias, offs_d, mask_d, L, Dm, n_chunks,
                seg, n_seg, seg_chunks,
                s_u_t, s_dt_t, s_B_t, s_B_n, s_C_t, s_C_n, s_z_t, s_g_t, s_h_c, s_gx_t, s_gbc_t, s_gz_t)
        if k == 0:
            _bwd_direction(*args, False, HAS_D, HAS_Z, HAS_BIAS, SOFTPLUS, BT, BD, N, PACK)
        else:
            _bwd_direction(*args, True, HAS_D, HAS_Z, HAS_BIAS, SOFTPLUS, BT, BD, N, PACK)
