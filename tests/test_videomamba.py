"""VideoMamba encoder: registry sizes, forward/backward, masking, grad checkpointing, autocast, bad input."""
import pytest
import torch

from retrieval import create_video_encoder, list_video_encoders
from retrieval.videomamba import video_encoder_config

TINY = dict(img_size=32, patch_size=16, num_frames=2, depth=2)


def _video(b=2, t=2, s=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 3, t, s, s, generator=g)


@pytest.mark.parametrize("name", list_video_encoders())
def test_every_size_builds_and_runs(name):
    model = create_video_encoder(name, **TINY)
    out = model(_video())
    assert out.shape == (2, model.embed_dim)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name,dim,depth,params_m", [
    ("videomamba_tiny", 192, 24, 7), ("videomamba_small", 384, 24, 26), ("videomamba_middle", 576, 32, 74)])
def test_published_sizes(name, dim, depth, params_m):
    cfg = video_encoder_config(name)
    assert (cfg.embed_dim, cfg.depth, cfg.d_state, cfg.expand) == (dim, depth, 16, 2)
    with torch.device("meta"):
        model = create_video_encoder(name)
    n = sum(p.numel() for p in model.parameters()) / 1e6
    assert abs(n - params_m) / params_m < 0.1, n


def test_tiny_state_dict_names_and_shapes():
    with torch.device("meta"):
        sd = create_video_encoder("videomamba_tiny", pool_norm=False, num_classes=400).state_dict()
    expect = {
        "cls_token": (1, 1, 192), "pos_embed": (1, 197, 192), "temporal_pos_embedding": (1, 8, 192),
        "patch_embed.proj.weight": (192, 3, 1, 16, 16), "patch_embed.proj.bias": (192,),
        "head.weight": (400, 192), "head.bias": (400,), "norm_f.weight": (192,),
        "layers.0.mixer.A_log": (384, 16), "layers.0.mixer.D": (384,), "layers.0.mixer.A_b_log": (384, 16),
        "layers.0.mixer.D_b": (384,), "layers.0.mixer.in_proj.weight": (768, 192),
        "layers.0.mixer.conv1d.weight": (384, 1, 4), "layers.0.mixer.conv1d.bias": (384,),
        "layers.0.mixer.x_proj.weight": (44, 384), "layers.0.mixer.dt_proj.weight": (384, 12),
        "layers.0.mixer.dt_proj.bias": (384,), "layers.0.mixer.conv1d_b.weight": (384, 1, 4),
        "layers.0.mixer.conv1d_b.bias": (384,), "layers.0.mixer.x_proj_b.weight": (44, 384),
        "layers.0.mixer.dt_proj_b.weight": (384, 12), "layers.0.mixer.dt_proj_b.bias": (384,),
        "layers.0.mixer.out_proj.weight": (192, 384), "layers.0.norm.weight": (192,),
    }
    for k, shape in expect.items():
        assert tuple(sd[k].shape) == shape, k
    per_layer = {k.split(".", 2)[2] for k in sd if k.startswith("layers.0.")}
    assert len(per_layer) == 17  # 15 mixer tensors + conv biases counted above + norm
    assert not any(k.endswith("in_proj.bias") or k.endswith("out_proj.bias") for k in sd)


def test_release_init():
    m = create_video_encoder("videomamba_tiny", **TINY).layers[0].mixer
    assert torch.allclose(m.A_log.exp(), torch.arange(1, 17).float().expand(384, 16))
    assert torch.equal(m.D, torch.ones(384))
    dt = torch.nn.functional.softplus(m.dt_proj.bias)
    assert dt.min() >= 1e-4 - 1e-7 and dt.max() <= 0.1 + 1e-6


def test_forward_backward_and_outputs():
    model = create_video_encoder("videomamba_tiny", **TINY)
    x = _video().requires_grad_()
    tokens = model.forward_features(x)
    assert tokens.shape == (2, 1 + 2 * 4, 192)
    frames = model.pool_frames(tokens)
    assert frames.shape == (2, 2, 192)
    (model(x).sum() + frames.sum()).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert all(p.grad is not None for n, p in model.named_parameters() if p.requires_grad and "head" not in n)


def test_spatial_first_order_and_cls_position():
    """Changing only frame 1 changes no token of frame 0 in the patch embedding (spatial-first layout)."""
    model = create_video_encoder("videomamba_tiny", **TINY)
    x = _video(b=1)
    y = x.clone()
    y[:, :, 1] += 1.0
    ex, ey = model.embed(x), model.embed(y)
    assert torch.equal(ex[:, :5], ey[:, :5])  # cls + frame-0 patches
    assert not torch.equal(ex[:, 5:], ey[:, 5:])
    assert torch.allclose(ex[0, 0], (model.cls_token + model.pos_embed[:, :1])[0, 0])


