"""Selective scan: torch backend vs the sequential reference (outputs, all gradients), causal conv, backend choice."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import retrieval.selective_scan as ss
from retrieval.selective_scan import (
    available_backends,
    causal_conv1d_fn,
    causal_conv1d_ref,
    cuda_kernels_available,
    resolve_backend,
    selective_scan_fn,
    selective_scan_ref,
)

TOL = 1e-5  # max |a - b| / max |b|, fp32 torch backend vs a float64 reference


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    scale = b.abs().max().item()
    diff = (a - b).abs().max().item()
    return diff / scale if scale > 0 else diff


def make_inputs(batch=2, dim=6, seqlen=7, dstate=4, seed=0, dtype=torch.float32, device="cpu",
                use_D=True, use_z=True, use_bias=True, delta_scale=0.5):
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(device=device, dtype=dtype)

    # A like the Mamba init (-1..-N per channel) with per-channel jitter; delta_bias like dt_proj's init.
    # Weights (A, D, delta_bias) are fp32 as in the model, fp64 only for an fp64 run.
    wdtype = torch.float64 if dtype == torch.float64 else torch.float32
    A = -torch.arange(1, dstate + 1.0).repeat(dim, 1) * torch.rand(dim, 1, generator=g).add(0.5)
    dt = torch.exp(torch.rand(dim, generator=g) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
    bias = dt + torch.log(-torch.expm1(-dt))
    return dict(u=rnd(batch, dim, seqlen), delta=rnd(batch, dim, seqlen, scale=delta_scale),
                A=A.to(device, wdtype), B=rnd(batch, dstate, seqlen), C=rnd(batch, dstate, seqlen),
                D=rnd(dim).to(wdtype) if use_D else None, z=rnd(batch, dim, seqlen) if use_z else None,
                delta_bias=bias.to(device, wdtype) if use_bias else None)


def run_with_grads(fn, inputs, softplus, grad_out, dtype=None):
    """fn's output and the gradients of <output, grad_out> for every tensor input (inputs cast to dtype)."""
    leaves = {k: (None if v is None else (v if dtype is None else v.to(dtype)).detach().requires_grad_(True))
              for k, v in inputs.items()}
    y = fn(**leaves, delta_softplus=softplus)
    grads = torch.autograd.grad((y.to(grad_out.dtype) * grad_out).sum(), [v for v in leaves.values() if v is not None])
    names = [k for k, v in leaves.items() if v is not None]
    return y.detach(), dict(zip(names, grads))


def torch_backend(**kw):
    return selective_scan_fn(**kw, backend="torch")


def assert_parity(inputs, softplus, tol=TOL, seed=0):
    g = torch.Generator().manual_seed(seed + 1)
    grad_out = torch.randn(inputs["u"].shape, generator=g, dtype=torch.float64)
    y, grads = run_with_grads(torch_backend, inputs, softplus, grad_out.float())
    y_ref, grads_ref = run_with_grads(selective_scan_ref, inputs, softplus, grad_out, dtype=torch.float64)
    assert y.dtype == inputs["u"].dtype and y.shape == inputs["u"].shape
    errors = {"y": rel_err(y, y_ref)} | {f"d{k}": rel_err(grads[k], grads_ref[k]) for k in grads_ref}
    bad = {k: v for k, v in errors.items() if not v <= tol}
    assert not bad, f"relative errors above {tol}: {bad} (all: {errors})"


PLANS = ["auto", (1, 1), (4, 1), (1, 3), (2, 3), (5, 2)]  # forced (chunk length T, chunks per segment)


