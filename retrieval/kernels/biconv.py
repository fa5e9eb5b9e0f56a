"""Both directions' depthwise conv + SiLU of a bidirectional Mamba block in one launch (Triton), and its reference."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .support import triton_cdiv, triton_unavailable_reason

__all__ = ["biconv1d_fn", "biconv1d_ref"]

# (time steps, channels, warps) per program; the forward's picked on an H100 by benchmarks/bench_biconv_gpu.py
TUNING = {"fwd_block": (16, 128, 4), "bwd_block": (64, 32, 4)}


def _check(x, weight, bias) -> None:
    if x.dim() != 3:
        raise ValueError(f"biconv1d: x has shape {tuple(x.shape)}, expected (batch, seqlen, dim)")
    d = x.shape[2]
    if weight.dim() != 3 or weight.shape[:2] != (2, d):
        raise ValueError(f"biconv1d: weight has shape {tuple(weight.shape)}, expected (2, {d}, width)")
    if bias is not None and bias.shape != (2, d):
        raise ValueError(f"biconv1d: bias has shape {tuple(bias.shape)}, expected (2, {d})")


def biconv1d_ref(x, weight, bias=None):
    """x (B, L, D), weight (2, D, W), bias (2, D) -> (2, B, L, D): silu(causal conv) and silu(conv of the
    reversed sequence) mapped back to the original order, via F.conv1d and flips."""
    _check(x, weight, bias)
    W = weight.shape[2]
    xc = x.transpose(1, 2).to(weight.dtype)  # (B, D, L)
    outs = []
    for k in range(2):
        xk = xc.flip(-1) if k == 1 else xc
        y = F.conv1d(F.pad(xk, (W - 1, 0)), weight[k].unsqueeze(1), None if bias is None else bias[k],
                     groups=x.shape[2])
        y = F.silu(y)
        outs.append((y.flip(-1) if k == 1 else y).transpose(1, 2))
    return torch.stack(outs).to(x.dtype)


class _BiConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias):
        from . import _biconv_triton as k
        if x.stride(-1) != 1:
            x = x.contiguous()
        w = weight.float().contiguous()
        b = torch.zeros(2, x.shape[2], device=x.device) if bias is None else bias.float().contiguous()
        bsz, L, dim = x.shape
        u = x.new_empty(2, bsz, L, dim)
        BT, BD, warps = TUNING["fwd_block"]
        k.biconv_fwd_kernel[(triton_cdiv(L, BT), triton_cdiv(dim, BD), bsz)](
            x, w, b, u, L, dim, x.stride(0), x.stride(1), u.stride(0), u.stride(1), u.stride(2), W=w.shape[2],
            BT=BT, BD=BD, num_warps=warps)
        ctx.save_for_backward(x, w, b)
        ctx.has_bias, ctx.w_dtype = bias is not None, weight.dtype
        return u

    @staticmethod
    def backward(ctx, gu):
        from . import _biconv_triton as k
        x, w, b = ctx.saved_tensors
        if gu.stride(-1) != 1:
            gu = gu.contiguous()
        bsz, L, dim = x.shape
        W = w.shape[2]
        BT, BD, warps = TUNING["bwd_block"]
        grid = (triton_cdiv(L, BT), triton_cdiv(dim, BD), bsz)
        gp = torch.empty(2, bsz, L, dim, dtype=torch.float32, device=x.device)
        k.biconv_bwd_pre_kernel[grid](x, w, b, gu, gp, L, dim, x.stride(0), x.stride(1), gu.stride(0),
                                      gu.stride(1), gu.stride(2), gp.stride(0), gp.stride(1), gp.stride(2),
                                      W=W, BT=BT, BD=BD, num_warps=warps)
        gx = torch.empty(bsz, L, dim, dtype=x.dtype, device=x.device)
        gw = torch.zeros_like(w)
        gb = torch.zeros_like(b)
        k.biconv_bwd_kernel[grid](x, w, gp, gx, gw, gb, L, dim, x.stride(0), x.stride(1), gp.stride(0),
                                  gp.stride(1), gp.stride(2), gx.stride(0), gx.stride(1),
                                  W=W, BT=BT, BD=BD, num_warps=warps)
        return gx, gw.to(ctx.w_dtype), gb.to(ctx.w_dtype) if ctx.has_bias else None


def biconv1d_fn(x, weight, bias=None):
    """x (B, L, D) -> (2, B, L, D): silu of the causal (direction 0) and anti-causal (direction 1) depthwise
    conv, weight (2, D, W), bias (2, D); math in fp32, result in x's dtype. Same as `biconv1d_ref`."""
    _check(x, weight, bias)
    reason = triton_unavailable_reason(x.device)
    if reason is not None:
        raise RuntimeError(f"biconv1d_fn: {reason}")
    return _BiConv.apply(x, weight, bias)
