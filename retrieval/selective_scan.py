"""Selective-scan backends (cuda | torch | ref) for Mamba, the causal depthwise conv, and the one backend switch."""
from __future__ import annotations

import functools
import math
import os
import threading

import torch
import torch.nn.functional as F

__all__ = [
    "BACKENDS", "ENV_VAR", "available_backends", "causal_conv1d_fn", "causal_conv1d_ref",
    "cuda_kernels_available", "resolve_backend", "selective_scan_fn", "selective_scan_ref",
]

BACKENDS = ("auto", "cuda", "torch", "ref")
ENV_VAR = "VMR_SCAN_BACKEND"
_INSTALL_HINT = "install the CUDA kernels with `pip install .[cuda]` on a CUDA host"

# ----------------------------------------------------------------------------------------------
# Backend choice: the argument beats the environment variable, which beats "auto".
# ----------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def cuda_kernels_available() -> bool:
    """True when mamba-ssm's selective-scan CUDA kernel imports (cached: the import is slow)."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn  # noqa: F401
    except Exception:  # a broken build raises OSError/RuntimeError from the .so, not only ImportError
        return False
    return True


@functools.lru_cache(maxsize=None)
def _causal_conv1d_available() -> bool:
    try:
        from causal_conv1d import causal_conv1d_fn  # noqa: F401
    except Exception:
        return False
    return True


def available_backends() -> list[str]:
    """Backends that can run in this environment, fastest first (`cuda` needs CUDA tensors too)."""
    return (["cuda"] if cuda_kernels_available() else []) + ["torch", "ref"]


def _device_of(tensor_or_device) -> torch.device:
    if isinstance(tensor_or_device, torch.Tensor):
        return tensor_or_device.device
    return torch.device(tensor_or_device)


def _requested(backend: str | None) -> str:
    name = backend if backend is not None else (os.environ.get(ENV_VAR) or "auto")
    name = name.strip().lower()
    if name not in BACKENDS:
        source = "backend=" if backend is not None else f"${ENV_VAR}="
        raise ValueError(f"unknown selective-scan backend {source}{name!r}; expected one of {BACKENDS}")
    return name


def _resolve(device: torch.device, backend: str | None, kernels_ok: bool, what: str) -> str:
    name = _requested(backend)
    if name == "auto":
        return "cuda" if kernels_ok and device.type == "cuda" else "torch"
    if name == "cuda":
        if not kernels_ok:
            raise RuntimeError(f"backend 'cuda' needs {what}, which is not importable here; {_INSTALL_HINT}, "
                               f"or use backend='torch' (or set {ENV_VAR}=torch)")
        if device.type != "cuda":
            raise RuntimeError(f"backend 'cuda' needs CUDA tensors, got device {device}; move the model to a GPU "
                               f"or use backend='torch' (or set {ENV_VAR}=torch)")
    return name


def resolve_backend(tensor_or_device, backend: str | None = None) -> str:
    """The selective-scan backend ("cuda", "torch" or "ref") for tensors on this device.

    `backend` overrides $VMR_SCAN_BACKEND, which overrides "auto" (cuda when mamba-ssm imports and the
    tensors are on CUDA, else torch). An explicit backend that cannot run raises RuntimeError.
    """
    return _resolve(_device_of(tensor_or_device), backend, cuda_kernels_available(), "mamba-ssm")


# ----------------------------------------------------------------------------------------------
# Public ops
# ----------------------------------------------------------------------------------------------


def _shape_error(name: str, t: torch.Tensor, expected: str) -> ValueError:
    return ValueError(f"selective_scan: {name} has shape {tuple(t.shape)}, expected {expected}")


def _check_scan_inputs(u, delta, A, B, C, D, z, delta_bias) -> None:
    if u.dim() != 3:
        raise _shape_error("u", u, "(batch, dim, seqlen)")
    b, d, seqlen = u.shape
    if seqlen == 0:
        raise _shape_error("u", u, "(batch, dim, seqlen) with seqlen >= 1")
    if delta.shape != u.shape:
        raise _shape_error("delta", delta, f"{(b, d, seqlen)} like u")
    if A.dim() != 2 or A.shape[0] != d:
        raise _shape_error("A", A, f"({d}, d_state)")
    if A.is_complex():
        raise ValueError("selective_scan: complex A is not supported; A must be real (dim, d_state)")
    n = A.shape[1]
    for name, t in (("B", B), ("C", C)):
        if t.shape != (b, n, seqlen):
            raise _shape_error(name, t, f"{(b, n, seqlen)} = (batch, d_state, seqlen)")
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None and t.shape != (d,):
            raise _shape_error(name, t, f"({d},)")
    if z is not None and z.shape != u.shape:
        raise _shape_error("z", z, f"{(b, d, seqlen)} like u")


def selective_scan_fn(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                      backend: str | None = None):
    """Mamba's selective scan, mamba-ssm's argument layout; returns y (B, D, L) in u's dtype.

    u, delta: (B, D, L); A: (D, N) real; B, C: (B, N, L); D: (D,); z: (B, D, L); delta_bias: (D,)
    delta <- softplus(delta + delta_bias) if delta_softplus
    h_t = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t;  y_t = C_t . h_t + D * u_t;  y *= silu(z)
    Computes in float32 (float64 for float64 inputs). The torch backend may return y with
    time-major strides (a transposed (B, L, D) buffer), which is what the next Linear wants.
    """
    _check_scan_inputs(u, delta, A, B, C, D, z, delta_bias)
    name = resolve_backend(u, backend)
    if name == "cuda":
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn as cuda_scan
        # The kernel only takes fp32 weights (A, D, delta_bias); activations may be bf16/fp16.
        return cuda_scan(u, delta, A.float(), B, C, None if D is None else D.float(), z,
                         None if delta_bias is None else delta_bias.float(), delta_softplus)
    if name == "ref":
        return selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    return _selective_scan_torch(u, delta, A, B, C, D, z, delta_bias, delta_softplus)


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    # float32 like the CUDA kernel; float64 stays float64 so tests can build an exact oracle.
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def selective_scan_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """The plain sequential definition (a Python loop over time), the oracle for the other backends.

    Same arguments and result as `selective_scan_fn`; differentiable through autograd.
    """
    _check_scan_inputs(u, delta, A, B, C, D, z, delta_bias)
    dtype_in, ct = u.dtype, _compute_dtype(u)
    u, delta, A, B, C = (t.to(ct) for t in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + delta_bias.to(ct)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    decay = torch.exp(delta.unsqueeze(-1) * A[:, None, :])  # (B, D, L, N)
    drive = (delta * u).unsqueeze(-1) * B.transpose(1, 2)[:, None]  # (B, D, L, N)
    h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])  # (B, D, N)
    ys = []
    for t in range(u.shape[-1]):
        h = decay[:, :, t] * h + drive[:, :, t]
        ys.append(torch.einsum("bdn,bn->bd", h, C[:, :, t]))
    y = torch.stack(ys, dim=-1)  # (B, D, L)
    if D is not None:
        y = y + u * D.to(ct)[:, None]
    if z is not None:
        y = y * F.silu(z.to(ct))
    return y.to(dtype_in)


def causal_conv1d_ref(x, weight, bias=None, activation: str | None = "silu"):
    """Depthwise causal conv: x (B, D, L), weight (D, W), bias (D,) -> (B, D, L), via F.conv1d."""
    _check_conv_inputs(x, weight, bias, activation)
    dtype_in = x.dtype
    x = x.to(weight.dtype)
    width = weight.shape[1]
    # Left padding only, so output t sees inputs t-W+1 .. t.
    out = F.conv1d(F.pad(x, (width - 1, 0)), weight.unsqueeze(1), bias, groups=x.shape[1])
    if activation is not None:
        out = F.silu(out)
    return out.to(dtype_in)


def _check_conv_inputs(x, weight, bias, activation) -> None:
    if x.dim() != 3:
        raise ValueError(f"causal_conv1d: x has shape {tuple(x.shape)}, expected (batch, dim, seqlen)")
    if weight.dim() != 2 or weight.shape[0] != x.shape[1]:
        raise ValueError(f"causal_conv1d: weight has shape {tuple(weight.shape)}, expected ({x.shape[1]}, width)")
    if bias is not None and bias.shape != (x.shape[1],):
        raise ValueError(f"causal_conv1d: bias has shape {tuple(bias.shape)}, expected ({x.shape[1]},)")
    if activation not in (None, "silu", "swish"):
        raise ValueError(f"causal_conv1d: activation must be None, 'silu' or 'swish', got {activation!r}")


def causal_conv1d_fn(x, weight, bias=None, activation: str | None = "silu", backend: str | None = None):
    """Depthwise causal conv x (B, D, L), weight (D, W) -> (B, D, L); the causal-conv1d kernel on CUDA.

    Backend choice as in `resolve_backend`, but `cuda` here means the causal-conv1d package.
    """
    _check_conv_inputs(x, weight, bias, activation)
    name = _resolve(x.device, backend, _causal_conv1d_available(), "causal-conv1d")
    if name == "cuda":
        from causal_conv1d import causal_conv1d_fn as cuda_conv
        return cuda_conv(x, weight, bias, activation=activation)
    return causal_conv1d_ref(x, weight, bias, activation)


# ----------------------------------------------------------------------------------------------
# torch backend: a chunked scan, vectorised over batch, channels and states.
#
# Layout: time-major (B, L, N, D), so one time step is a contiguous (N, D) block and the
# contractions over N or D are row-vector x matrix products (fast batched GEMV).
# The sequence is cut into segments of S = T * nc steps, small enough that the (B, S, N, D)
# work buffers stay in cache. Inside a segment the nc chunks of T steps are scanned side by
# side: (1) a loop over the T positions gives each chunk's end state from a zero start, (2) a
# loop over the nc chunks chains those into the true chunk-start states, (3) a second loop over
# the T positions recomputes every state from its true start. That is 2T + nc tensor ops per
# segment instead of S, using the same multiply-add recurrence as the reference: no
# exp(-cumsum) ratios that overflow, no accuracy lost to log-space tricks.
# Everything elementwise (delta_bias, softplus, D, silu(z)) runs per segment too, like the CUDA
# kernel's fusion, so a call allocates little beyond its output. Backward is a hand-written
# reverse scan over the same structure; it recomputes states per segment from the saved
# segment-start states (B, nseg, N, D), so training memory stays O(B L D), not O(B L D N).
# ----------------------------------------------------------------------------------------------

_LOG2E = 1.0 / math.log(2.0)
# Floor for log2 of a decay: exp2 of anything lower gives subnormals, which make the
# multiply-adds ~50x slower on x86; 2**-64 ~ 5e-20 changes results by < 1e-19 relative.
_MIN_LOG2_DECAY = -64.0
# Elements of one (B, S, N, D) work buffer: 2 MB of fp32, so the working set sits in L2/L3.
_SEGMENT_ELEMS = 1 << 19
# Plan cost model (rough 2-core CPU numbers): per work-buffer element, per tensor op.
_COST_ELEM_NS = 0.6
_COST_OP_NS = 4000.0
_OPS_PER_SEGMENT = 24


@functools.lru_cache(maxsize=512)
def _plan(seqlen: int, step_elems: int) -> tuple[int, int, int]:
    """(T, nc, nseg): chunk length, chunks per segment and segments, for step_elems = B * N * D."""
    s_max = max(1, min(seqlen, _SEGMENT_ELEMS // max(1, step_elems)))
    best = None
    for t in range(1, min(s_max, 64) + 1):
        for nc in range(1, min(s_max // t, 64) + 1):
            nseg = -(-seqlen // (t * nc))
            cost = nseg * (t * nc * step_elems * _COST_ELEM_NS + (2 * t + nc + _OPS_PER_SEGMENT) * _COST_OP_NS)
            if best is None or cost < best[0]:
                best = (cost, t, nc, nseg)
    return best[1:]


class _Scratch(threading.local):
    """Per-thread CPU work buffers, reused by name across calls.

    glibc maps every multi-MB block fresh and unmaps it on free, so new buffers cost a page
    fault per 4 kB on each call (~5000 per scan: more than the arithmetic). These buffers are
    bounded by the segment size (~10 MB in all) and never escape a call.
    """

    def __init__(self):
        self.pool: dict = {}

    def get(self, name: str, shape: tuple, like: torch.Tensor) -> torch.Tensor:
        if like.device.type != "cpu":
            return like.new_empty(shape)  # the CUDA caching allocator already reuses blocks
        numel = math.prod(shape)
        buf = self.pool.get((name, like.dtype))
        if buf is None or buf.numel() < numel:
            buf = self.pool[(name, like.dtype)] = like.new_empty(numel)
        return buf[:numel].view(shape)


_SCRATCH = _Scratch()


def _selective_scan_torch(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    dtype_in, ct = u.dtype, _compute_dtype(u)
    args = [None if t is None else t.to(ct) for t in (u, delta, A, B, C, D, z, delta_bias)]
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in args):
        y = _SelectiveScan.apply(*args, delta_softplus)
    else:  # inference: no saved segment states, no autograd bookkeeping
        y = _scan_forward(*args, delta_softplus, keep_states=False)[0].transpose(1, 2)
    # (B, D, L) view of a time-major buffer: the layout the model's next Linear wants.
    return y.to(dtype_in)


class _SelectiveScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus):
        yT, states = _scan_forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, keep_states=True)
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, states)
        ctx.delta_softplus = delta_softplus
        return yT.transpose(1, 2)

    @staticmethod
    def backward(ctx, gy):
        u, delta, A, B, C, D, z, delta_bias, states = ctx.saved_tensors
        grads = _scan_backward(gy, u, delta, A, B, C, D, z, delta_bias, ctx.delta_softplus, states)
        return (*grads, None)


def _softplus_(x: torch.Tensor, scratch) -> torch.Tensor:
    """In-place F.softplus (threshold 20 included); on CPU fp32 vectorised, as torch's log1p is scalar there.

    scratch(name) gives a work buffer shaped like x.
    """
    if x.dtype != torch.float32 or x.device.type != "cpu":
        return x.copy_(F.softplus(x))
    # softplus(x) = max(x, 0) + log1p(y), y = exp(-|x|); log1p(y) = log(v) + (y - (v - 1)) / v
    # with v = 1 + y: the second term restores what rounding 1 + y lost, so tiny y stay exact.
    # exp via exp2: torch's CPU exp goes through MKL VML, ~100x slower on small tensors with 2 threads.
    # Rounding |x| * log2(e) costs relative accuracy ~|x| * eps, but only where softplus ~ e^-|x| is tiny.
    y = torch.abs(x, out=scratch("sp_y")).mul_(-_LOG2E).exp2_()
    v = torch.add(y, 1.0, out=scratch("sp_v"))
    y.sub_(torch.sub(v, 1.0, out=scratch("sp_v1"))).div_(v).add_(v.log_())
    return x.clamp_min_(0.0).add_(y)


class _Workspace:
    """One call's plan, scratch buffers, per-step views, and the (padded) segment rows of its inputs."""

    def __init__(self, u: torch.Tensor, n: int, backward: bool = False):
        bsz, dim, seqlen = u.shape
        self.bsz, self.dim, self.seqlen, self.like = bsz, dim, seqlen, u
        self.T, self.nc, self.nseg = T, nc, _ = _plan(seqlen, bsz * n * dim)
        self.S = T * nc
        big = (bsz, self.S, n, dim)
        self.a = _SCRATCH.get("a", big, u)  # decays exp(delta_t A); in backward then a_t gh_t, then g_t
        self.h = _SCRATCH.get("h", big, u)  # drives x_t B_t, overwritten by the states h_t
        self.a_j = self._steps(self.a)
        self.h_j = self._steps(self.h)
        self.hloc = _SCRATCH.get("hloc", (bsz, nc, n, dim), u)  # chunk end states from a zero start
        self.hloc_k = self.hloc.unbind(1)
        self.carry = _SCRATCH.get("carry", (bsz, nc + 1, n, dim), u)  # state entering chunk k
        self.carry_k = self.carry.unbind(1)
        if backward:
            self.w = _SCRATCH.get("w", big, u)  # C_t gy_t, then gh_t
            self.w_j = self._steps(self.w)
            self.gcarry = _SCRATCH.get("gcarry", (bsz, nc + 1, n, dim), u)  # a*gh entering chunk k-1
            self.gcarry_k = self.gcarry.unbind(1)

    def _steps(self, buf: torch.Tensor) -> list[torch.Tensor]:
        """Views of step j of every chunk: (B, nc, N, D) each."""
        return list(buf.view(self.bsz, self.nc, self.T, *buf.shape[2:]).unbind(2))

    def tmp(self, name: str, width: int | None = None) -> torch.Tensor:
        return _SCRATCH.get(name, (self.bsz, self.S, self.dim if width is None else width), self.like)

    def span(self, s: int) -> tuple[int, int]:
        t0 = s * self.S
        return t0, min(t0 + self.S, self.seqlen)

    def rows(self, x: torch.Tensor, s: int, name: str) -> torch.Tensor:
        """Segment s of a (B, L, C) tensor as (B, S, C); the short last one zero-padded in scratch."""
        t0, t1 = self.span(s)
        if t1 - t0 == self.S and x.stride(2) == 1:
            return x[:, t0:t1]
        out = self.tmp(name, x.shape[2])
        if t1 - t0 == self.S:  # a (B, D, L)-major input: one strided copy, then fast contiguous reads
            return out.copy_(x[:, t0:t1])
        out[:, t1 - t0:].zero_()  # finite padding: 0 * NaN from stale scratch would leak into sums
        out[:, : t1 - t0] = x[:, t0:t1]
        return out

    def out_rows(self, dst: torch.Tensor, s: int, name: str) -> torch.Tensor:
        """Where segment s's (B, S, C) result goes: dst's rows, or scratch for the short last segment."""
        t0, t1 = self.span(s)
        return dst[:, t0:t1] if t1 - t0 == self.S else self.tmp(name, dst.shape[2])

    def put(self, dst: torch.Tensor, s: int, src: torch.Tensor) -> None:
        t0, t1 = self.span(s)
        if t1 - t0 != self.S:
            dst[:, t0:t1] = src[:, : t1 - t0]

    def delta(self, dT, s, delta_bias, softplus, keep_pre=False):
        """(delta_t, pre-activation or None) for segment s: softplus(delta + delta_bias) as asked."""
        d = self.rows(dT, s, "d")
        if delta_bias is None and not softplus:
            return d, None
        if not softplus:
            return torch.add(d, delta_bias, out=self.tmp("dsp")), None
        out = self.tmp("dsp")
        if not keep_pre:  # forward: softplus in place of delta + delta_bias
            return _softplus_(torch.add(d, delta_bias, out=out) if delta_bias is not None else out.copy_(d), self.tmp), None
        pre = torch.add(d, delta_bias, out=self.tmp("pre")) if delta_bias is not None else d
        return _softplus_(out.copy_(pre), self.tmp), pre

    def decays(self, d: torch.Tensor, A2: torch.Tensor) -> torch.Tensor:
        """Fill self.a with exp(d_t A) for d (B, S, D); return the whole-chunk decays (B, nc, N, D)."""
        torch.mul(d.unsqueeze(2), A2, out=self.a)  # (B, S, N, D)
        self.a.clamp_min_(_MIN_LOG2_DECAY).exp2_()
        dsum = torch.sum(d.reshape(self.bsz, self.nc, self.T, self.dim), 2,
                         out=_SCRATCH.get("dsum", (self.bsz, self.nc, self.dim), self.like))
        total = torch.mul(dsum.unsqueeze(2), A2, out=_SCRATCH.get("total", self.hloc.shape, self.like))
        return total.clamp_min_(_MIN_LOG2_DECAY).exp2_()

    def scan(self, total: torch.Tensor) -> None:
        """In place: self.h from drives to states h_t, from carry[:, 0]; leaves the end state in carry[:, nc]."""
        a_j, h_j, carry_k = self.a_j, self.h_j, self.carry_k
        if self.T == 1:
            hloc_k = h_j[0].unbind(1)
        else:
            hloc = torch.addcmul(h_j[1], a_j[1], h_j[0], out=self.hloc)
            for j in range(2, self.T):
                torch.addcmul(h_j[j], a_j[j], hloc, out=hloc)
            hloc_k = self.hloc_k
        total_k = total.unbind(1)
        for k in range(self.nc):
            torch.addcmul(hloc_k[k], total_k[k], carry_k[k], out=carry_k[k + 1])
        prev = self.carry[:, : self.nc]
        for j in range(self.T):
            torch.addcmul(h_j[j], a_j[j], prev, out=h_j[j])
            prev = h_j[j]

    def reverse_scan(self, total: torch.Tensor) -> None:
        """In place, from gcarry[:, nc]: self.w from C_t gy_t to gh_t, self.a from a_t to a_t gh_t.

        gh_t = C_t gy_t + a_{t+1} gh_{t+1}; r = a_t gh_t is what step t hands to step t-1.
        Leaves the segment's outflow a_t0 gh_t0 in gcarry[:, 0].
        """
        a_j, w_j, gcarry_k, T = self.a_j, self.w_j, self.gcarry_k, self.T
        rloc = torch.mul(a_j[T - 1], w_j[T - 1], out=self.hloc)
        for j in range(T - 2, -1, -1):
            rloc.add_(w_j[j]).mul_(a_j[j])
        total_k, rloc_k = total.unbind(1), self.hloc_k
        for k in range(self.nc - 1, -1, -1):
            torch.addcmul(rloc_k[k], total_k[k], gcarry_k[k + 1], out=gcarry_k[k])
        r = self.gcarry[:, 1:]
        for j in range(T - 1, -1, -1):
            w_j[j].add_(r)
            r = a_j[j].mul_(w_j[j])


