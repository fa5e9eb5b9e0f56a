"""RMSNorm, the bidirectional Mamba mixer of VideoMamba ("bimamba v2") and the residual Block."""
from __future__ import annotations

import functools
import math
import os

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from .selective_scan import causal_conv1d_available, causal_conv1d_fn, resolve_backend, selective_scan_fn


class RMSNorm(nn.Module):
    """Root-mean-square norm (weight only), computed in fp32 like mamba-ssm's fused kernel."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        out = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (out * self.weight.float()).to(x.dtype)


class DropPath(nn.Module):
    """Stochastic depth per sample (timm semantics)."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class BiMambaMixer(nn.Module):
    """Bidirectional Mamba: shared in/out projections, separate conv/x_proj/dt_proj/A/D per direction.

    Parameter names and shapes match OpenGVLab/VideoMamba (`mixer.A_log`, `mixer.conv1d_b`, ...).
    The backward direction scans the reversed sequence; both outputs are summed before `out_proj`.
    """

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 dt_rank: int | None = None, dt_min: float = 1e-3, dt_max: float = 1e-1,
                 dt_init_floor: float = 1e-4):
        super().__init__()
        self.d_model = d_model
        self.d_state = d_state
        self.d_conv = d_conv
        self.d_inner = expand * d_model
        self.dt_rank = dt_rank or math.ceil(d_model / 16)
        d_inner = self.d_inner

        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=False)
        self.out_proj = nn.Linear(d_inner, d_model, bias=False)
        for sfx in ("", "_b"):
            conv = nn.Conv1d(d_inner, d_inner, d_conv, groups=d_inner, padding=d_conv - 1, bias=True)
            x_proj = nn.Linear(d_inner, self.dt_rank + 2 * d_state, bias=False)
            dt_proj = nn.Linear(self.dt_rank, d_inner, bias=True)
            # Release init: dt weights ~ U(+-dt_rank^-0.5); bias = softplus^-1 of log-uniform dt.
            std = self.dt_rank ** -0.5
            nn.init.uniform_(dt_proj.weight, -std, std)
            dt = torch.exp(torch.rand(d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
            dt = dt.clamp(min=dt_init_floor)
            with torch.no_grad():
                dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
            A = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(d_inner, 1)  # (d_inner, N)
            setattr(self, f"conv1d{sfx}", conv)
            setattr(self, f"x_proj{sfx}", x_proj)
            setattr(self, f"dt_proj{sfx}", dt_proj)
            a_name = "A_log" if sfx == "" else "A_b_log"
            setattr(self, a_name, nn.Parameter(torch.log(A)))
            setattr(self, f"D{sfx}", nn.Parameter(torch.ones(d_inner)))

    def _direction(self, sfx: str):
        """(conv1d, x_proj, dt_proj, A_log, D) of the forward ('') or backward ('_b') direction."""
        return (getattr(self, f"conv1d{sfx}"), getattr(self, f"x_proj{sfx}"), getattr(self, f"dt_proj{sfx}"),
                self.A_log if sfx == "" else self.A_b_log, getattr(self, f"D{sfx}"))

    def _ssm(self, x, dt, B, C, z, sfx: str) -> torch.Tensor:
        """Selective scan of one direction: x, dt, z (B, d_inner, L); B, C (B, N, L) -> (B, d_inner, L)."""
        _, _, dt_proj, A_log, D = self._direction(sfx)
        A = -torch.exp(A_log.float())  # (d_inner, N)
        return selective_scan_fn(x, dt, A, B, C, D.float(), z=z, delta_bias=dt_proj.bias.float(),
                                 delta_softplus=True)

    def _scan_channel_major(self, x: torch.Tensor, z: torch.Tensor, sfx: str) -> torch.Tensor:
        """One direction on (B, d_inner, L) inputs: causal conv -> SiLU -> selective scan gated by SiLU(z)."""
        conv, x_proj, dt_proj, _, _ = self._direction(sfx)
        L = x.shape[-1]
        # The conv kernel is optional even with the scan kernels: PyTorch's conv serves otherwise.
        fused_conv = resolve_backend(x) == "cuda" and causal_conv1d_available()
        x = causal_conv1d_fn(x, rearrange(conv.weight, "d 1 w -> d w"), conv.bias, activation="silu",
                             backend="cuda" if fused_conv else "torch")
        x_dbl = x_proj(rearrange(x, "b d l -> (b l) d"))  # (B*L, dt_rank + 2N)
        dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = rearrange(dt @ dt_proj.weight.t(), "(b l) d -> b d l", l=L)  # (B, d_inner, L)
        B = rearrange(B, "(b l) n -> b n l", l=L).contiguous()  # (B, N, L)
        C = rearrange(C, "(b l) n -> b n l", l=L).contiguous()  # (B, N, L)
        return self._ssm(x, dt, B, C, z, sfx)

    def _scan_time_major(self, x: torch.Tensor, z: torch.Tensor, sfx: str) -> torch.Tensor:
        """One direction on (B, L, d_inner) inputs without layout copies (the PyTorch scan is time-major)."""
        conv, x_proj, dt_proj, _, _ = self._direction(sfx)
        w = conv.weight[:, 0]  # (d_inner, W); tap W-1 is the current step
        W = w.shape[1]
        y = torch.addcmul(conv.bias, x, w[:, W - 1])  # (B, L, d_inner)
        for k in range(1, min(W, x.shape[1])):  # causal taps: step t sees t-k
            y[:, k:] = torch.addcmul(y[:, k:], x[:, :-k], w[:, W - 1 - k])
        x = F.silu(y)
        dt, B, C = torch.split(x_proj(x), [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.linear(dt, dt_proj.weight)  # (B, L, d_inner); bias goes in as delta_bias
        y = self._ssm(x.transpose(1, 2), dt.transpose(1, 2), B.transpose(1, 2), C.transpose(1, 2),
                      z.transpose(1, 2), sfx)
        return y.transpose(1, 2)  # (B, L, d_inner)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden: (B, L, d_model) -> (B, L, d_model)."""
        backend = resolve_backend(hidden)
        if backend == "triton":
            return self._forward_triton(hidden)
        if backend == "cuda":  # mamba-ssm's kernels want channel-major (B, D, L)
            return self._forward_channel_major(hidden)
        xz = self.in_proj(hidden)  # (B, L, 2*d_inner)
        x, z = xz.chunk(2, dim=-1)
        out = self._scan_time_major(x, z, "")
        out_b = self._scan_time_major(x.flip(1), z.flip(1), "_b")
        return self.out_proj(out + out_b.flip(1))

    def _forward_triton(self, hidden: torch.Tensor) -> torch.Tensor:
        """Both directions at once, time-major throughout: 2 convs in one kernel, 2 scans in one kernel,
        batched projections, and out_proj reading both directions as one (B*L, 2 d_inner) matrix."""
        from .kernels import biconv1d_fn, bimamba_scan_fn
        bsz, L, _ = hidden.shape
        R, N, Di = self.dt_rank, self.d_state, self.d_inner
        xz = self.in_proj(hidden)  # (B, L, 2 Di)
        x, z = xz[..., :Di], xz[..., Di:]  # views, no copies
        conv_w, conv_b, x_w, dt_w, A, D, dt_bias, out_w = self._stacked_params()
        u = biconv1d_fn(x, conv_w, conv_b)  # (2, B, L, Di)
        x_dbl = torch.bmm(u.view(2, bsz * L, Di), x_w.transpose(1, 2))  # (2, B*L, R + 2N)
        dt = torch.bmm(x_dbl[..., :R], dt_w.transpose(1, 2)).view(2, bsz, L, Di)  # bias goes in the scan
        Bm = x_dbl[..., R:R + N].view(2, bsz, L, N)
        Cm = x_dbl[..., R + N:].view(2, bsz, L, N)
        y = bimamba_scan_fn(u, dt, A, Bm, Cm, D, z, dt_bias)  # (B, L, 2, Di)
        return F.linear(y.view(bsz, L, 2 * Di), out_w, self.out_proj.bias)

    def _stacked_params(self) -> tuple:
        """Both directions' parameters stacked as the Triton path reads them: conv weight (2, Di, W) and bias,
        x_proj (2, R + 2N, Di), dt_proj (2, Di, R), A (2, Di, N), D, dt bias, and out_proj's weight twice side by
        side (2 Di columns). Without grad they are kept until a parameter or the autocast dtype changes: stacking
        them anew costs about a dozen small kernels per block and call. Never while a CUDA graph is captured: the
        graph makes its own (kept ones could be freed under it by a later rebuild)."""
        params = (self.conv1d.weight, self.conv1d_b.weight, self.conv1d.bias, self.conv1d_b.bias, self.x_proj.weight,
                  self.x_proj_b.weight, self.dt_proj.weight, self.dt_proj_b.weight, self.A_log, self.A_b_log,
                  self.D, self.D_b, self.dt_proj.bias, self.dt_proj_b.bias, self.out_proj.weight)
        device = params[0].device.type
        gemm = matmul_dtype(params[0])
        grad = torch.is_grad_enabled()
        keep = not (grad or any(p.is_inference() for p in params)  # (inference tensors have no version counter)
                    or device == "cuda" and torch.cuda.is_current_stream_capturing())
        key = (gemm,) + tuple((p.data_ptr(), p._version) for p in params) if keep else None
        cached = getattr(self, "_stacked", None)
        if keep and cached is not None and cached[0] == key:
            return cached[1]
        w = self.out_proj.weight
        # Never inference tensors (a later no_grad call outside inference_mode could not use them); leaving
        # inference_mode turns grad on, hence the explicit grad mode.
        with torch.inference_mode(False), torch.set_grad_enabled(grad):
            stacked = (torch.stack([self.conv1d.weight[:, 0], self.conv1d_b.weight[:, 0]]),
                       torch.stack([self.conv1d.bias, self.conv1d_b.bias]),
                       torch.stack([self.x_proj.weight, self.x_proj_b.weight]).to(gemm),
                       torch.stack([self.dt_proj.weight, self.dt_proj_b.weight]).to(gemm),
                       -torch.exp(torch.stack([self.A_log, self.A_b_log]).float()),
                       torch.stack([self.D, self.D_b]).float(),
                       torch.stack([self.dt_proj.bias, self.dt_proj_b.bias]).float(),
                       torch.cat([w, w], dim=1).to(gemm))
        self._stacked = (key, stacked) if keep else None
        return stacked

    def _forward_channel_major(self, hidden: torch.Tensor) -> torch.Tensor:
        xz = rearrange(self.in_proj(hidden), "b l d -> b d l")  # (B, 2*d_inner, L)
        x, z = xz.chunk(2, dim=1)
        out = self._scan_channel_major(x, z, "")
        out_b = self._scan_channel_major(x.flip(-1), z.flip(-1), "_b")
        y = out + out_b.flip(-1)  # (B, d_inner, L)
        return self.out_proj(rearrange(y, "b d l -> b l d"))


def matmul_dtype(t: torch.Tensor) -> torch.dtype:
    """The dtype a matmul on t runs in: autocast's for t's device where autocast is on there, else t's own."""
    device = t.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else t.dtype


class Block(nn.Module):
    """Pre-norm residual block; the residual stream stays in fp32 (the release's residual_in_fp32)."""

    def __init__(self, dim: int, drop_path: float = 0.0, norm_eps: float = 1e-5, **mixer_kwargs):
        super().__init__()
        self.mixer = BiMambaMixer(dim, **mixer_kwargs)
        self.norm = RMSNorm(dim, eps=norm_eps)
        self.drop_path = DropPath(drop_path)

    def forward(self, hidden: torch.Tensor, residual: torch.Tensor | None):
        if self.drop_path.p == 0.0 or not self.training:
            hidden, residual = add_rms_norm(hidden, residual, self.norm)
        else:
            residual = hidden if residual is None else residual + self.drop_path(hidden)
            residual = residual.float()
            hidden = self.norm(residual.to(self.norm.weight.dtype))
        return self.mixer(hidden), residual


def add_rms_norm(hidden: torch.Tensor, residual: torch.Tensor | None, norm: RMSNorm):
    """(norm(residual + hidden), residual + hidden in fp32); one fused kernel where mamba-ssm provides it.

    The fused kernel returns the normed tensor in hidden's dtype (bf16 under autocast), so the next
    GEMM reads it without a cast; the unfused path is the reference (and the CPU path). Inference only:
    with it in training, the bf16 encoder's input gradient drifted 15% from the reference on an H200
    (tests/test_cuda_model.py), against < 2% without it.
    """
    if hidden.is_cuda and not torch.is_grad_enabled() and fused_add_norm_enabled():
        from mamba_ssm.ops.triton.layer_norm import rms_norm_fn
        return rms_norm_fn(hidden, norm.weight, None, residual=residual, prenorm=True, residual_in_fp32=True,
                           eps=norm.eps)
    residual = (hidden if residual is None else residual + hidden).float()
    return norm(residual.to(norm.weight.dtype)), residual


@functools.lru_cache(maxsize=None)
def _fused_add_norm_importable() -> bool:
    try:
        from mamba_ssm.ops.triton.layer_norm import rms_norm_fn  # noqa: F401
    except Exception:
        return False
    return True


def fused_add_norm_enabled() -> bool:
    """mamba-ssm's fused residual add + RMSNorm imports, and $VMR_FUSED_NORM is not 0 (the A/B switch)."""
    return os.environ.get("VMR_FUSED_NORM", "1") != "0" and _fused_add_norm_importable()
