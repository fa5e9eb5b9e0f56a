"""Triton kernels of the bidirectional selective scan (imported lazily: see retrieval/kernels/__init__.py).

Layout is time-major with channels contiguous, the layout in_proj's GEMM writes, so no transposes:
u, dt (2, B, L, D); B, C (2, B, L, N), any strides; z (B, L, D) shared by both directions;
A (2, D, N); D, bias (2, D); y (B, L, 2, D). Direction 0 scans t = 0 .. L-1, direction 1 scans
t = L-1 .. 0 on the same inputs, so no flipped copies exist anywhere.

Forward: each thread owns one channel and its N states in registers and steps through the sequence
(mamba-ssm's layout: per step ~N exp2 and 2N FMAs per thread, no cross-thread traffic, the next step's
loads issued before this step's arithmetic). The sequence is cut into segments so that enough warps
run: a summary launch leaves each segment's end state from zero and its decay exponent, and the output
launch starts each segment from the states its predecessors leave. exp is exp2 with log2(e) folded
into A. The forward also saves the state entering every BT-step chunk (fp32, (2, B, n_chunks, N, D)).

Backward: one program per (channel block, batch x segment, direction) walks its chunks against the
scan order; inside a chunk the states are recomputed from the saved entry state and the adjoint
dL/dh runs backwards, both as `tl.associative_scan`s over (a, b) pairs of a (BT, BD, N) tile; the
adjoint entering each segment comes from a summary launch, as in the forward.
"""
from __future__ import annotations

import triton
import triton.language as tl

LOG2E = tl.constexpr(1.4426950408889634)


@triton.jit
def _combine(a1, b1, a2, b2):
    # (a1, b1) is the part already scanned; as a map h -> a h + b, apply it first.
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _softplus(x):
    # log(1 + e^x) without overflow; below e^-|x| ~ 1e-7 the log term rounds to 0, an absolute error < 1e-7.
    return tl.maximum(x, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(x)))