def _scan_forward(u, delta, A, B, C, D, z, delta_bias, softplus, keep_states):
    """yT (B, L, D) and, if asked, the states entering each segment (B, nseg, N, D)."""
    bsz, dim, seqlen = u.shape
    n = A.shape[1]
    ws = _Workspace(u, n)
    uT, dT = u.transpose(1, 2), delta.transpose(1, 2)  # (B, L, D) views
    BT, CT = B.transpose(1, 2).contiguous(), C.transpose(1, 2).contiguous()  # (B, L, N), small
    A2 = (A.t() * _LOG2E).contiguous()  # (N, D): exp(d A) = exp2(d A2)
    yT = u.new_empty(bsz, seqlen, dim)
    states = u.new_empty(bsz, ws.nseg, n, dim) if keep_states else None
    ws.carry_k[0].zero_()
    for s in range(ws.nseg):
        if states is not None:
            states[:, s] = ws.carry_k[0]
        u_s = ws.rows(uT, s, "u")
        d_s, _ = ws.delta(dT, s, delta_bias, softplus)
        x_s = torch.mul(d_s, u_s, out=ws.tmp("x"))  # (B, S, D) delta_t u_t
        b_s, c_s = ws.rows(BT, s, "B"), ws.rows(CT, s, "C")
        total = ws.decays(d_s, A2)
        torch.mul(x_s.unsqueeze(2), b_s.unsqueeze(3), out=ws.h)  # (B, S, N, D) drives x_t B_t
        ws.scan(total)
        y_s = ws.out_rows(yT, s, "y")
        torch.matmul(c_s.unsqueeze(2), ws.h, out=y_s.unsqueeze(2))  # (B,S,1,N) @ (B,S,N,D): C_t . h_t
        if D is not None:
            y_s.addcmul_(u_s, D)
        if z is not None:
            z_s = ws.rows(z.transpose(1, 2), s, "z")
            y_s.mul_(torch.sigmoid(z_s, out=ws.tmp("zsig")).mul_(z_s))  # silu(z)
        ws.put(yT, s, y_s)
        ws.carry_k[0].copy_(ws.carry_k[ws.nc])
    return yT, states


