"""Video mask generators: exact visible counts, shapes, seeds, the structure of each kind, and gather_visible."""
import pytest
import torch

from retrieval.masking import MASK_GENERATORS, create_mask_generator, gather_visible, num_masked

B, T, H, W = 3, 4, 5, 6
N = T * H * W


def _make(kind, ratio=0.8, seed=0, scores=None):
    fn = create_mask_generator(kind)
    return fn(B, T, H, W, ratio, torch.Generator().manual_seed(seed), scores=scores)


def _scores(seed=0):
    return torch.rand(B, N, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kind", sorted(MASK_GENERATORS))
@pytest.mark.parametrize("ratio", [0.0, 0.5, 0.8])
def test_shape_dtype_and_equal_visible_counts(kind, ratio):
    mask = _make(kind, ratio, scores=_scores())
    assert mask.shape == (B, N) and mask.dtype == torch.bool
    visible = (~mask).sum(dim=1)
    assert (visible == visible[0]).all()
    assert visible[0] >= 1
    # Masked share is the ratio up to the kind's unit (token, spatial patch, or row).
    assert mask.float().mean().item() == pytest.approx(ratio, abs=0.1)


@pytest.mark.parametrize("kind", ["random", "tube", "row"])
def test_deterministic_under_seed(kind):
    assert _make(kind, seed=1).equal(_make(kind, seed=1))
    assert not _make(kind, seed=1).equal(_make(kind, seed=2))
    # Samples in one batch differ from each other.
    m = _make(kind, seed=1)
    assert not m[0].equal(m[1])


def test_exact_counts():
    assert (_make("random").sum(1) == num_masked(N, 0.8)).all()  # round(0.8 * 120) = 96
    assert (_make("tube").sum(1) == T * num_masked(H * W, 0.8)).all()  # 4 * 24
    assert (_make("row").sum(1) == W * num_masked(T * H, 0.8)).all()  # 6 * 16


def test_tube_is_same_in_every_frame():
    m = _make("tube").view(B, T, H * W)
    assert (m == m[:, :1]).all()


def test_row_masks_whole_rows():
    m = _make("row").view(B, T, H, W)
    assert (m == m[..., :1]).all()  # every row all masked or all visible
    # Rows are drawn per frame, not one pattern for the whole clip.
    assert any(not m[b, 0].equal(m[b, t]) for b in range(B) for t in range(1, T))


def test_attention_keeps_top_scores():
    scores = _scores(3)
    m = _make("attention", scores=scores)
    n_vis = N - num_masked(N, 0.8)
    top = scores.topk(n_vis, dim=1).indices
    expected = torch.ones(B, N, dtype=torch.bool).scatter_(1, top, False)
    assert m.equal(expected)
    for b in range(B):
        assert scores[b][~m[b]].min() > scores[b][m[b]].max()
    with pytest.raises(ValueError, match="scores"):
        _make("attention")


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown mask kind"):
        create_mask_generator("checkerboard")
    with pytest.raises(ValueError, match="ratio"):
        _make("random", ratio=1.0)


def test_gather_visible_preserves_order():
    tokens = torch.arange(B * N, dtype=torch.float32).view(B, N, 1).expand(B, N, 2)
    mask = _make("random")
    vis = gather_visible(tokens, mask)
    n_vis = N - num_masked(N, 0.8)
    assert vis.shape == (B, n_vis, 2)
    for b in range(B):
        want = torch.nonzero(~mask[b]).squeeze(1).float() + b * N
        assert vis[b, :, 0].equal(want)  # increasing original positions
    ragged = mask.clone()
    ragged[0, (~mask[0]).nonzero()[0]] = True  # one more masked token in sample 0
    with pytest.raises(ValueError, match="same number"):
        gather_visible(tokens, ragged)


def test_gather_visible_gradient_reaches_visible_tokens_only():
    tokens = torch.randn(B, N, 3, dtype=torch.float64, requires_grad=True)
    mask = _make("tube")
    gather_visible(tokens, mask).sum().backward()
    assert tokens.grad[~mask].eq(1).all() and tokens.grad[mask].eq(0).all()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gather_visible_cpu_mask_gpu_tokens():
    # training's case: the mask drawn on the CPU, tokens on the GPU (positions copied asynchronously)
    tokens = torch.randn(B, N, 4, device="cuda")
    mask = _make("random")
    assert gather_visible(tokens, mask).equal(tokens[~mask.cuda()].view(B, -1, 4))
