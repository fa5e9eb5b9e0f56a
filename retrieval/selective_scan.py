"""Selective-scan backends (triton | cuda | torch | ref) for Mamba, the causal depthwise conv, the backend switch."""
from __future__ import annotations

import functools
import math
import os
import threading
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

__all__ = [
    "BACKENDS", "ENV_VAR", "available_backends", "causal_conv1d_fn", "causal_conv1d_ref",
    "cuda_kernels_available", "resolve_backend", "selective_scan_fn", "selective_scan_ref",
]

BACKENDS = ("auto", "triton", "cuda", "torch", "ref")
ENV_VAR = "VMR_SCAN_BACKEND"
_INSTALL_HINT = "install the CUDA kernels with `pip install .[cuda]` on a CUDA host"

# --- backend choice: the argument beats the environment variable, which beats "auto" -----------


@functools.lru_cache(maxsize=None)
def cuda_kernels_available() -> bool:
    """True when mamba-ssm's selective-scan CUDA kernel imports (cached: the import is slow)."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn  # noqa: F401
    except Exception:  # a broken build raises OSError/RuntimeError from the .so, not only ImportError
        return False
    return True


@functools.lru_cache(maxsize=None)
def causal_conv1d_available() -> bool:
    """True when the causal-conv1d CUDA kernel imports (cached)."""
    try:
        from causal_conv1d import causal_conv1d_fn  # noqa: F401
    except Exception:
        return False
    return True


def _triton_reason(device: torch.device) -> str | None:
    from .kernels.support import triton_unavailable_reason
    return triton_unavailable_reason(device)


def available_backends() -> list[str]:
    """Backends that can run in this environment, fastest first (`triton` and `cuda` need CUDA tensors too)."""
    triton = ["triton"] if torch.cuda.is_available() and _triton_reason(torch.device("cuda")) is None else []
    return triton + (["cuda"] if cuda_kernels_available() else []) + ["torch", "ref"]


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
        if device.type != "cuda":
            return "torch"
        # Measured on an H100 (BENCHMARKS.md, sections 9b-9d): the Triton block path beats mamba-ssm's kernels
        # forward (2.1-2.3x the scan, 2.8-3.2x the encoder), forward + backward (1.8x the scan) and per
        # training step (1.4-1.9x).
        if _triton_reason(device) is None:
            return "triton"
        return "cuda" if kernels_ok else "torch"
    if name == "triton":
        reason = _triton_reason(device)
        if reason is not None:
            raise RuntimeError(f"backend 'triton': {reason} (or set {ENV_VAR}=torch)")
        return name
    if name == "cuda":
        if not kernels_ok:
            raise RuntimeError(f"backend 'cuda' needs {what}, which is not importable here; {_INSTALL_HINT}, "
                               f"or use backend='torch' (or set {ENV_VAR}=torch)")
        if device.type != "cuda":
            raise RuntimeError(f"backend 'cuda' needs CUDA tensors, got device {device}; move the model to a GPU "
                               f"or use backend='torch' (or set {ENV_VAR}=torch)")
    return name


def resolve_backend(tensor_or_device, backend: str | None = None) -> str:
    """The selective-scan backend ("triton", "cuda", "torch" or "ref") for tensors on this device.

    `backend` overrides $VMR_SCAN_BACKEND, which overrides "auto" (on CUDA tensors: triton where Triton
    runs, else cuda when mamba-ssm imports, else torch; elsewhere torch).
    An explicit backend that cannot run raises RuntimeError. `triton` is a whole-block path (retrieval.kernels);
    single scans it is asked for run on the `cuda` kernels where they import, else on `torch`.
    """
    return _resolve(_device_of(tensor_or_device), backend, cuda_kernels_available(), "mamba-ssm")


# --- public ops --------------------------------------------------------------------------------


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
    if name == "triton":  # the Triton kernel scans whole bidirectional blocks (BiMambaMixer), not one direction
        name = "cuda" if cuda_kernels_available() else "torch"
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
    # unbind, not [:, :, t]: indexing's backward would zero-fill a full (B, D, L, N) tensor per step.
    for a_t, b_t, c_t in zip(decay.unbind(2), drive.unbind(2), C.unbind(2)):
        h = a_t * h + b_t
        ys.append(torch.einsum("bdn,bn->bd", h, c_t))
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
    name = _resolve(x.device, backend, causal_conv1d_available(), "causal-conv1d")
    if name == "cuda":
        from causal_conv1d import causal_conv1d_fn as cuda_conv
        return cuda_conv(x, weight, bias, activation=activation)
    return causal_conv1d_ref(x, weight, bias, activation)


# --- torch backend: a chunked scan, vectorised over batch, channels and states ------------------
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
# The elementwise (B, L, D) work (delta_bias, softplus, delta * u, D, silu(z)) runs as a few
# whole-sequence ops before or after the loop; all scratch is reused between calls (_Scratch).
# Backward is a hand-written reverse scan over the same structure; it recomputes states per
# segment from the saved segment-start states (B, nseg, N, D), so training memory stays
# O(B L D), not O(B L D N).

_LOG2E = 1.0 / math.log(2.0)
# Floor for log2 of a decay: exp2 of anything lower gives subnormals, which make the
# multiply-adds ~50x slower on x86; 2**-64 ~ 5e-20 changes results by < 1e-19 relative.
_MIN_LOG2_DECAY = -64.0
# Elements of one (B, S, N, D) work buffer: 4 MB of fp32, so the working set stays in L2/L3
# (measured on 2 Zen4 cores at D=384, N=16: segments of 120-200 steps beat 64 or 256 by ~10%).
_SEGMENT_ELEMS = 1 << 20
# Plan cost model (rough 2-core CPU numbers): per work-buffer element and step, per tensor op.
_COST_ELEM_NS = 0.6
_COST_OP_NS = 4000.0
_OPS_PER_SEGMENT = 8
# Largest scratch buffer kept between calls (32 MB of fp32); bigger ones are allocated per call.
_POOL_MAX_ELEMS = 1 << 23


@functools.lru_cache(maxsize=512)
def _plan(seqlen: int, step_elems: int) -> tuple[int, int, int]:
    """(T, nc, nseg): chunk length, chunks per segment and segments, for step_elems = B * N * D."""
    s_max = max(1, min(seqlen, _SEGMENT_ELEMS // max(1, step_elems)))
    best = None
    for t in range(1, min(s_max, 64) + 1):
        for nc in range(1, min(s_max // t, 64) + 1):
            nseg = -(-seqlen // (t * nc))
            # ~7 passes per padded step (6 when one chunk needs no chaining pass), plus the
            # per-chunk decays (4 passes over 1/T of the data), plus per-op overhead.
            if nc == 1:
                passes, ops = 6 * t, t + _OPS_PER_SEGMENT
            else:
                passes, ops = 7 * t * nc + 4 * nc, 2 * t + nc + _OPS_PER_SEGMENT
            cost = nseg * (passes / 7 * step_elems * _COST_ELEM_NS + ops * _COST_OP_NS)
            if best is None or cost < best[0]:
                best = (cost, t, nc, nseg)
    return best[1:]


class _Scratch(threading.local):
    """Per-thread CPU work buffers, reused by name across calls; they never escape a call.

    glibc maps every multi-MB block fresh and unmaps it on free, so new buffers cost a page
    fault per 4 kB on each call (~5000 per scan: more than the arithmetic). The segment buffers
    are bounded by _SEGMENT_ELEMS; whole-sequence copies are pooled up to _POOL_MAX_ELEMS each.
    """

    def __init__(self):
        self.pool: dict = {}

    def get(self, name: str, shape: tuple, like: torch.Tensor) -> torch.Tensor:
        numel = math.prod(shape)
        if like.device.type != "cpu" or numel > _POOL_MAX_ELEMS:
            return like.new_empty(shape)  # the CUDA caching allocator already reuses blocks
        buf = self.pool.get((name, like.dtype))
        if buf is None or buf.numel() < numel:
            # Never an inference tensor: one made under inference_mode could not be written later outside it.
            with torch.inference_mode(False):
                buf = self.pool[(name, like.dtype)] = torch.empty(numel, dtype=like.dtype)
        return buf[:numel].view(shape)


_SCRATCH = _Scratch()


def _selective_scan_torch(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    dtype_in, ct = u.dtype, _compute_dtype(u)
    args = [None if t is None else t.to(ct) for t in (u, delta, A, B, C, D, z, delta_bias)]
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in args):
        y = _SelectiveScan.apply(*args, delta_softplus)
    else:  # inference: nothing saved, no autograd bookkeeping
        y = _scan_forward(*args, delta_softplus, save=False).y.transpose(1, 2)
    # (B, D, L) view of a time-major buffer: the layout the model's next Linear wants.
    return y.to(dtype_in)


class _SelectiveScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus):
        out = _scan_forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, save=True)
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, out.states, out.delta, out.y_pre)
        ctx.delta_softplus = delta_softplus
        return out.y.transpose(1, 2)

    @staticmethod
    @once_differentiable
    def backward(ctx, gy):
        return (*_scan_backward(gy, *ctx.saved_tensors, ctx.delta_softplus), None)


class _Forward(NamedTuple):
    y: torch.Tensor  # (B, L, D)
    states: torch.Tensor | None  # (B, nseg, N, D) states entering each segment
    delta: torch.Tensor | None  # (B, Lp, D) softplus(delta + delta_bias), zero-padded to whole segments
    y_pre: torch.Tensor | None  # (B, L, D) C . h + D u, before the silu(z) gate


def _time_major(x: torch.Tensor, name: str) -> torch.Tensor:
    """(B, C, L) -> contiguous (B, L, C): free for time-major buffers, else a scratch copy (call-local)."""
    xT = x.transpose(1, 2)
    if xT.is_contiguous():
        return xT
    return _copy_time_major(_SCRATCH.get(name, xT.shape, x), x)


def _copy_time_major(dst: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """dst[:, :L] = x (B, C, L) transposed; dst is (B, L or more, C), contiguous."""
    seqlen = x.shape[2]
    if x.transpose(1, 2).is_contiguous() or x.shape[0] * x.shape[1] * seqlen < 4096:
        dst[:, :seqlen] = x.transpose(1, 2)
    else:
        for b in range(x.shape[0]):  # a full 2-D transpose takes torch's cache-blocked copy path
            dst[b, :seqlen].copy_(x[b].t())
    return dst


def _softplus_(x: torch.Tensor, scratch) -> torch.Tensor:
    """In-place F.softplus (threshold 20 included); vectorised on CPU fp32, where torch's log1p is scalar.

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
    """One call's plan, padded whole-sequence buffers, and the per-segment buffers with their per-step views."""

    def __init__(self, u: torch.Tensor, n: int, backward: bool = False):
        bsz, dim, seqlen = u.shape
        self.bsz, self.dim, self.seqlen, self.n, self.like = bsz, dim, seqlen, n, u
        self.T, self.nc, self.nseg = T, nc, _ = _plan(seqlen, bsz * n * dim)
        self.S = T * nc
        self.padded_len = self.nseg * self.S
        big = (bsz, self.S, n, dim)
        self.a = _SCRATCH.get("a", big, u)  # decays exp(delta_t A); in backward then g_t
        self.h = _SCRATCH.get("h", big, u)  # drives x_t B_t, overwritten by the states h_t
        self.a_j = self._steps(self.a)
        self.h_j = self._steps(self.h)
        self.hloc = _SCRATCH.get("hloc", (bsz, nc, n, dim), u)  # per-chunk results from a zero start
        self.hloc_k = self.hloc.unbind(1)
        self.carry = _SCRATCH.get("carry", (bsz, nc + 1, n, dim), u)  # state entering chunk k
        self.carry_k = self.carry.unbind(1)
        if backward:
            self.w = _SCRATCH.get("w", big, u)  # C_t gy_t, then gh_t
            self.w_j = self._steps(self.w)
            self.gcarry = _SCRATCH.get("gcarry", (bsz, nc + 1, n, dim), u)  # a*gh leaving chunk k
            self.gcarry_k = self.gcarry.unbind(1)

    def _steps(self, buf: torch.Tensor) -> list[torch.Tensor]:
        """Views of step j of every chunk: (B, nc, N, D) each."""
        return list(buf.view(self.bsz, self.nc, self.T, *buf.shape[2:]).unbind(2))

    def seq(self, name: str, width: int, fresh: bool = False) -> torch.Tensor:
        """A (B, Lp, width) buffer over whole segments, its padding rows zeroed; scratch unless fresh."""
        shape = (self.bsz, self.padded_len, width)
        buf = self.like.new_empty(shape) if fresh else _SCRATCH.get(name, shape, self.like)
        buf[:, self.seqlen:].zero_()  # padding steps: delta = x = C = gy = 0, so they change nothing
        return buf

    def padded(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """(B, C, L) input as a zero-padded time-major (B, Lp, C) scratch copy."""
        return _copy_time_major(self.seq(name, x.shape[1]), x)

    def chunk_decays(self, dT: torch.Tensor, A2: torch.Tensor) -> torch.Tensor | None:
        """exp(A * sum of delta over each chunk): (B, nseg * nc, N, D), for dT (B, Lp, D); None if unused."""
        if self.nc == 1:
            return None
        dsum = dT.view(self.bsz, self.nseg * self.nc, self.T, self.dim).sum(2)
        total = _SCRATCH.get("total", (self.bsz, self.nseg * self.nc, self.n, self.dim), self.like)
        return torch.mul(dsum.unsqueeze(2), A2, out=total).clamp_min_(_MIN_LOG2_DECAY).exp2_()

    def decay_floors(self, dT: torch.Tensor, A2: torch.Tensor) -> list[bool]:
        """Per segment: can some exp(delta_t A) fall below the floor (so the clamp pass is needed)?"""
        per_seg = dT.view(self.bsz, self.nseg, -1)
        # amax/amin, not aminmax: the fused one is ~40x slower on CPU.
        bound = torch.maximum(per_seg.amax(2).abs(), per_seg.amin(2).abs()).amax(0) * A2.abs().max()
        return (bound > -_MIN_LOG2_DECAY).tolist()

    def segment(self, s: int, *seqs: torch.Tensor) -> list[torch.Tensor]:
        t0 = s * self.S
        return [x[:, t0:t0 + self.S] for x in seqs]

    def recurrence(self, d: torch.Tensor, x: torch.Tensor, b: torch.Tensor, A2: torch.Tensor, floor: bool) -> None:
        """self.a = exp(d_t A) and self.h = x_t B_t for one segment: d, x (B, S, D), b (B, S, N)."""
        torch.mul(d.unsqueeze(2), A2, out=self.a)  # (B, S, N, D)
        if floor:
            self.a.clamp_min_(_MIN_LOG2_DECAY)
        self.a.exp2_()
        torch.mul(x.unsqueeze(2), b.unsqueeze(3), out=self.h)  # (B, S, N, D)

    def scan(self, total: torch.Tensor | None) -> None:
        """In place: self.h from drives to states h_t, from carry[:, 0]; leaves the end state in carry[:, nc]."""
        a_j, h_j, carry_k, T = self.a_j, self.h_j, self.carry_k, self.T
        if self.nc == 1:  # a single chunk: the plain recurrence from the known start
            prev = self.carry[:, :1]
            for j in range(T):
                torch.addcmul(h_j[j], a_j[j], prev, out=h_j[j])
                prev = h_j[j]
            carry_k[1].copy_(prev[:, 0])
            return
        # (1) each chunk's end state from a zero start
        if T == 1:
            hloc_k = h_j[0].unbind(1)
        else:
            hloc = torch.addcmul(h_j[1], a_j[1], h_j[0], out=self.hloc)
            for j in range(2, T):
                torch.addcmul(h_j[j], a_j[j], hloc, out=hloc)
            hloc_k = self.hloc_k
        # (2) chain the chunks: state entering chunk k+1
        total_k = total.unbind(1)
        for k in range(self.nc):
            torch.addcmul(hloc_k[k], total_k[k], carry_k[k], out=carry_k[k + 1])
        # (3) every state from its chunk's true start
        prev = self.carry[:, : self.nc]
        for j in range(T):
            torch.addcmul(h_j[j], a_j[j], prev, out=h_j[j])
            prev = h_j[j]

    def reverse_scan(self, total: torch.Tensor | None) -> None:
        """In place: self.w from C_t gy_t to gh_t = C_t gy_t + a_{t+1} gh_{t+1}, from gcarry[:, nc].

        gcarry[:, k + 1] is what flows into chunk k from its right (a gh of the next step);
        leaves the segment's outflow a_t0 gh_t0 in gcarry[:, 0].
        """
        a_j, w_j, gcarry_k, T = self.a_j, self.w_j, self.gcarry_k, self.T
        if self.nc == 1:  # a single chunk: the plain reverse recurrence from the known inflow
            w_j[T - 1].add_(self.gcarry[:, 1:])
            for j in range(T - 2, -1, -1):
                torch.addcmul(w_j[j], a_j[j + 1], w_j[j + 1], out=w_j[j])
            torch.mul(a_j[0][:, 0], w_j[0][:, 0], out=gcarry_k[0])
            return
        # (1) each chunk's outflow a_0 gh_0 from a zero inflow
        if T == 1:
            gloc = torch.mul(a_j[0], w_j[0], out=self.hloc)
        else:
            gloc = torch.addcmul(w_j[T - 2], a_j[T - 1], w_j[T - 1], out=self.hloc)
            for j in range(T - 3, -1, -1):
                torch.addcmul(w_j[j], a_j[j + 1], gloc, out=gloc)
            gloc.mul_(a_j[0])
        # (2) chain the chunks right to left
        total_k, gloc_k = total.unbind(1), self.hloc_k
        for k in range(self.nc - 1, -1, -1):
            torch.addcmul(gloc_k[k], total_k[k], gcarry_k[k + 1], out=gcarry_k[k])
        # (3) every gh_t from its chunk's true inflow
        w_j[T - 1].add_(self.gcarry[:, 1:])
        for j in range(T - 2, -1, -1):
            torch.addcmul(w_j[j], a_j[j + 1], w_j[j + 1], out=w_j[j])


def _effective_delta(ws: _Workspace, delta, delta_bias, softplus, fresh: bool) -> torch.Tensor:
    """softplus(delta + delta_bias) as asked, time-major and zero-padded: (B, Lp, D)."""
    dT = _copy_time_major(ws.seq("d_eff", ws.dim, fresh=fresh), delta)
    core = dT[:, : ws.seqlen]
    if delta_bias is not None:
        core.add_(delta_bias)
    if softplus:
        _softplus_(core, lambda name: _SCRATCH.get(name, core.shape, core))
    return dT


def _scan_forward(u, delta, A, B, C, D, z, delta_bias, softplus, save) -> _Forward:
    """The scan on time-major segments; with save, also what backward needs."""
    bsz, dim, seqlen = u.shape
    n = A.shape[1]
    ws = _Workspace(u, n)
    A2 = (A.t() * _LOG2E).contiguous()  # (N, D): exp(d A) = exp2(d A2)
    # Whole-sequence elementwise work first (few big ops), then the segment loop does only the scan.
    dT = _effective_delta(ws, delta, delta_bias, softplus, fresh=save)  # (B, Lp, D)
    uT = _time_major(u, "uT")  # (B, L, D)
    xT = ws.seq("x", dim)
    torch.mul(dT[:, :seqlen], uT, out=xT[:, :seqlen])  # delta_t u_t
    BT, CT = ws.padded("B", B), ws.padded("C", C)  # (B, Lp, N)
    total = ws.chunk_decays(dT, A2)
    floors = ws.decay_floors(dT, A2)
    yT = ws.seq("y", dim, fresh=True)  # (B, Lp, D)
    states = u.new_empty(bsz, ws.nseg, n, dim) if save else None
    ws.carry_k[0].zero_()
    for s in range(ws.nseg):
        if states is not None:
            states[:, s] = ws.carry_k[0]
        d_s, x_s, b_s, c_s, y_s = ws.segment(s, dT, xT, BT, CT, yT)
        ws.recurrence(d_s, x_s, b_s, A2, floors[s])
        ws.scan(None if total is None else total[:, s * ws.nc:(s + 1) * ws.nc])
        torch.matmul(c_s.unsqueeze(2), ws.h, out=y_s.unsqueeze(2))  # (B,S,1,N) @ (B,S,N,D): C_t . h_t
        ws.carry_k[0].copy_(ws.carry_k[ws.nc])
    y = yT[:, :seqlen]
    if D is not None:
        y.addcmul_(uT, D)
    y_pre = None
    if z is not None:
        zT = _time_major(z, "zT")
        silu = torch.sigmoid(zT, out=_SCRATCH.get("silu", zT.shape, zT)).mul_(zT)
        if save:
            y_pre, y = y, y * silu
        else:
            y.mul_(silu)
    return _Forward(y, states, dT if save else None, y_pre)


def _scan_backward(gy, u, delta, A, B, C, D, z, delta_bias, states, d_eff, y_pre, softplus):
    """Gradients for (u, delta, A, B, C, D, z, delta_bias) of sum(gy * y), segment by segment in reverse.

    With a_t = exp(delta_t A), gh_t = dL/dh_t = C_t gy_t + a_{t+1} gh_{t+1} (gy after the z gate):
    dC_t = gy_t . h_t, dB_t = x_t . gh_t, dx_t = B_t . gh_t, and g_t = gh_t a_t h_{t-1} is the
    gradient of delta_t A, so d delta_t = sum_n A g_t (+ u_t dx_t) and dA = sum_t delta_t g_t.
    """
    bsz, dim, seqlen = u.shape
    n = A.shape[1]
    ws = _Workspace(u, n, backward=True)
    A2 = (A.t() * _LOG2E).contiguous()
    AT = A.t().contiguous()  # (N, D)
    dT = d_eff  # (B, Lp, D), saved by forward
    uT = _time_major(u, "uT")
    xT = ws.seq("x", dim)
    torch.mul(dT[:, :seqlen], uT, out=xT[:, :seqlen])
    BT, CT = ws.padded("B", B), ws.padded("C", C)
    total = ws.chunk_decays(dT, A2)
    floors = ws.decay_floors(dT, A2)
    # Through the gate y = (C . h + D u) * silu(z): gT = dL/d(C . h).
    gT = ws.padded("g", gy)  # (B, Lp, D)
    g = gT[:, :seqlen]
    gz = None
    if z is not None:
        zT = _time_major(z, "zT")
        sig = torch.sigmoid(zT, out=_SCRATCH.get("zsig", zT.shape, zT))
        dsilu = torch.neg(sig, out=_SCRATCH.get("dsilu", zT.shape, zT)).add_(1.0).mul_(zT).add_(1.0).mul_(sig)
        gz = torch.mul(g, y_pre).mul_(dsilu)  # silu'(z) = sig (1 + z (1 - sig))
        g.mul_(sig.mul_(zT))
    gD = None if D is None else torch.mul(g, uT, out=_SCRATCH.get("gDu", g.shape, g)).sum((0, 1))
    gxT = ws.seq("gx", dim)
    gdT = ws.seq("gd", dim, fresh=True)
    gBT, gCT = ws.seq("gB", n, fresh=True), ws.seq("gC", n, fresh=True)
    gA = u.new_zeros(n * dim)
    ws.gcarry_k[ws.nc].zero_()
    for s in reversed(range(ws.nseg)):
        d_s, x_s, b_s, c_s, g_s, gx_s, gd_s, gb_s, gc_s = ws.segment(s, dT, xT, BT, CT, gT, gxT, gdT, gBT, gCT)
        total_s = None if total is None else total[:, s * ws.nc:(s + 1) * ws.nc]
        # Recompute this segment's forward: decays in ws.a, states in ws.h.
        h_in = states[:, s]  # (B, N, D)
        ws.carry_k[0].copy_(h_in)
        ws.recurrence(d_s, x_s, b_s, A2, floors[s])
        ws.scan(total_s)
        torch.mul(c_s.unsqueeze(3), g_s.unsqueeze(2), out=ws.w)  # (B, S, N, D) C_t gy_t
        ws.reverse_scan(total_s)  # ws.w: gh_t
        ws.gcarry_k[ws.nc].copy_(ws.gcarry_k[0])  # what flows into the previous segment
        # Contractions over D or N: row vector x matrix per time step.
        torch.matmul(g_s.unsqueeze(2), ws.h.transpose(-1, -2), out=gc_s.unsqueeze(2))  # gy_t . h_t
        torch.matmul(b_s.unsqueeze(2), ws.w, out=gx_s.unsqueeze(2))  # B_t . gh_t
        torch.matmul(x_s.unsqueeze(2), ws.w.transpose(-1, -2), out=gb_s.unsqueeze(2))  # x_t . gh_t
        # g_t = gh_t a_t h_{t-1}, in place of ws.a.
        ws.a.mul_(ws.w)
        ws.a[:, 1:].mul_(ws.h[:, :-1])
        ws.a[:, 0].mul_(h_in)
        gA += torch.mul(ws.a, d_s.unsqueeze(2), out=ws.w).view(-1, n * dim).sum(0)
        torch.sum(ws.a.mul_(AT), 2, out=gd_s)  # sum_n A g_t
    gx, gd = gxT[:, :seqlen], gdT[:, :seqlen]
    gd.addcmul_(gx, uT)  # x = delta * u
    gu = gx * dT[:, :seqlen]
    if D is not None:
        gu.addcmul_(g, D)
    if softplus:  # softplus' = sigmoid of its input
        pre = _time_major(delta, "dT")
        if delta_bias is not None:
            pre = torch.add(pre, delta_bias, out=_SCRATCH.get("pre", pre.shape, pre))
        gd.mul_(torch.sigmoid(pre, out=_SCRATCH.get("psig", pre.shape, pre)))
    gbias = None if delta_bias is None else gd.sum((0, 1))
    return (gu.transpose(1, 2), gd.transpose(1, 2), gA.view(n, dim).t(), gBT[:, :seqlen].transpose(1, 2),
            gCT[:, :seqlen].transpose(1, 2), gD, None if gz is None else gz.transpose(1, 2), gbias)