def _scan_backward(gy, u, delta, A, B, C, D, z, delta_bias, softplus, states):
    """Gradients for (u, delta, A, B, C, D, z, delta_bias) of sum(gy * y), segment by segment in reverse.

    With a_t = exp(delta_t A), gh_t = dL/dh_t = C_t gy_t + a_{t+1} gh_{t+1} (gy after the z gate):
    dC_t = gy_t . h_t, dB_t = x_t . gh_t, dx_t = B_t . gh_t, and g_t = gh_t a_t h_{t-1} is the
    gradient of delta_t A, so d delta_t = sum_n A g_t (+ u_t dx_t) and dA = sum_t delta_t g_t.
    """
    bsz, dim, seqlen = u.shape
    n = A.shape[1]
    ws = _Workspace(u, n, backward=True)
    uT, dT = u.transpose(1, 2), delta.transpose(1, 2)
    zT = None if z is None else z.transpose(1, 2)
    gyT = gy.transpose(1, 2).contiguous()  # free when gy is time-major, as the model's is
    BT, CT = B.transpose(1, 2).contiguous(), C.transpose(1, 2).contiguous()
    A2 = (A.t() * _LOG2E).contiguous()
    AT = A.t().contiguous()  # (N, D)
    gu, gdelta = u.new_empty(bsz, seqlen, dim), u.new_empty(bsz, seqlen, dim)
    gz = None if z is None else u.new_empty(bsz, seqlen, dim)
    gBT, gCT = u.new_empty(bsz, seqlen, n), u.new_empty(bsz, seqlen, n)
    gA = u.new_zeros(n * dim)
    gD = None if D is None else u.new_zeros(dim)
    gbias = None if delta_bias is None else u.new_zeros(dim)
    ws.gcarry_k[ws.nc].zero_()
    for s in reversed(range(ws.nseg)):
        # Recompute this segment's forward: decays in ws.a, states in ws.h.
        u_s = ws.rows(uT, s, "u")
        d_s, pre_s = ws.delta(dT, s, delta_bias, softplus, keep_pre=True)
        x_s = torch.mul(d_s, u_s, out=ws.tmp("x"))
        b_s, c_s = ws.rows(BT, s, "B"), ws.rows(CT, s, "C")
        h_in = states[:, s]  # (B, N, D)
        ws.carry_k[0].copy_(h_in)
        total = ws.decays(d_s, A2)
        torch.mul(x_s.unsqueeze(2), b_s.unsqueeze(3), out=ws.h)
        ws.scan(total)
        # Through the gate y = (C . h + D u) * silu(z).
        g_s = ws.rows(gyT, s, "gy")
        if z is not None:
            z_s = ws.rows(zT, s, "z")
            sig = torch.sigmoid(z_s, out=ws.tmp("zsig"))
            y_pre = ws.tmp("ypre")
            torch.matmul(c_s.unsqueeze(2), ws.h, out=y_pre.unsqueeze(2))
            if D is not None:
                y_pre.addcmul_(u_s, D)
            gz_s = ws.out_rows(gz, s, "gz")
            dsilu = torch.neg(sig, out=ws.tmp("dsilu")).add_(1.0).mul_(z_s).add_(1.0).mul_(sig)
            torch.mul(g_s, y_pre, out=gz_s).mul_(dsilu)  # silu'(z) = sig (1 + z (1 - sig))
            ws.put(gz, s, gz_s)
            g_s = torch.mul(g_s, sig.mul_(z_s), out=ws.tmp("gcore"))
        if D is not None:
            gD += torch.mul(g_s, u_s, out=ws.tmp("gDu")).sum((0, 1))
        torch.mul(c_s.unsqueeze(3), g_s.unsqueeze(2), out=ws.w)  # (B, S, N, D) C_t gy_t
        ws.reverse_scan(total)  # ws.w: gh_t, ws.a: a_t gh_t
        ws.gcarry_k[ws.nc].copy_(ws.gcarry_k[0])  # what flows into the previous segment
        gc_s = ws.out_rows(gCT, s, "gC")
        torch.matmul(g_s.unsqueeze(2), ws.h.transpose(-1, -2), out=gc_s.unsqueeze(2))  # gy_t . h_t
        ws.put(gCT, s, gc_s)
        gx = ws.tmp("gx")
        torch.matmul(b_s.unsqueeze(2), ws.w, out=gx.unsqueeze(2))  # B_t . gh_t
        gb_s = ws.out_rows(gBT, s, "gB")
        torch.matmul(x_s.unsqueeze(2), ws.w.transpose(-1, -2), out=gb_s.unsqueeze(2))  # x_t . gh_t
        ws.put(gBT, s, gb_s)
        # g_t = (a_t gh_t) h_{t-1}, in place of ws.a.
        ws.a[:, 1:].mul_(ws.h[:, :-1])
        ws.a[:, 0].mul_(h_in)
        gA += torch.mul(ws.a, d_s.unsqueeze(2), out=ws.w).view(-1, n * dim).sum(0)
        gd_s = ws.out_rows(gdelta, s, "gd")
        torch.sum(ws.a.mul_(AT), 2, out=gd_s)
        gd_s.addcmul_(gx, u_s)  # x = delta * u
        gu_s = ws.out_rows(gu, s, "gu")
        torch.mul(gx, d_s, out=gu_s)
        if D is not None:
            gu_s.addcmul_(g_s, D)
        ws.put(gu, s, gu_s)
        if softplus:
            gd_s.mul_(torch.sigmoid(pre_s, out=ws.tmp("psig")))
        if gbias is not None:
            gbias += gd_s.sum((0, 1))
        ws.put(gdelta, s, gd_s)
    gzT = None if gz is None else gz.transpose(1, 2)
    return (gu.transpose(1, 2), gdelta.transpose(1, 2), gA.view(n, dim).t(), gBT.transpose(1, 2),
            gCT.transpose(1, 2), gD, gzT, gbias)