def force_plan(monkeypatch, plan):
    """Use the real planner, or a fixed chunking (many segments and a short tail for long inputs)."""
    if plan != "auto":
        T, nc = plan
        monkeypatch.setattr(ss, "_plan", lambda seqlen, step_elems: (T, nc, -(-seqlen // (T * nc))))


@pytest.fixture(params=PLANS, ids=str)
def any_plan(request, monkeypatch):
    force_plan(monkeypatch, request.param)
    return request.param


@pytest.fixture(params=["auto", (2, 3)], ids=str)
def some_plan(request, monkeypatch):
    force_plan(monkeypatch, request.param)
    return request.param


# ---------------------------------------------------------------------------------------------
# The reference itself
# ---------------------------------------------------------------------------------------------

def test_ref_matches_elementwise_definition():
    inp = make_inputs(batch=1, dim=2, seqlen=5, dstate=3, dtype=torch.float64)
    y = selective_scan_ref(**inp, delta_softplus=True)
    u, delta, A, B, C = (inp[k][0] if inp[k].dim() == 3 else inp[k] for k in ("u", "delta", "A", "B", "C"))
    D, z, bias = inp["D"].double(), inp["z"][0], inp["delta_bias"]
    for d in range(2):
        h = [0.0] * 3
        for t in range(5):
            dt = math.log1p(math.exp(float(delta[d, t] + bias[d])))
            h = [math.exp(dt * float(A[d, n])) * h[n] + dt * float(B[n, t]) * float(u[d, t]) for n in range(3)]
            out = sum(float(C[n, t]) * h[n] for n in range(3)) + float(D[d]) * float(u[d, t])
            zz = float(z[d, t])
            out *= zz / (1.0 + math.exp(-zz))
            assert abs(out - float(y[0, d, t])) < 1e-12


# ---------------------------------------------------------------------------------------------
# torch backend vs reference: outputs and gradients of all inputs
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("seqlen", [1, 2, 3, 7, 33, 130])
def test_torch_matches_ref_all_options(seqlen, any_plan):
    assert_parity(make_inputs(seqlen=seqlen, seed=seqlen), softplus=True)


@pytest.mark.parametrize("use_D,use_z,use_bias,softplus", [
    (False, False, False, False), (True, False, False, False), (False, True, False, False),
    (False, False, True, False), (False, False, False, True), (True, True, False, True),
])
@pytest.mark.parametrize("seqlen", [3, 33])
def test_torch_matches_ref_option_subsets(use_D, use_z, use_bias, softplus, seqlen, some_plan):
    inp = make_inputs(seqlen=seqlen, use_D=use_D, use_z=use_z, use_bias=use_bias, seed=7)
    if not softplus:  # without softplus keep delta + delta_bias > 0, as a model's would be
        inp["delta"] = inp["delta"].abs() * 0.2
        if use_bias:
            inp["delta_bias"] = inp["delta_bias"].abs() * 0.01
    assert_parity(inp, softplus=softplus)


@pytest.mark.parametrize("seqlen", [2, 33, 130])
def test_torch_matches_ref_both_directions(seqlen, some_plan):
    """The bidirectional mixer scans the flipped sequence too."""
    inp = make_inputs(seqlen=seqlen, seed=3)
    flipped = {k: (v.flip(-1) if v is not None and v.dim() == 3 else v) for k, v in inp.items()}
    assert_parity(inp, softplus=True)
    assert_parity(flipped, softplus=True)


def test_torch_matches_ref_model_sized_channels():
    # N = 16 and enough channels/steps for several chunks and segments under the real plan.
    assert_parity(make_inputs(batch=2, dim=32, seqlen=130, dstate=16, seed=11), softplus=True)


def test_torch_strong_decay_stays_finite_and_exact(some_plan):
    """Huge delta * |A| (resets) hits the decay floor; results must stay finite and match."""
    inp = make_inputs(seqlen=40, seed=5, delta_scale=1.0)
    inp["delta"] = inp["delta"].abs() * 40.0  # delta * A down to ~ -1000
    assert_parity(inp, softplus=False)


def test_torch_positive_A_matches_ref():
    inp = make_inputs(seqlen=20, seed=9)
    inp["A"] = inp["A"].abs() * 0.05  # growing modes: no clamping applies
    assert_parity(inp, softplus=True)


def test_torch_backward_gradcheck_float64(any_plan):
    inp = make_inputs(batch=2, dim=3, seqlen=9, dstate=2, dtype=torch.float64, seed=2)
    keys = [k for k, v in inp.items() if v is not None]

    def fn(*tensors):
        return selective_scan_fn(**dict(zip(keys, tensors)), delta_softplus=True, backend="torch")

    args = tuple(inp[k].detach().requires_grad_(True) for k in keys)
    assert torch.autograd.gradcheck(fn, args, eps=1e-6, atol=1e-8, rtol=1e-6)


def test_torch_time_major_views_match():
    """The model passes (B, D, L) views of time-major buffers; results must not depend on strides."""
    inp = make_inputs(seqlen=33, seed=4)
    tm = {k: (v.transpose(1, 2).contiguous().transpose(1, 2) if v is not None and v.dim() == 3 else v)
          for k, v in inp.items()}
    y = selective_scan_fn(**inp, delta_softplus=True, backend="torch")
    y_tm = selective_scan_fn(**tm, delta_softplus=True, backend="torch")
    torch.testing.assert_close(y_tm, y, rtol=0, atol=0)


def test_torch_no_grad_path_equals_autograd_path():
    inp = make_inputs(seqlen=33, seed=6)
    with torch.no_grad():
        y0 = selective_scan_fn(**inp, delta_softplus=True, backend="torch")
    leaves = {k: (None if v is None else v.clone().requires_grad_(True)) for k, v in inp.items()}
    y1 = selective_scan_fn(**leaves, delta_softplus=True, backend="torch")
    torch.testing.assert_close(y1.detach(), y0, rtol=0, atol=0)


def test_torch_inference_mode_then_training():
    """Work buffers reused across calls must not become inference tensors."""
    inp = make_inputs(seqlen=33, seed=12)
    with torch.inference_mode():
        y0 = selective_scan_fn(**inp, delta_softplus=True, backend="torch")
    assert_parity(inp, softplus=True)
    with torch.inference_mode():
        torch.testing.assert_close(selective_scan_fn(**inp, delta_softplus=True, backend="torch"), y0)


def test_torch_bf16_inputs_compute_in_fp32():
    inp = make_inputs(seqlen=33, seed=8, dtype=torch.bfloat16)
    y = selective_scan_fn(**inp, delta_softplus=True, backend="torch")
    y_ref = selective_scan_ref(**{k: (None if v is None else v.double()) for k, v in inp.items()},
                               delta_softplus=True)
    assert y.dtype == torch.bfloat16
    assert rel_err(y, y_ref) < 1e-2  # only the final rounding to bf16


def test_softplus_matches_torch_over_range():
    x = torch.linspace(-100, 100, 200001)
    ref = F.softplus(x.double())
    ours = ss._softplus_(x.clone(), lambda name: torch.empty_like(x))
    ok = ref > 1e-30  # below that float32 underflows either way
    # exp via exp2 rounds |x| * log2(e): relative error grows like |x| * eps, only where softplus ~ e^-|x|.
    bound = 1e-7 * (3 + x.double().abs())
    assert (((ours.double() - ref).abs() / ref) <= bound)[ok].all()


def test_ref_backend_dispatch_is_the_reference():
    inp = make_inputs(seqlen=7)
    y = selective_scan_fn(**inp, delta_softplus=True, backend="ref")
    torch.testing.assert_close(y, selective_scan_ref(**inp, delta_softplus=True), rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,bad_shape", [
    ("u", (2, 6)), ("delta", (2, 6, 8)), ("A", (5, 4)), ("A", (6,)), ("B", (2, 4, 8)), ("B", (2, 1, 4, 7)),
    ("C", (2, 3, 7)), ("D", (5,)), ("z", (2, 6, 6)), ("delta_bias", (6, 1)),
])
def test_bad_shapes_raise_value_error_naming_argument(name, bad_shape):
    inp = make_inputs()
    inp[name] = torch.zeros(bad_shape)
    with pytest.raises(ValueError, match=rf"\b{name} has shape \({bad_shape[0]},") as info:
        selective_scan_fn(**inp, backend="torch")
    assert "expected" in str(info.value)


def test_empty_sequence_and_complex_A_rejected():
    inp = make_inputs(seqlen=1)
    with pytest.raises(ValueError, match="seqlen >= 1"):
        selective_scan_fn(**{k: (v[..., :0] if v is not None and v.dim() == 3 else v) for k, v in inp.items()})
    inp["A"] = inp["A"].to(torch.complex64)
    with pytest.raises(ValueError, match="complex"):
        selective_scan_fn(**inp)


# ---------------------------------------------------------------------------------------------
# Causal depthwise conv
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("width,activation,use_bias", [(4, "silu", True), (2, None, False), (1, "swish", True)])
def test_causal_conv1d_matches_loop(width, activation, use_bias):
    g = torch.Generator().manual_seed(width)
    x, w = torch.randn(2, 5, 9, generator=g), torch.randn(5, width, generator=g)
    b = torch.randn(5, generator=g) if use_bias else None
    out = causal_conv1d_fn(x, w, b, activation=activation, backend="torch")
    expect = torch.zeros_like(x)
    for t in range(9):
        for k in range(width):  # tap k looks k steps back; weight's last tap is the current step
            if t - k >= 0:
                expect[:, :, t] += w[:, width - 1 - k] * x[:, :, t - k]
    if b is not None:
        expect += b[:, None]
    if activation is not None:
        expect = F.silu(expect)
    torch.testing.assert_close(out, expect, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(causal_conv1d_ref(x, w, b, activation), out, rtol=0, atol=0)


def test_causal_conv1d_bad_input():
    x = torch.zeros(1, 4, 5)
    with pytest.raises(ValueError, match="weight has shape"):
        causal_conv1d_fn(x, torch.zeros(3, 4))
    with pytest.raises(ValueError, match="bias has shape"):
        causal_conv1d_fn(x, torch.zeros(4, 4), torch.zeros(3))
    with pytest.raises(ValueError, match="activation"):
        causal_conv1d_fn(x, torch.zeros(4, 4), activation="relu")
    with pytest.raises(ValueError, match="x has shape"):
        causal_conv1d_fn(torch.zeros(4, 5), torch.zeros(4, 4))


# ---------------------------------------------------------------------------------------------
# Backend choice
# ---------------------------------------------------------------------------------------------

@pytest.fixture
def no_env(monkeypatch):
    monkeypatch.delenv(ss.ENV_VAR, raising=False)
    return monkeypatch


def test_auto_on_cpu_is_torch(no_env):
    assert resolve_backend(torch.zeros(1)) == "torch"
    assert resolve_backend("cpu", "auto") == "torch"
    assert resolve_backend(torch.device("cpu"), "ref") == "ref"
    assert available_backends()[-2:] == ["torch", "ref"]
    assert ("cuda" in available_backends()) == cuda_kernels_available()


def test_env_override_and_argument_precedence(no_env):
    no_env.setenv(ss.ENV_VAR, "ref")
    assert resolve_backend("cpu") == "ref"
    assert resolve_backend("cpu", "torch") == "torch"  # the argument beats the environment
    no_env.setenv(ss.ENV_VAR, " Torch ")
    assert resolve_backend("cpu") == "torch"
    no_env.setenv(ss.ENV_VAR, "fast")
    with pytest.raises(ValueError, match=r"\$VMR_SCAN_BACKEND='fast'"):
        resolve_backend("cpu")
    with pytest.raises(ValueError, match="unknown selective-scan backend backend='flash'"):
        resolve_backend("cpu", "flash")


def test_env_override_reaches_selective_scan_fn(no_env):
    calls = []
    no_env.setattr(ss, "selective_scan_ref", lambda *a, **k: calls.append("ref") or torch.zeros(1))
    no_env.setenv(ss.ENV_VAR, "ref")
    selective_scan_fn(**make_inputs())
    assert calls == ["ref"]


def test_explicit_cuda_without_kernels_says_how_to_install(no_env):
    no_env.setattr(ss, "cuda_kernels_available", lambda: False)
    with pytest.raises(RuntimeError, match=r"pip install \.\[cuda\]"):
        resolve_backend("cpu", "cuda")
    no_env.setenv(ss.ENV_VAR, "cuda")
    with pytest.raises(RuntimeError, match=r"pip install \.\[cuda\]"):
        selective_scan_fn(**make_inputs())
    no_env.setattr(ss, "causal_conv1d_available", lambda: False)
    with pytest.raises(RuntimeError, match=r"causal-conv1d.*pip install \.\[cuda\]"):
        causal_conv1d_fn(torch.zeros(1, 2, 3), torch.zeros(2, 4))


def test_cuda_kernels_need_cuda_tensors(no_env):
    no_env.setattr(ss, "cuda_kernels_available", lambda: True)
    no_env.setattr(ss, "_triton_reason", lambda device: "Triton is not importable")  # auto's first choice
    assert resolve_backend("cpu") == "torch"  # auto: kernels alone are not enough
    with pytest.raises(RuntimeError, match="needs CUDA tensors, got device cpu"):
        resolve_backend(torch.zeros(1), "cuda")
    assert resolve_backend("cuda:0") == "cuda"


def test_auto_on_cuda_prefers_triton_then_mamba_ssm_then_torch(no_env):
    no_env.setattr(ss, "_triton_reason", lambda device: None)
    no_env.setattr(ss, "cuda_kernels_available", lambda: True)
    assert resolve_backend("cuda:0") == "triton"  # training too: its backward is now the faster one
    with torch.no_grad():
        assert resolve_backend("cuda:0") == "triton"
    no_env.setattr(ss, "_triton_reason", lambda device: "Triton is not importable")
    assert resolve_backend("cuda:0") == "cuda"
    no_env.setattr(ss, "cuda_kernels_available", lambda: False)
    assert resolve_backend("cuda:0") == "torch"


def test_cuda_kernels_available_is_cached():
    assert cuda_kernels_available() == cuda_kernels_available()
    assert ss.cuda_kernels_available.cache_info().hits >= 1


# ---------------------------------------------------------------------------------------------
# CUDA (skipped here; run on a GPU host with `pytest -m cuda`)
# ---------------------------------------------------------------------------------------------

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
needs_kernels = pytest.mark.skipif(not (torch.cuda.is_available() and cuda_kernels_available()),
                                   reason="needs a CUDA GPU and mamba-ssm (pip install .[cuda])")


@pytest.mark.cuda
@needs_kernels
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-3), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("seqlen", [1, 33, 1569])
def test_cuda_matches_ref(dtype, tol, seqlen):
    inp = make_inputs(batch=2, dim=64, seqlen=seqlen, dstate=16, seed=seqlen, device="cuda", dtype=dtype)
    grad_out = torch.randn(inp["u"].shape, device="cuda", dtype=torch.float32)

    def cuda(**kw):
        return selective_scan_fn(**kw, backend="cuda")

    y, grads = run_with_grads(cuda, inp, True, grad_out)
    y_ref, grads_ref = run_with_grads(selective_scan_ref, inp, True, grad_out, dtype=torch.float32)
    assert y.dtype == dtype
    errors = {"y": rel_err(y, y_ref)} | {f"d{k}": rel_err(grads[k], grads_ref[k]) for k in grads_ref}
    assert all(e <= tol for e in errors.values()), errors


@pytest.mark.cuda
@needs_gpu
def test_torch_backend_on_cuda_matches_ref():
    inp = make_inputs(batch=2, dim=32, seqlen=130, dstate=16, seed=1, device="cuda")
    grad_out = torch.randn(inp["u"].shape, device="cuda", dtype=torch.float64)
    y, grads = run_with_grads(torch_backend, inp, True, grad_out.float())
    y_ref, grads_ref = run_with_grads(selective_scan_ref, inp, True, grad_out, dtype=torch.float64)
    errors = {"y": rel_err(y, y_ref)} | {f"d{k}": rel_err(grads[k], grads_ref[k]) for k in grads_ref}
    assert all(e <= TOL for e in errors.values()), errors


@pytest.mark.cuda
@needs_gpu
def test_causal_conv1d_cuda_matches_ref():
    if not ss.causal_conv1d_available():
        pytest.skip("needs causal-conv1d (pip install .[cuda])")
    x, w, b = torch.randn(2, 64, 50, device="cuda"), torch.randn(64, 4, device="cuda"), torch.randn(64, device="cuda")
    out = causal_conv1d_fn(x, w, b, activation="silu", backend="cuda")
    torch.testing.assert_close(out, causal_conv1d_ref(x, w, b, "silu"), rtol=1e-3, atol=1e-3)
