"""Triton kernels (retrieval/kernels) against their float64 references: outputs and every gradient.

On CPU they run under Triton's interpreter at small shapes; on a GPU (marked `cuda`) the whole
encoder on the `triton` backend is compared with the `torch` backend at real shapes.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from retrieval.kernels import biconv1d_fn, biconv1d_ref, bimamba_scan, bimamba_scan_fn, bimamba_scan_ref
from retrieval.kernels.support import _triton_import_error

TOL = 2e-5  # fp32 kernel vs float64 reference, max |a - b| / max |b|

needs_interpreter = pytest.mark.skipif(
    torch.cuda.is_available() or _triton_import_error() is not None,
    reason="CPU-only check under Triton's interpreter (needs triton importable; GPU hosts run the cuda tests)")


@pytest.fixture
def interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    scale = b.abs().max().item()
    diff = (a - b).abs().max().item()
    return diff / scale if scale > 0 else diff


def scan_inputs(batch, seqlen, dim, dstate, seed, use_D=True, use_z=True, use_bias=True):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s, scale=1.0: torch.randn(*s, generator=g) * scale  # noqa: E731
    A = -torch.exp(r(2, dim, dstate, scale=0.5))
    return dict(u=r(2, batch, seqlen, dim), delta=r(2, batch, seqlen, dim, scale=0.7), A=A,
                B=r(2, batch, seqlen, dstate), C=r(2, batch, seqlen, dstate),
                D=r(2, dim) if use_D else None, z=r(batch, seqlen, dim) if use_z else None,
                delta_bias=r(2, dim, scale=0.5) if use_bias else None)


def value_and_grads(fn, inputs, dtype, grad_out, **kw):
    leaves = {k: None if v is None else v.to(dtype).requires_grad_(True) for k, v in inputs.items()}
    y = fn(**leaves, **kw)
    names = [k for k, v in leaves.items() if v is not None]
    grads = torch.autograd.grad((y * grad_out.to(dtype)).sum(), [leaves[k] for k in names])
    return y.detach(), dict(zip(names, grads))


def assert_scan_parity(inputs, softplus=True, seed=0):
    _, batch, seqlen, dim = inputs["u"].shape
    grad_out = torch.randn(batch, seqlen, 2, dim, generator=torch.Generator().manual_seed(seed + 1),
                           dtype=torch.float64)
    y64, g64 = value_and_grads(bimamba_scan_ref, inputs, torch.float64, grad_out, delta_softplus=softplus)
    y, g = value_and_grads(bimamba_scan_fn, inputs, torch.float32, grad_out, delta_softplus=softplus)
    assert y.dtype == torch.float32 and y.shape == y64.shape
    assert rel_err(y, y64) < TOL, f"output: {rel_err(y, y64):.2e}"
    for name in g64:
        assert g[name].shape == g64[name].shape, name
        assert rel_err(g[name], g64[name]) < TOL, f"d{name}: {rel_err(g[name], g64[name]):.2e}"


def small_tuning(monkeypatch, **overrides) -> None:
    """Chunk length 16 and short segments, so the small shapes below cross chunk and segment boundaries."""
    tuning = dict(bimamba_scan.TUNING, fwd_block=(16, 1), fwd_programs_per_sm=10**6, fwd_min_len=8,
                  chunk=16, bwd_block=(16, 4), bwd_programs_per_sm=10**6, bwd_min_chunks=2)
    monkeypatch.setattr(bimamba_scan, "TUNING", {**tuning, **overrides})


@pytest.fixture
def small_blocks(monkeypatch):
    small_tuning(monkeypatch)


@needs_interpreter
@pytest.mark.parametrize("seqlen", [1, 17, 129])
def test_bimamba_scan_matches_reference(interpreter, monkeypatch, seqlen):
    # dim 20: one full 16-channel block and a masked tail; L = 129 is 9 chunks in 4-5 segments.
    small_tuning(monkeypatch)
    assert_scan_parity(scan_inputs(2 if seqlen < 100 else 1, seqlen, 20, 4, seed=seqlen))


@needs_interpreter
@pytest.mark.parametrize("seqlen", [16, 32])
def test_bimamba_scan_whole_chunks(interpreter, small_blocks, seqlen):
    assert_scan_parity(scan_inputs(1, seqlen, 16, 4, seed=seqlen))


@needs_interpreter
@pytest.mark.parametrize("min_len,seqlen", [(1, 40), (30, 100), (10**9, 100)],
                         ids=["seg-per-unit", "uneven", "no-split"])
def test_bimamba_scan_sequence_split(interpreter, monkeypatch, min_len, seqlen):
    # Segments chained through their summaries (both directions, forward and backward), an uneven last
    # segment, and no split at all.
    small_tuning(monkeypatch, fwd_min_len=min_len, bwd_min_chunks=max(1, min_len // 16))
    n_seg, seg = bimamba_scan.split_sequence(seqlen, 2, 10**6, min_len)
    assert (n_seg == 1) == (min_len > seqlen) and (n_seg - 1) * seg < seqlen <= n_seg * seg
    assert_scan_parity(scan_inputs(1, seqlen, 8, 4, seed=11))


@needs_interpreter
@pytest.mark.parametrize("prefetch", [1, 2, 3])
def test_bimamba_scan_deeper_prefetch(interpreter, monkeypatch, prefetch):
    # Loads issued 1-3 steps ahead in both forward passes and the backward's summaries: the clamped prefetches
    # past a segment's end (forward segments of 10 steps, one of 7; backward segments of one 16-step chunk, one
    # of 5) and past the sequence's ends in both directions must never be used.
    small_tuning(monkeypatch, fwd_min_len=10, fwd_prefetch=prefetch, fwd_summary_prefetch=prefetch,
                 bwd_min_chunks=1, bwd_summary_prefetch=prefetch)
    assert_scan_parity(scan_inputs(1, 37, 16, 4, seed=prefetch))


@needs_interpreter
@pytest.mark.parametrize("use_D,use_z,use_bias,softplus", [
    (False, True, True, True), (True, False, True, True), (True, True, False, True), (True, True, True, False),
    (False, False, False, False),
])
def test_bimamba_scan_optional_parts(interpreter, small_blocks, use_D, use_z, use_bias, softplus):
    assert_scan_parity(scan_inputs(1, 19, 16, 4, seed=3, use_D=use_D, use_z=use_z, use_bias=use_bias),
                       softplus=softplus)


@needs_interpreter
def test_bimamba_scan_odd_state_size_and_strided_inputs(interpreter, small_blocks):
    # d_state 3 pads to a 4-wide tile; B and C as strided views of one projection, as the mixer passes them.
    inp = scan_inputs(2, 23, 8, 3, seed=5)
    xdbl = torch.randn(2, 2 * 23, 2 + 6, generator=torch.Generator().manual_seed(9))
    inp["B"], inp["C"] = xdbl[..., 2:5].view(2, 2, 23, 3), xdbl[..., 5:].view(2, 2, 23, 3)
    assert_scan_parity(inp)


@needs_interpreter
@pytest.mark.parametrize("dim", [16, 20])
def test_bimamba_scan_lane_reduce_scatter(interpreter, small_blocks, dim):
    # 2 x d_state == channels per program (16 here, 32 on the GPU): dL/dB and dL/dC summed over the
    # program's lanes by the reduce-scatter of lane swaps; dim 20 adds a masked tail block.
    assert bimamba_scan.TUNING["bwd_block"][0] == 2 * 8
    assert_scan_parity(scan_inputs(2, 37, dim, 8, seed=dim))


@needs_interpreter
@pytest.mark.parametrize("fp32_rows", [False, True], ids=["bf16-words", "fp32-copy"])
def test_bimamba_scan_packed_bf16_rows(interpreter, monkeypatch, fp32_rows):
    # B and C in bf16 as 8-byte-aligned strided views of one projection (the model's layout: d_state
    # 16 at offsets 12 and 28 of 44 columns) are read four at a time, or copied to fp32 first and read two
    # at a time (fwd_fp32_rows; the backward still reads the bf16 views); the math stays fp32.
    small_tuning(monkeypatch, fwd_fp32_rows=fp32_rows)
    inp = scan_inputs(2, 21, 16, 16, seed=13)
    xdbl = torch.randn(2, 2 * 21, 44, generator=torch.Generator().manual_seed(4)).bfloat16()
    B, C = xdbl[..., 12:28].view(2, 2, 21, 16), xdbl[..., 28:].view(2, 2, 21, 16)
    assert bimamba_scan.packed_rows(B, C) == 4 and bimamba_scan.packed_rows(B.float(), C.float(), True) == 2
    assert not bimamba_scan.packed_rows(B.float(), C.float())  # fp32 words only where asked for
    assert not bimamba_scan.packed_rows(B.float(), C, True)  # mixed dtypes
    assert not bimamba_scan.packed_rows(B.float()[..., 1:], C.float()[..., 1:], True)  # 15 states: no pairs
    grad_out = torch.randn(2, 21, 2, 16, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    leaves = {k: v.requires_grad_(True) for k, v in dict(inp, B=B, C=C).items()}
    y = bimamba_scan_fn(**leaves)
    grads = torch.autograd.grad((y * grad_out).sum(), list(leaves.values()))
    y64, g64 = value_and_grads(bimamba_scan_ref, dict(inp, B=B.double(), C=C.double()), torch.float64, grad_out)
    assert rel_err(y, y64) < TOL
    for name, grad in zip(leaves, grads):
        tol = 8e-3 if name in ("B", "C") else TOL  # those two gradients come back in bf16
        assert rel_err(grad, g64[name]) < tol, f"d{name}: {rel_err(grad, g64[name]):.2e}"


@needs_interpreter
def test_inference_forward_saves_nothing_and_matches(interpreter, small_blocks):
    inp = scan_inputs(2, 40, 16, 4, seed=7)
    with torch.no_grad():
        y = bimamba_scan_fn(**inp)
    y64 = bimamba_scan_ref(**{k: None if v is None else v.double() for k, v in inp.items()})
    assert rel_err(y, y64) < TOL


def lanes_tuning(monkeypatch, states, **overrides) -> None:
    """The single-pass inference forward at any size (Triton's interpreter counts one SM)."""
    small_tuning(monkeypatch, fwd_lanes_states=states, fwd_lanes_min_programs_per_sm=0, **overrides)


def assert_inference_parity(inputs, softplus=True):
    with torch.no_grad():
        y = bimamba_scan_fn(**inputs, delta_softplus=softplus)
    y64 = bimamba_scan_ref(**{k: None if v is None else v.double() for k, v in inputs.items()},
                           delta_softplus=softplus)
    assert y.shape == y64.shape and rel_err(y, y64) < TOL, f"output: {rel_err(y, y64):.2e}"


@needs_interpreter
@pytest.mark.parametrize("states,dstate,seqlen,prefetch,unroll", [
    (2, 16, 1, 1, 1), (2, 16, 17, 1, 1), (2, 16, 129, 2, 1), (2, 16, 16, 1, 1), (2, 16, 24, 0, 1), (2, 16, 40, 2, 2),
    (2, 16, 64, 3, 3), (1, 16, 37, 1, 1), (4, 16, 37, 0, 1), (4, 16, 23, 2, 1), (16, 16, 5, 1, 1), (1, 4, 33, 0, 1),
    (2, 8, 9, 1, 1), (2, 16, 72, 1, 2), (2, 16, 75, 0, 3), (2, 16, 100, 2, 4), (2, 16, 90, 2, 3), (4, 16, 45, 2, 2),
], ids=str)
def test_lanes_forward_matches_reference(interpreter, monkeypatch, states, dstate, seqlen, prefetch, unroll):
    # Chunks of d_state / states steps, loads 0-3 chunks ahead, 1-4 chunks per loop iteration (and the remainder):
    # lengths shorter than one chunk, exactly one, two whole ones (nothing left for the prefetching loop), and many
    # with a partial last one; dim 20 leaves a masked channel tail.
    lanes_tuning(monkeypatch, states, fwd_lanes_prefetch=prefetch, fwd_lanes_unroll=unroll)
    inp = scan_inputs(2, seqlen, 20, dstate, seed=seqlen + states)
    assert bimamba_scan.lanes_split(dstate, 20, 2, torch.device("cpu")) == states
    assert_inference_parity(inp)


@needs_interpreter
@pytest.mark.parametrize("use_D,use_z,use_bias,softplus", [
    (False, True, True, True), (True, False, True, True), (True, True, False, True), (True, True, True, False),
    (False, False, False, False),
])
def test_lanes_forward_optional_parts(interpreter, monkeypatch, use_D, use_z, use_bias, softplus):
    lanes_tuning(monkeypatch, 2)
    assert_inference_parity(scan_inputs(1, 19, 8, 8, seed=3, use_D=use_D, use_z=use_z, use_bias=use_bias),
                            softplus=softplus)


@needs_interpreter
@pytest.mark.parametrize("states,fp32_rows,pack", [(1, False, 1), (2, False, 2), (4, False, 4), (2, True, 2),
                                                    (4, True, 2)])
def test_lanes_forward_packed_rows(interpreter, monkeypatch, states, fp32_rows, pack):
    # The model's layout (bf16 x_proj views, d_state 16 at offsets 12 and 28 of 44 columns): a lane's states read
    # 2 or 4 per load, or from fp32 copies 2 per load; odd offsets fall back to one load per value.
    lanes_tuning(monkeypatch, states, fwd_lanes_fp32_rows=fp32_rows)
    inp = scan_inputs(2, 21, 16, 16, seed=13)
    xdbl = torch.randn(2, 2 * 21, 44, generator=torch.Generator().manual_seed(4)).bfloat16()
    B, C = xdbl[..., 12:28].view(2, 2, 21, 16), xdbl[..., 28:].view(2, 2, 21, 16)
    rows = (B.float(), C.float()) if fp32_rows else (B, C)
    assert bimamba_scan.lane_pack(*rows, states) == pack
    assert bimamba_scan.lane_pack(xdbl[..., 11:27].view(2, 2, 21, 16), C, states) == 1
    with torch.no_grad():
        y = bimamba_scan_fn(**dict(inp, B=B, C=C))
    assert rel_err(y, bimamba_scan_ref(**{k: v.double() for k, v in dict(inp, B=B, C=C).items()})) < TOL


def test_lanes_split_rule(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(bimamba_scan, "TUNING", dict(bimamba_scan.TUNING, fwd_lanes_states=2,
                                                     fwd_lanes_min_programs_per_sm=8))
    assert bimamba_scan.lanes_split(16, 384, 8, cpu) == 2  # 96 channel blocks x 8 x 2 programs
    assert bimamba_scan.lanes_split(12, 384, 8, cpu) == 0  # 6 lanes a channel: not a power of two
    assert bimamba_scan.lanes_split(16, 4, 1, cpu) == 0  # 2 programs: the segmented kernels fill the card better
    bimamba_scan.TUNING["fwd_lanes_states"] = 0
    assert bimamba_scan.lanes_split(16, 384, 8, cpu) == 0
    # Rules keyed on channel-directions per SM (one CPU "SM" here): 384 channels x 2 directions x batch.
    bimamba_scan.TUNING.update(fwd_lanes_states=((0, 2), (128, 4)), fwd_lanes_prefetch=((0, 3), (128, 2)),
                               fwd_lanes_unroll=((0, 3), (128, 1)))
    assert bimamba_scan.lanes_work(384, 8, cpu) == 6144
    loops = [bimamba_scan.lanes_loop(w) for w in (0.5, 46.5, 127.9, 128, 372)]  # deeper where there is little work
    assert [(d["PREFETCH"], d["UNROLL"]) for d in loops] == [(3, 3), (3, 3), (3, 3), (2, 1), (2, 1)]
    bimamba_scan.TUNING.update(fwd_lanes_prefetch=1, fwd_lanes_unroll=2)
    assert bimamba_scan.lanes_loop(372) == {"PREFETCH": 1, "UNROLL": 2}
    bimamba_scan.TUNING.update(fwd_lanes_states=((0, 2), (4096, 4)))
    assert [bimamba_scan.lanes_split(16, 384, b, cpu) for b in (1, 5, 6)] == [2, 2, 4]  # 768, 3840, 4608 per SM


@needs_interpreter
@pytest.mark.parametrize("seqlen", [1, 3, 70])
def test_biconv_matches_reference(interpreter, seqlen):
    g = torch.Generator().manual_seed(seqlen)
    x = torch.randn(2, seqlen, 40, generator=g)[..., :36]  # a strided (row stride 40) view like in_proj's half
    w, b = torch.randn(2, 36, 4, generator=g), torch.randn(2, 36, generator=g)
    grad_out = torch.randn(2, 2, seqlen, 36, generator=g, dtype=torch.float64)

    def run(fn, dtype):
        leaves = [t.to(dtype).requires_grad_(True) for t in (x, w, b)]
        out = fn(*leaves)
        return out.detach(), torch.autograd.grad((out * grad_out.to(dtype)).sum(), leaves)

    o, grads = run(biconv1d_fn, torch.float32)
    o64, grads64 = run(biconv1d_ref, torch.float64)
    assert rel_err(o, o64) < TOL
    for name, a, r in zip(("x", "weight", "bias"), grads, grads64):
        assert rel_err(a, r) < TOL, name


@needs_interpreter
def test_mixer_triton_backend_matches_torch_backend(interpreter, small_blocks, monkeypatch):
    """The whole block path (in_proj -> both convs -> batched projections -> scan -> out_proj), fwd + bwd."""
    from retrieval.mamba import BiMambaMixer
    torch.manual_seed(0)
    mixer = BiMambaMixer(16, d_state=4)
    with torch.no_grad():
        for p in mixer.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    x = torch.randn(2, 21, 16)
    results = {}
    for backend in ("torch", "triton"):
        monkeypatch.setenv("VMR_SCAN_BACKEND", backend)
        xx = x.clone().requires_grad_(True)
        y = mixer(xx)
        grads = torch.autograd.grad(y.square().sum(), [xx, *mixer.parameters()])
        results[backend] = (y.detach(), grads)
    (y_t, g_t), (y_k, g_k) = results["torch"], results["triton"]
    assert rel_err(y_k, y_t) < 1e-5
    for (name, _), a, b in zip([("x", None), *mixer.named_parameters()], g_k, g_t):
        assert rel_err(a, b) < 1e-5, name


@needs_interpreter
def test_mixer_inference_keeps_stacked_params_until_they_change(interpreter, small_blocks, monkeypatch):
    from retrieval.mamba import BiMambaMixer
    monkeypatch.setenv("VMR_SCAN_BACKEND", "triton")
    torch.manual_seed(0)
    mixer = BiMambaMixer(16, d_state=4)
    x = torch.randn(2, 9, 16)
    with torch.no_grad():
        mixer(x)
        kept = mixer._stacked_params()
        assert mixer._stacked_params() is kept
        mixer.D_b.add_(0.5)  # an in-place update, as an optimiser step or load_state_dict makes
        y = mixer(x)
        assert mixer._stacked_params() is not kept
    monkeypatch.setenv("VMR_SCAN_BACKEND", "torch")
    with torch.no_grad():
        assert rel_err(y, mixer(x)) < 1e-5
    mixer._stacked_params()  # with grad: stacked anew on every call (autograd needs the ops), nothing kept
    assert mixer._stacked is None
    with torch.inference_mode():  # kept from inference_mode, but not as inference tensors, without grad
        kept = mixer._stacked_params()
    assert not any(t.is_inference() or t.requires_grad for t in kept)
    with torch.no_grad():
        assert mixer._stacked_params() is kept


@pytest.mark.skipif(_triton_import_error() is not None, reason="needs triton importable")
@pytest.mark.parametrize("frames,batch", [(8, 64), (64, 8)])
def test_every_kernel_compiles_for_sm90(frames, batch):
    """Triton's interpreter runs code its compiler rejects (a constexpr assigned twice in a static loop once reached
    a GPU that way): compile every kernel the launchers start, with their real arguments, for sm_90 on the CPU
    (benchmarks/triton_sass.py; ptxas ships with triton), at both sides of the lanes kernel's settings rule (4
    states a lane, 2 chunks per iteration at 8 frames; 2 and 3 at 64). A subprocess: this session's kernels are
    the interpreter's."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "benchmarks/triton_sass.py", "--frames", str(frames), "--batch", str(batch)],
                         env=env, cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    for kernel in ("bimamba_fwd_kernel", "bimamba_fwd_lanes_kernel", "bimamba_bwd_kernel", "biconv_fwd_kernel",
                   "biconv_bwd_pre_kernel", "biconv_bwd_kernel"):
        assert f"\n{kernel}" in out.stdout, f"{kernel} was not compiled:\n{out.stdout}"


def test_triton_without_gpu_says_what_to_do(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    inp = scan_inputs(1, 4, 8, 4, seed=0)
    with pytest.raises(RuntimeError, match="need CUDA tensors.*backend='torch'"):
        bimamba_scan_fn(**inp)
    from retrieval.selective_scan import resolve_backend
    with pytest.raises(RuntimeError, match="backend 'triton'.*VMR_SCAN_BACKEND=torch"):
        resolve_backend(torch.device("cpu"), "triton")


def test_triton_missing_says_what_to_install(monkeypatch):
    from retrieval.kernels import support
    monkeypatch.setattr(support, "_triton_import_error", lambda: "ModuleNotFoundError: No module named 'triton'")
    assert "pip install triton" in support.triton_unavailable_reason(torch.device("cuda"))


def test_scan_shape_errors_name_the_input():
    inp = scan_inputs(1, 4, 8, 4, seed=0)
    inp["B"] = inp["B"][:, :, :3]
    with pytest.raises(ValueError, match="B has shape"):
        bimamba_scan_fn(**inp)


# ---------------------------------------------------------------------------------------------
# GPU: the whole encoder, triton vs torch backend, at real shapes
# ---------------------------------------------------------------------------------------------


def _encoder_grads(backend, dtype, monkeypatch, frames=8):
    from retrieval import create_video_encoder
    monkeypatch.setenv("VMR_SCAN_BACKEND", backend)
    torch.manual_seed(0)
    enc = create_video_encoder("videomamba_tiny", num_frames=frames).cuda().train()
    x = torch.randn(2, 3, frames, 224, 224, device="cuda", generator=torch.Generator("cuda").manual_seed(1))
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        out = enc.forward_features(x)
    # A fixed random projection, not a square: gradients of similar size everywhere, no cancellation.
    w = torch.randn(out.shape, device="cuda", generator=torch.Generator("cuda").manual_seed(2))
    (out.float() * w).sum().backward()
    grads = {n: p.grad.float().clone() for n, p in enc.named_parameters() if p.grad is not None}
    return out.float().detach(), grads


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-3), (torch.bfloat16, 2e-2)])
def test_encoder_triton_matches_torch_on_gpu(monkeypatch, dtype, tol):
    out_t, g_t = _encoder_grads("torch", dtype, monkeypatch)
    out_k, g_k = _encoder_grads("triton", dtype, monkeypatch)
    assert rel_err(out_k, out_t) < tol
    worst = max(g_t, key=lambda n: rel_err(g_k[n], g_t[n]))
    assert rel_err(g_k[worst], g_t[worst]) < tol, f"{worst}: {rel_err(g_k[worst], g_t[worst]):.2e}"


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("states,prefetch,unroll", [(2, 2, 3), (4, 2, 2)])  # the shipped settings
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.bfloat16, 1e-2)])
def test_lanes_forward_matches_reference_on_gpu(monkeypatch, states, prefetch, unroll, dtype, tol):
    # The single-pass inference forward at a masked training clip's length (the float64 reference steps through it
    # in Python), all 384 channels of VideoMamba-Ti, B and C as the model's strided views; one or several chunks
    # per loop iteration.
    monkeypatch.setattr(bimamba_scan, "TUNING", dict(bimamba_scan.TUNING, fwd_lanes_states=states,
                                                     fwd_lanes_min_programs_per_sm=0, fwd_lanes_prefetch=prefetch,
                                                     fwd_lanes_unroll=unroll))
    L = 315
    inp = scan_inputs(2, L, 384, 16, seed=states)
    xdbl = torch.randn(2, 2 * L, 44, generator=torch.Generator().manual_seed(4))
    inp["B"], inp["C"] = xdbl[..., 12:28].view(2, 2, L, 16), xdbl[..., 28:].view(2, 2, L, 16)
    with torch.no_grad():
        y = bimamba_scan_fn(**{k: v.to("cuda", dtype) if k in ("u", "delta", "B", "C", "z") else v.cuda()
                               for k, v in inp.items()})
    cast = {k: v.to(dtype).double().cuda() if k in ("u", "delta", "B", "C", "z") else v.double().cuda()
            for k, v in inp.items()}
    assert rel_err(y, bimamba_scan_ref(**cast)) < tol


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-3), (torch.bfloat16, 2e-2)])
def test_encoder_inference_on_lanes_matches_torch_on_gpu(monkeypatch, dtype, tol):
    from retrieval import create_video_encoder
    monkeypatch.setattr(bimamba_scan, "TUNING", dict(bimamba_scan.TUNING, fwd_lanes_min_programs_per_sm=0))
    x = torch.randn(2, 3, 8, 224, 224, device="cuda", generator=torch.Generator("cuda").manual_seed(1))
    outs = {}
    for backend in ("torch", "triton"):
        monkeypatch.setenv("VMR_SCAN_BACKEND", backend)
        torch.manual_seed(0)
        enc = create_video_encoder("videomamba_tiny", num_frames=8).cuda().eval()
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            outs[backend] = enc.forward_features(x).float()
    assert rel_err(outs["triton"], outs["torch"]) < tol