def test_masked_forward_keeps_only_visible_tokens():
    model = create_video_encoder("videomamba_tiny", **TINY)
    mask = torch.zeros(2, 8, dtype=torch.bool)
    mask[:, [1, 2, 5, 6]] = True
    out = model.forward_features(_video(), mask)
    assert out.shape == (2, 1 + 4, 192)
    with pytest.raises(ValueError, match="same number"):
        bad = mask.clone()
        bad[0, 0] = True
        model.forward_features(_video(), bad)


def test_grad_checkpointing_identical():
    torch.manual_seed(0)
    model = create_video_encoder("videomamba_tiny", **TINY, drop_path_rate=0.0).train()
    x = _video()
    model.zero_grad()
    model(x).pow(2).sum().backward()
    ref = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    out_ref = model(x).detach()
    model.set_grad_checkpointing(True)
    model.zero_grad()
    out = model(x)
    out.pow(2).sum().backward()
    assert torch.equal(out.detach(), out_ref)
    for n, p in model.named_parameters():
        if n in ref:
            torch.testing.assert_close(p.grad, ref[n], rtol=1e-6, atol=1e-7)


def test_bf16_autocast_close_to_fp32():
    model = create_video_encoder("videomamba_tiny", **TINY).eval()
    x = _video()
    with torch.no_grad():
        ref = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
    assert torch.isfinite(out).all()
    assert (out.float() - ref).abs().max() / ref.abs().max() < 0.05


def test_drop_path_only_in_training():
    model = create_video_encoder("videomamba_tiny", **TINY, drop_path_rate=0.5).eval()
    x = _video()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


@pytest.mark.parametrize("shape,msg", [
    ((2, 3, 32, 32), "B, C, T, H, W"),
    ((2, 1, 2, 32, 32), "1 channels, expected 3"),
    ((2, 3, 2, 48, 48), "48x48, this encoder expects 32x32"),
    ((2, 3, 4, 32, 32), "4 frames, this encoder expects 2"),
])
def test_bad_input_names_the_problem(shape, msg):
    model = create_video_encoder("videomamba_tiny", **TINY)
    with pytest.raises(ValueError, match=msg):
        model(torch.zeros(shape))


def test_bad_config():
    with pytest.raises(ValueError, match="not divisible by patch_size"):
        create_video_encoder("videomamba_tiny", img_size=40)
    with pytest.raises(ValueError, match="not divisible by tubelet_size"):
        create_video_encoder("videomamba_tiny", num_frames=3, tubelet_size=2)
    with pytest.raises(KeyError, match="unknown video encoder"):
        create_video_encoder("videomamba_huge")
    with pytest.raises(TypeError, match="unknown VideoMambaConfig"):
        create_video_encoder("videomamba_tiny", embed_dims=3)


@pytest.mark.parametrize("length", [1, 2, 5, 37])
def test_time_major_mixer_matches_channel_major(length):
    """The CPU/PyTorch mixer layout (no copies) computes exactly what the CUDA-kernel layout computes."""
    from retrieval.mamba import BiMambaMixer

    torch.manual_seed(length)
    mixer = BiMambaMixer(32).double()
    h = torch.randn(2, length, 32, dtype=torch.float64, requires_grad=True)
    params = [h, *mixer.parameters()]
    a = mixer(h)
    ga = torch.autograd.grad(a.pow(2).sum(), params)
    b = mixer._forward_channel_major(h)
    gb = torch.autograd.grad(b.pow(2).sum(), params)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    for x, y in zip(ga, gb):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kernel,shape", [((1, 16, 16), (2, 3, 3, 32, 48)), ((2, 8, 8), (1, 3, 5, 20, 17))])
def test_patch_linear_is_the_conv(kernel, shape):
    """The GPU's patch embedding (one GEMM over unfolded patches) against the Conv3d it stands for, in float64:
    tubelets of 1 and 2 frames, and sizes the kernel does not divide (the conv drops the remainder)."""
    from retrieval.videomamba import patch_linear
    torch.manual_seed(0)
    conv = torch.nn.Conv3d(3, 12, kernel, stride=kernel).double()
    x = torch.randn(*shape, dtype=torch.float64)
    y = patch_linear(x, conv)
    assert y.shape == conv(x).shape
    torch.testing.assert_close(y, conv(x), rtol=1e-12, atol=1e-12)