@triton.jit
def _delta(dt_ptr, mask, bias, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """softplus(dt + bias) as asked, (BT, BD) fp32, 0 where masked (those steps then change nothing)."""
    d = tl.load(dt_ptr, mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        d = d + bias[None, :]
    if SOFTPLUS:
        d = _softplus(d)
    return tl.where(mask, d, 0.0)


@triton.jit
def _adjoint_inflow(E_ptr, S_ptr, A2, offs_d, mask_d, Dm, seg, n_seg,
                    REVERSE: tl.constexpr, BD: tl.constexpr, NP: tl.constexpr, N: tl.constexpr):
    """dL/dh entering segment seg from the segments after it in scan order, chained from their summaries."""
    offs_n = tl.arange(0, NP)
    mask_dn = mask_d[:, None] & (offs_n[None, :] < N)
    G = tl.zeros([BD, NP], dtype=tl.float32)
    n_after = seg if REVERSE else n_seg - 1 - seg
    for j in range(n_after):
        sp = j if REVERSE else n_seg - 1 - j  # the farthest segment first
        E = tl.load(E_ptr + sp * Dm * N + offs_d[:, None] * N + offs_n[None, :], mask=mask_dn, other=0.0)
        dsum = tl.load(S_ptr + sp * Dm + offs_d, mask=mask_d, other=0.0)
        G = tl.exp2(dsum[:, None] * A2) * G + E
    return G


@triton.jit
def _bwd_summary_direction(dt_ptr, C_ptr, z_ptr, g_ptr, E_ptr, S_ptr, A2, bias, offs_d, mask_d, L, Dm,
                           n_chunks, seg, seg_chunks, s_dt_t, s_C_t, s_C_n, s_z_t, s_g_t,
                           REVERSE: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
                           SOFTPLUS: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr, NP: tl.constexpr,
                           N: tl.constexpr):
    """Segment summary of the adjoint: dL/dh at the segment's first step from a zero inflow, and the
    exponent of its decay (sum of the next steps' delta); needs neither u, B nor the states."""
    offs_t = tl.arange(0, BT)
    offs_n = tl.arange(0, NP)
    mask_n = offs_n < N
    FIRST: tl.constexpr = BT - 1 if REVERSE else 0
    STEP: tl.constexpr = -1 if REVERSE else 1
    c0 = seg * seg_chunks
    c1 = tl.minimum(c0 + seg_chunks, n_chunks)
    G = tl.zeros([BD, NP], dtype=tl.float32)
    dsum = tl.zeros([BD], dtype=tl.float32)
    for i in range(c1 - c0):
        c = c0 + i if REVERSE else c1 - 1 - i
        t = c * BT + offs_t
        mask_t = t < L
        m2 = mask_t[:, None] & mask_d[None, :]
        mtn = mask_t[:, None] & mask_n[None, :]
        Cv = tl.load(C_ptr + t[:, None] * s_C_t + offs_n[None, :] * s_C_n, mask=mtn, other=0.0).to(tl.float32)
        g = tl.load(g_ptr + t[:, None] * s_g_t + offs_d[None, :], mask=m2, other=0.0).to(tl.float32)
        if HAS_Z:
            z = tl.load(z_ptr + t[:, None] * s_z_t + offs_d[None, :], mask=m2, other=0.0).to(tl.float32)
            g = g * z * tl.sigmoid(z)
        ts = t + STEP
        ms2 = ((ts >= 0) & (ts < L) & mask_t)[:, None] & mask_d[None, :]
        d_next = _delta(dt_ptr + ts[:, None] * s_dt_t + offs_d[None, :], ms2, bias, HAS_BIAS, SOFTPLUS)
        a_next = tl.exp2(d_next[:, :, None] * A2[None, :, :])
        w = g[:, :, None] * Cv[:, None, :]
        gcum, ghloc = tl.associative_scan((a_next, w), 0, _combine, reverse=not REVERSE)
        gh = ghloc + gcum * G[None, :, :]
        G = tl.sum(tl.where(offs_t[:, None, None] == FIRST, gh, 0.0), axis=0)
        dsum += tl.sum(d_next, axis=0)
    tl.store(E_ptr + seg * Dm * N + offs_d[:, None] * N + offs_n[None, :], G,
             mask=mask_d[:, None] & mask_n[None, :])
    tl.store(S_ptr + seg * Dm + offs_d, dsum, mask=mask_d)


@triton.jit
def _bwd_direction(u_ptr, dt_ptr, B_ptr, C_ptr, z_ptr, g_ptr, h_ptr,
                   gu_ptr, gdt_ptr, gB_ptr, gC_ptr, gz_ptr, gA_ptr, gD_ptr, gbias_ptr, E_ptr, S_ptr,
                   A, A2, Dv, bias, offs_d, mask_d, L, Dm, n_chunks, seg, n_seg, seg_chunks,
                   s_u_t, s_dt_t, s_B_t, s_B_n, s_C_t, s_C_n, s_z_t, s_g_t, s_h_c, s_gx_t, s_gbc_t, s_gz_t,
                   REVERSE: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
                   SOFTPLUS: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr, NP: tl.constexpr,
                   N: tl.constexpr):
    offs_t = tl.arange(0, BT)
    offs_n = tl.arange(0, NP)
    mask_n = offs_n < N
    mask_dn = mask_d[:, None] & mask_n[None, :]
    FIRST: tl.constexpr = BT - 1 if REVERSE else 0  # the chunk's first step in scan order
    STEP: tl.constexpr = -1 if REVERSE else 1  # the next step in scan order is t + STEP
    # dL/dh of the step after the chunk, in scan order
    G = _adjoint_inflow(E_ptr, S_ptr, A2, offs_d, mask_d, Dm, seg, n_seg, REVERSE, BD, NP, N)
    gA = tl.zeros([BD, NP], dtype=tl.float32)
    gD = tl.zeros([BD], dtype=tl.float32)
    gbias = tl.zeros([BD], dtype=tl.float32)
    c0 = seg * seg_chunks
    c1 = tl.minimum(c0 + seg_chunks, n_chunks)
    for i in range(c1 - c0):
        c = c0 + i if REVERSE else c1 - 1 - i  # chunks against the scan order
        t = c * BT + offs_t
        mask_t = t < L
        m2 = mask_t[:, None] & mask_d[None, :]
        mtn = mask_t[:, None] & mask_n[None, :]
        u = tl.load(u_ptr + t[:, None] * s_u_t + offs_d[None, :], mask=m2, other=0.0).to(tl.float32)
        dt_raw = tl.load(dt_ptr + t[:, None] * s_dt_t + offs_d[None, :], mask=m2, other=0.0).to(tl.float32)
        pre = dt_raw + bias[None, :] if HAS_BIAS else dt_raw
        delta = tl.where(m2, _softplus(pre) if SOFTPLUS else pre, 0.0)
        Bv = tl.load(B_ptr + t[:, None] * s_B_t + offs_n[None, :] * s_B_n, mask=mtn, other=0.0).to(tl.float32)
        Cv = tl.load(C_ptr + t[:, None] * s_C_t + offs_n[None, :] * s_C_n, mask=mtn, other=0.0).to(tl.float32)
        g = tl.load(g_ptr + t[:, None] * s_g_t + offs_d[None, :], mask=m2, other=0.0).to(tl.float32)
        # Recompute this chunk's states from the saved entry state.
        a = tl.exp2(delta[:, :, None] * A2[None, :, :])  # (BT, BD, NP)
        x = delta * u
        bx = x[:, :, None] * Bv[:, None, :]
        acum, hloc = tl.associative_scan((a, bx), 0, _combine, reverse=REVERSE)
        h_in = tl.load(h_ptr + c * s_h_c + offs_n[None, :] * Dm + offs_d[:, None], mask=mask_dn, other=0.0)
        hs = hloc + acum * h_in[None, :, :]
        if HAS_Z:
            z = tl.load(z_ptr + t[:, None] * s_z_t + offs_d[None, :], mask=m2, other=0.0).to(tl.float32)
            sz = tl.sigmoid(z)
            y = tl.sum(hs * Cv[:, None, :], axis=2)
            if HAS_D:
                y = y + Dv[None, :] * u
            gz = g * y * sz * (1.0 + z * (1.0 - sz))
            tl.store(gz_ptr + t[:, None] * s_gz_t + offs_d[None, :], gz, mask=m2)
            g = g * z * sz  # dL/dy before the gate
        # Adjoint gh_t = C_t g_t + a_{t+STEP} gh_{t+STEP}, against the scan order, entering with G.
        ts = t + STEP
        ms = (ts >= 0) & (ts < L)
        ms2 = ms[:, None] & mask_d[None, :]
        d_next = _delta(dt_ptr + ts[:, None] * s_dt_t + offs_d[None, :], ms2, bias, HAS_BIAS, SOFTPLUS)
        a_next = tl.exp2(d_next[:, :, None] * A2[None, :, :])
        w = g[:, :, None] * Cv[:, None, :]
        gcum, ghloc = tl.associative_scan((a_next, w), 0, _combine, reverse=not REVERSE)
        gh = ghloc + gcum * G[None, :, :]
        G = tl.sum(tl.where(offs_t[:, None, None] == FIRST, gh, 0.0), axis=0)
        # Gradients of this chunk's inputs.
        gC = tl.sum(g[:, :, None] * hs, axis=1)  # (BT, NP): this channel block's share
        gB = tl.sum(gh * x[:, :, None], axis=1)
        tl.atomic_add(gC_ptr + t[:, None] * s_gbc_t + offs_n[None, :], gC, mask=mtn)
        tl.atomic_add(gB_ptr + t[:, None] * s_gbc_t + offs_n[None, :], gB, mask=mtn)
        gx = tl.sum(gh * Bv[:, None, :], axis=2)  # (BT, BD)
        gq = gh * (hs - bx)  # dL/d(log a_t) = gh_t a_t h_prev
        gA += tl.sum(gq * delta[:, :, None], axis=0)
        gdelta = tl.sum(gq * A[None, :, :], axis=2) + gx * u
        gu = gx * delta
        if HAS_D:
            gu += Dv[None, :] * g
            gD += tl.sum(g * u, axis=0)
        if SOFTPLUS:
            gdelta = gdelta * tl.sigmoid(pre)
        gdelta = tl.where(m2, gdelta, 0.0)
        gbias += tl.sum(gdelta, axis=0)
        tl.store(gu_ptr + t[:, None] * s_gx_t + offs_d[None, :], gu, mask=m2)
        tl.store(gdt_ptr + t[:, None] * s_gx_t + offs_d[None, :], gdelta, mask=m2)
    tl.atomic_add(gA_ptr + offs_d[:, None] * N + offs_n[None, :], gA, mask=mask_dn)
    if HAS_D:
        tl.atomic_add(gD_ptr + offs_d, gD, mask=mask_d)
    if HAS_BIAS:
        tl.atomic_add(gbias_ptr + offs_d, gbias, mask=mask_d)


@triton.jit
def bimamba_bwd_kernel(u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, z_ptr, g_ptr, h_ptr,
                       gu_ptr, gdt_ptr, gB_ptr, gC_ptr, gz_ptr, gA_ptr, gD_ptr, gbias_ptr, E_ptr, S_ptr,
                       L, Dm, n_chunks, n_seg, seg_chunks,
                       s_u_k, s_u_b, s_u_t, s_dt_k, s_dt_b, s_dt_t,
                       s_B_k, s_B_b, s_B_t, s_B_n, s_C_k, s_C_b, s_C_t, s_C_n,
                       s_z_b, s_z_t, s_g_b, s_g_t, s_g_k, s_h_k, s_h_b, s_h_c,
                       s_gx_k, s_gx_b, s_gx_t, s_gbc_k, s_gbc_b, s_gbc_t, s_gz_k, s_gz_b, s_gz_t,
                       SUMMARY: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
                       SOFTPLUS: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr, NP: tl.constexpr,
                       N: tl.constexpr):
    """Grid and segments as in bimamba_fwd_kernel: a SUMMARY launch for the adjoint, then the gradients."""
    pid_d, pid_bs, k = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    b, seg = pid_bs // n_seg, pid_bs % n_seg
    offs_d = pid_d * BD + tl.arange(0, BD)
    mask_d = offs_d < Dm
    offs_n = tl.arange(0, NP)
    A = tl.load(A_ptr + k * Dm * N + offs_d[:, None] * N + offs_n[None, :],
                mask=mask_d[:, None] & (offs_n[None, :] < N), other=0.0)
    A2 = A * LOG2E
    Dv = tl.load(D_ptr + k * Dm + offs_d, mask=mask_d, other=0.0) if HAS_D else None
    bias = tl.load(bias_ptr + k * Dm + offs_d, mask=mask_d, other=0.0) if HAS_BIAS else None
    u_ptr += k * s_u_k + b * s_u_b
    dt_ptr += k * s_dt_k + b * s_dt_b
    B_ptr += k * s_B_k + b * s_B_b
    C_ptr += k * s_C_k + b * s_C_b
    z_ptr += b * s_z_b
    g_ptr += b * s_g_b + k * s_g_k
    h_ptr += k * s_h_k + b * s_h_b
    gu_ptr += k * s_gx_k + b * s_gx_b
    gdt_ptr += k * s_gx_k + b * s_gx_b
    gB_ptr += k * s_gbc_k + b * s_gbc_b
    gC_ptr += k * s_gbc_k + b * s_gbc_b
    gz_ptr += k * s_gz_k + b * s_gz_b
    gA_ptr += k * Dm * N
    gD_ptr += k * Dm
    gbias_ptr += k * Dm
    E_ptr += (k * tl.num_programs(1) + b * n_seg) * Dm * N
    S_ptr += (k * tl.num_programs(1) + b * n_seg) * Dm
    if SUMMARY:
        if k == 0:
            _bwd_summary_direction(dt_ptr, C_ptr, z_ptr, g_ptr, E_ptr, S_ptr, A2, bias, offs_d, mask_d, L, Dm,
                                   n_chunks, seg, seg_chunks, s_dt_t, s_C_t, s_C_n, s_z_t, s_g_t,
                                   False, HAS_Z, HAS_BIAS, SOFTPLUS, BT, BD, NP, N)
        else:
            _bwd_summary_direction(dt_ptr, C_ptr, z_ptr, g_ptr, E_ptr, S_ptr, A2, bias, offs_d, mask_d, L, Dm,
                                   n_chunks, seg, seg_chunks, s_dt_t, s_C_t, s_C_n, s_z_t, s_g_t,
                                   True, HAS_Z, HAS_BIAS, SOFTPLUS, BT, BD, NP, N)
    else:
        args = (u_ptr, dt_ptr, B_ptr, C_ptr, z_ptr, g_ptr, h_ptr, gu_ptr, gdt_ptr, gB_ptr, gC_ptr, gz_ptr,
                gA_ptr, gD_ptr, gbias_ptr, E_ptr, S_ptr, A, A2, Dv, bias, offs_d, mask_d, L, Dm, n_chunks,
                seg, n_seg, seg_chunks,
                s_u_t, s_dt_t, s_B_t, s_B_n, s_C_t, s_C_n, s_z_t, s_g_t, s_h_c, s_gx_t, s_gbc_t, s_gz_t)
        if k == 0:
            _bwd_direction(*args, False, HAS_D, HAS_Z, HAS_BIAS, SOFTPLUS, BT, BD, NP, N)
        else:
            _bwd_direction(*args, True, HAS_D, HAS_Z, HAS_BIAS, SOFTPLUS, BT, BD, NP, N)


@triton.jit
def _step_inputs(u_ptr, dt_ptr, B_ptr, C_ptr, z_ptr, t, ok, offs_d, mask_d, offs_n, mask_n,
                 s_u_t, s_dt_t, s_B_t, s_B_n, s_C_t, s_C_n, s_z_t, SUMMARY: tl.constexpr, HAS_Z: tl.constexpr):
    """One step's u, raw dt (BD,), B, C (NP,) and z (BD,) in fp32; zeros where not ok (past the segment)."""
    md = mask_d & ok
    mn = mask_n & ok
    u = tl.load(u_ptr + t * s_u_t + offs_d, mask=md, other=0.0).to(tl.float32)
    d = tl.load(dt_ptr + t * s_dt_t + offs_d, mask=md, other=0.0).to(tl.float32)
    Bv = tl.load(B_ptr + t * s_B_t + offs_n * s_B_n, mask=mn, other=0.0).to(tl.float32)
    if SUMMARY:
        Cv = Bv
    else:
        Cv = tl.load(C_ptr + t * s_C_t + offs_n * s_C_n, mask=mn, other=0.0).to(tl.float32)
    if HAS_Z and not SUMMARY:
        z = tl.load(z_ptr + t * s_z_t + offs_d, mask=md, other=0.0).to(tl.float32)
    else:
        z = u
    return u, d, Bv, Cv, z


@triton.jit
def _seq_step(h, dsum, u, d, Bv, Cv, z, t, L, A2T, Dv, bias, y_ptr, h_ptr, offs_d, mask_d, st_off, mask_nd,
              s_y_t, s_h_c, REVERSE: tl.constexpr, SUMMARY: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
              HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, SAVE: tl.constexpr, BT: tl.constexpr):
    """Step t of the recurrence on state h (NP, BD); stores y_t (or adds to dsum in a summary)."""
    if SAVE:  # the state entering each BT-step chunk (scan order), which the backward starts from
        if REVERSE:
            if ((t + 1) % BT == 0) | (t == L - 1):
                tl.store(h_ptr + (t // BT) * s_h_c + st_off, h, mask=mask_nd)
        else:
            if t % BT == 0:
                tl.store(h_ptr + (t // BT) * s_h_c + st_off, h, mask=mask_nd)
    if HAS_BIAS:
        d = d + bias
    if SOFTPLUS:
        d = _softplus(d)
    h = tl.exp2(d[None, :] * A2T) * h + (d * u)[None, :] * Bv[:, None]
    if SUMMARY:
        dsum += d
    else:
        y = tl.sum(h * Cv[:, None], axis=0)  # (BD,): a thread's own states, no shuffles
        if HAS_D:
            y = y + Dv * u
        if HAS_Z:
            y = y * z * tl.sigmoid(z)
        tl.store(y_ptr + t * s_y_t + offs_d, y.to(y_ptr.dtype.element_ty), mask=mask_d)
    return h, dsum


@triton.jit
def _fwd_seq_direction(u_ptr, dt_ptr, B_ptr, C_ptr, z_ptr, y_ptr, h_ptr, E_ptr, S_ptr, A2T, Dv, bias,
                       offs_d, mask_d, L, Dm, seg, seg_len, n_seg,
                       s_u_t, s_dt_t, s_B_t, s_B_n, s_C_t, s_C_n, s_z_t, s_y_t, s_h_c,
                       REVERSE: tl.constexpr, SUMMARY: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
                       HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, SAVE: tl.constexpr,
                       BT: tl.constexpr, BD: tl.constexpr, NP: tl.constexpr, N: tl.constexpr):
    offs_n = tl.arange(0, NP)
    mask_n = offs_n < N
    mask_nd = mask_n[:, None] & mask_d[None, :]
    st_off = offs_n[:, None] * Dm + offs_d[None, :]  # (NP, BD) view of an (N, D) state: channels contiguous
    t0 = seg * seg_len
    t1 = tl.minimum(t0 + seg_len, L)
    h = tl.zeros([NP, BD], dtype=tl.float32)
    if not SUMMARY:  # enter with what the segments before this one (in scan order) leave behind
        n_prev = n_seg - 1 - seg if REVERSE else seg
        for j in range(n_prev):
            sp = n_seg - 1 - j if REVERSE else j
            E = tl.load(E_ptr + sp * Dm * N + st_off, mask=mask_nd, other=0.0)
            ds = tl.load(S_ptr + sp * Dm + offs_d, mask=mask_d, other=0.0)
            h = tl.exp2(ds[None, :] * A2T) * h + E
    dsum = tl.zeros([BD], dtype=tl.float32)
    # Software-pipelined by hand: step t+1's loads are issued before step t's arithmetic (1.6x on the H200).
    t = t1 - 1 if REVERSE else t0
    u, d, Bv, Cv, z = _step_inputs(u_ptr, dt_ptr, B_ptr, C_ptr, z_ptr, t, t0 < t1, offs_d, mask_d, offs_n,
                                   mask_n, s_u_t, s_dt_t, s_B_t, s_B_n, s_C_t, s_C_n, s_z_t, SUMMARY, HAS_Z)
    for i in range(t1 - t0):
        t_next = t - 1 if REVERSE else t + 1
        u_n, d_n, B_n, C_n, z_n = _step_inputs(u_ptr, dt_ptr, B_ptr, C_ptr, z_ptr, t_next, i + 1 < t1 - t0,
                                               offs_d, mask_d, offs_n, mask_n, s_u_t, s_dt_t, s_B_t, s_B_n,
                                               s_C_t, s_C_n, s_z_t, SUMMARY, HAS_Z)
        h, dsum = _seq_step(h, dsum, u, d, Bv, Cv, z, t, L, A2T, Dv, bias, y_ptr, h_ptr, offs_d, mask_d,
                            st_off, mask_nd, s_y_t, s_h_c, REVERSE, SUMMARY, HAS_D, HAS_Z, HAS_BIAS, SOFTPLUS,
                            SAVE, BT)
        u, d, Bv, Cv, z, t = u_n, d_n, B_n, C_n, z_n, t_next
    if SUMMARY:
        tl.store(E_ptr + seg * Dm * N + st_off, h, mask=mask_nd)
        tl.store(S_ptr + seg * Dm + offs_d, dsum, mask=mask_d)


@triton.jit
def bimamba_fwd_kernel(u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, z_ptr, y_ptr, h_ptr, E_ptr, S_ptr,
                           L, Dm, seg_len, n_seg,
                           s_u_k, s_u_b, s_u_t, s_dt_k, s_dt_b, s_dt_t,
                           s_B_k, s_B_b, s_B_t, s_B_n, s_C_k, s_C_b, s_C_t, s_C_n,
                           s_z_b, s_z_t, s_y_b, s_y_t, s_y_k, s_h_k, s_h_b, s_h_c,
                           SUMMARY: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
                           SOFTPLUS: tl.constexpr, SAVE: tl.constexpr,
                           BT: tl.constexpr, BD: tl.constexpr, NP: tl.constexpr, N: tl.constexpr):
    """The forward step by step: each thread owns one channel's N states in registers (mamba-ssm's
    layout), so a step costs ~N exp2 + 2N FMAs per thread and no cross-thread traffic; the sequence
    is split into segments (summary launch + output launch) so enough warps hide the loads' latency."""
    pid_d, pid_bs, k = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    b, seg = pid_bs // n_seg, pid_bs % n_seg
    offs_d = pid_d * BD + tl.arange(0, BD)
    mask_d = offs_d < Dm
    offs_n = tl.arange(0, NP)
    # A arrives as (2, N, D): every 2-D access here runs along channels, which makes Triton lay the
    # channels across lanes and keep each channel's N states inside one thread.
    A2T = tl.load(A_ptr + k * Dm * N + offs_n[:, None] * Dm + offs_d[None, :],
                  mask=(offs_n[:, None] < N) & mask_d[None, :], other=0.0) * LOG2E  # (NP, BD)
    Dv = tl.load(D_ptr + k * Dm + offs_d, mask=mask_d, other=0.0) if HAS_D else None
    bias = tl.load(bias_ptr + k * Dm + offs_d, mask=mask_d, other=0.0) if HAS_BIAS else None
    u_ptr += k * s_u_k + b * s_u_b
    dt_ptr += k * s_dt_k + b * s_dt_b
    B_ptr += k * s_B_k + b * s_B_b
    C_ptr += k * s_C_k + b * s_C_b
    z_ptr += b * s_z_b
    y_ptr += b * s_y_b + k * s_y_k
    h_ptr += k * s_h_k + b * s_h_b
    E_ptr += (k * tl.num_programs(1) + b * n_seg) * Dm * N
    S_ptr += (k * tl.num_programs(1) + b * n_seg) * Dm
    if k == 0:
        _fwd_seq_direction(u_ptr, dt_ptr, B_ptr, C_ptr, z_ptr, y_ptr, h_ptr, E_ptr, S_ptr, A2T, Dv, bias,
                           offs_d, mask_d, L, Dm, seg, seg_len, n_seg,
                           s_u_t, s_dt_t, s_B_t, s_B_n, s_C_t, s_C_n, s_z_t, s_y_t, s_h_c,
                           False, SUMMARY, HAS_D, HAS_Z, HAS_BIAS, SOFTPLUS, SAVE, BT, BD, NP, N)
    else:
        _fwd_seq_direction(u_ptr, dt_ptr, B_ptr, C_ptr, z_ptr, y_ptr, h_ptr, E_ptr, S_ptr, A2T, Dv, bias,
                           offs_d, mask_d, L, Dm, seg, seg_len, n_seg,
                           s_u_t, s_dt_t, s_B_t, s_B_n, s_C_t, s_C_n, s_z_t, s_y_t, s_h_c,
                           True, SUMMARY, HAS_D, HAS_Z, HAS_BIAS, SOFTPLUS, SAVE, BT, BD, NP, N)
