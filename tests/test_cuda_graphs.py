"""retrieval.cuda_graphs: a graph replay gives the eager forward's result; CPU and grad calls run eagerly."""
from __future__ import annotations

import pytest
import torch

from retrieval.cuda_graphs import CudaGraphed


def test_cpu_and_grad_calls_run_the_function_itself():
    calls = []

    def fn(x):
        calls.append(x.shape)
        return x * 2

    graphed = CudaGraphed(fn)
    x = torch.arange(4.0)
    assert torch.equal(graphed(x), x * 2) and calls == [(4,)]
    assert not graphed._graphs  # nothing captured off the GPU


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("autocast", [False, True])
def test_replay_matches_eager_encoder_for_new_inputs_and_shapes(monkeypatch, autocast):
    from retrieval import create_video_encoder

    monkeypatch.setenv("VMR_SCAN_BACKEND", "triton")
    torch.manual_seed(0)
    model = create_video_encoder("videomamba_tiny", num_frames=8).cuda().eval()
    graphed = CudaGraphed(model, max_shapes=2)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        for batch in (2, 2, 3, 2):  # capture, replay with new values, a second shape, replay the first again
            x = torch.randn(batch, 3, 8, 224, 224, device="cuda")
            want = model(x)
            got = graphed(x)
            assert got.shape == want.shape
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert len(graphed._graphs) == 2
