"""Triton kernels of the bidirectional depthwise conv (imported lazily: see retrieval/kernels/__init__.py).

x (B, L, D) channels contiguous, any row stride (a half of in_proj's output); w (2, D, W); bias (2, D);
u (2, B, L, D). Direction 0 is causal (t sees t-W+1 .. t), direction 1 its mirror image (t sees
t .. t+W-1 with the taps reversed): the release's conv of the flipped sequence, without the flips.
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _tap(x_ptr, t, offs_d, L, s_x_t, mask_d):
    m = (t >= 0) & (t < L)
    return tl.load(x_ptr + t[:, None] * s_x_t + offs_d[None, :], mask=m[:, None] & mask_d[None, :],
                   other=0.0).to(tl.float32)


@triton.jit
def _pre(x_ptr, w_ptr, bias_ptr, t, offs_d, mask_d, L, Dm, s_x_t, k, W: tl.constexpr):
    """Conv output before the SiLU for direction k at steps t: (BT, BD) fp32."""
    acc = tl.load(bias_ptr + k * Dm + offs_d, mask=mask_d, other=0.0)[None, :] + tl.zeros(
        [t.shape[0], offs_d.shape[0]], dtype=tl.float32)
    sign = 1 - 2 * k  # direction 0 looks back, direction 1 ahead
    for j in tl.static_range(W):
        wj = tl.load(w_ptr + (k * Dm + offs_d) * W + j, mask=mask_d, other=0.0)
        acc += wj[None, :] * _tap(x_ptr, t - sign * (W - 1 - j), offs_d, L, s_x_t, mask_d)
    return acc


@triton.jit
def biconv_fwd_kernel(x_ptr, w_ptr, bias_ptr, u_ptr, L, Dm, s_x_b, s_x_t, s_u_k, s_u_b, s_u_t,
                      W: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr):
    pid_t, pid_d, b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    t = pid_t * BT + tl.arange(0, BT)
    offs_d = pid_d * BD + tl.arange(0, BD)
    mask_d = offs_d < Dm
    m2 = (t < L)[:, None] & mask_d[None, :]
    x_ptr += b * s_x_b
    pre0 = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0)[None, :] + tl.zeros([BT, BD], dtype=tl.float32)
    pre1 = tl.load(bias_ptr + Dm + offs_d, mask=mask_d, other=0.0)[None, :] + tl.zeros([BT, BD], dtype=tl.float32)
    for i in tl.static_range(2 * W - 1):  # each shifted tile x[t + shift] once, for whichever directions use it
        shift = i - (W - 1)
        xs = _tap(x_ptr, t + shift, offs_d, L, s_x_t, mask_d)
        if shift <= 0:  # direction 0: tap W - 1 + shift
            pre0 += tl.load(w_ptr + offs_d * W + W - 1 + shift, mask=mask_d, other=0.0)[None, :] * xs
        if shift >= 0:  # direction 1: tap W - 1 - shift
            pre1 += tl.load(w_ptr + (Dm + offs_d) * W + W - 1 - shift, mask=mask_d, other=0.0)[None, :] * xs
    u_ptr += b * s_u_b + t[:, None] * s_u_t + offs_d[None, :]
    tl.store(u_ptr, (pre0 * tl.sigmoid(pre0)).to(u_ptr.dtype.element_ty), mask=m2)
    tl.store(u_ptr + s_u_k, (pre1 * tl.sigmoid(pre1)).to(u_ptr.dtype.element_ty), mask=m2)


@triton.jit
def biconv_bwd_pre_kernel(x_ptr, w_ptr, bias_ptr, g_ptr, gp_ptr, L, Dm, s_x_b, s_x_t, s_g_k, s_g_b, s_g_t,
                          s_gp_k, s_gp_b, s_gp_t, W: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr):
    """gp = dL/d(pre) = g * silu'(pre) for both directions (fp32)."""
    pid_t, pid_d, b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    t = pid_t * BT + tl.arange(0, BT)
    offs_d = pid_d * BD + tl.arange(0, BD)
    mask_d = offs_d < Dm
    m2 = (t < L)[:, None] & mask_d[None, :]
    x_ptr += b * s_x_b
    for k in tl.static_range(2):
        pre = _pre(x_ptr, w_ptr, bias_ptr, t, offs_d, mask_d, L, Dm, s_x_t, k, W)
        g = tl.load(g_ptr + k * s_g_k + b * s_g_b + t[:, None] * s_g_t + offs_d[None, :], mask=m2,
                    other=0.0).to(tl.float32)
        s = tl.sigmoid(pre)
        gp = g * s * (1.0 + pre * (1.0 - s))
        tl.store(gp_ptr + k * s_gp_k + b * s_gp_b + t[:, None] * s_gp_t + offs_d[None, :], gp, mask=m2)


@triton.jit
def biconv_bwd_kernel(x_ptr, w_ptr, gp_ptr, gx_ptr, gw_ptr, gbias_ptr, L, Dm, s_x_b, s_x_t,
                      s_gp_k, s_gp_b, s_gp_t, s_gx_b, s_gx_t,
                      W: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr):
    """gx from both directions' gp; this tile's share of gw and gbias, added atomically."""
    pid_t, pid_d, b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    t = pid_t * BT + tl.arange(0, BT)
    offs_d = pid_d * BD + tl.arange(0, BD)
    mask_d = offs_d < Dm
    m2 = (t < L)[:, None] & mask_d[None, :]
    x_ptr += b * s_x_b
    gx = tl.zeros([BT, BD], dtype=tl.float32)
    for k in tl.static_range(2):
        sign = 1 - 2 * k
        gpk = gp_ptr + k * s_gp_k + b * s_gp_b
        gp = _tap(gpk, t, offs_d, L, s_gp_t, mask_d)
        tl.atomic_add(gbias_ptr + k * Dm + offs_d, tl.sum(gp, axis=0), mask=mask_d)
        for j in tl.static_range(W):
            shift = sign * (W - 1 - j)  # pre_k[t] uses w_k[j] x[t - shift]
            wj = tl.load(w_ptr + (k * Dm + offs_d) * W + j, mask=mask_d, other=0.0)
            gx += wj[None, :] * _tap(gpk, t + shift, offs_d, L, s_gp_t, mask_d)
            gw = tl.sum(gp * _tap(x_ptr, t - shift, offs_d, L, s_x_t, mask_d), axis=0)
            tl.atomic_add(gw_ptr + (k * Dm + offs_d) * W + j, gw, mask=mask_d)
    tl.store(gx_ptr + b * s_gx_b + t[:, None] * s_gx_t + offs_d[None, :], gx.to(gx_ptr.dtype.element_ty), mask=m2)
