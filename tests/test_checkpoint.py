"""Loading published-layout VideoMamba checkpoints: containers, renames, inflation, resizing, strictness."""
import pytest
import torch

from retrieval import CheckpointError, create_video_encoder, load_video_encoder

SMALL = dict(img_size=32, patch_size=16, num_frames=4, depth=2)


def _official_classification_sd(seed=0):
    """A state dict with the release's names (classification layout: norm_f + head), random values."""
    torch.manual_seed(seed)
    m = create_video_encoder("videomamba_tiny", **SMALL, num_classes=10, pool_norm=False)
    return {k: torch.randn_like(v) for k, v in m.state_dict().items()}


def _video(t=4, s=32):
    return torch.randn(1, 3, t, s, s, generator=torch.Generator().manual_seed(1))


def test_strict_load_and_round_trip(tmp_path):
    sd = _official_classification_sd()
    model = load_video_encoder(sd, strict=True)
    assert model.cfg.num_classes == 10 and model.cfg.depth == 2 and model.cfg.num_frames == 4
    for k, v in model.state_dict().items():
        assert torch.equal(v, sd[k]), k
    torch.save(model.state_dict(), tmp_path / "ck.pth")
    again = load_video_encoder(tmp_path / "ck.pth", strict=True)
    x = _video()
    with torch.no_grad():
        assert torch.equal(model(x), again(x))


def test_backbone_layout_multimodal_prefix_and_ignored_keys():
    sd = _official_classification_sd()
    sd.pop("head.weight"), sd.pop("head.bias")
    sd["norm.weight"] = sd.pop("norm_f.weight")
    sd["pool_norm.weight"] = torch.randn(192)
    sd["pool_norm.bias"] = torch.randn(192)
    sd["clip_decoder.0.head.weight"] = torch.randn(3, 3)
    container = {f"vision_encoder.{k}": v for k, v in sd.items()}
    container["text_encoder.embeddings.word_embeddings.weight"] = torch.randn(5, 4)
    container["temp"] = torch.tensor(0.07)
    model = load_video_encoder(container, strict=True)
    rep = model.load_report
    assert ("norm.weight", "norm_f.weight") in rep.renamed
    assert "clip_decoder.0.head.weight" in rep.ignored
    assert torch.equal(model.norm_f.weight, sd["norm.weight"])
    assert torch.equal(model.pool_norm.bias, sd["pool_norm.bias"])
    assert "vision_encoder." in rep.container


def test_imagenet_checkpoint_inflated_under_model_key():
    sd = _official_classification_sd()
    sd.pop("temporal_pos_embedding")
    sd["patch_embed.proj.weight"] = sd["patch_embed.proj.weight"][:, :, 0]  # Conv2d (D, 3, p, p)
    model = load_video_encoder({"model": sd}, num_frames=4, num_classes=0)
    assert model.patch_embed.proj.weight.shape == (192, 3, 1, 16, 16)
    assert torch.equal(model.patch_embed.proj.weight[:, :, 0], sd["patch_embed.proj.weight"])
    assert torch.count_nonzero(model.temporal_pos_embedding) == 0
    assert "patch_embed.proj.weight" in model.load_report.inflated
    assert "head.weight" in model.load_report.ignored


def test_inflation_to_tubelet_uses_centre_slice():
    sd = _official_classification_sd()
    sd.pop("temporal_pos_embedding")
    w2d = sd["patch_embed.proj.weight"][:, :, 0]
    sd["patch_embed.proj.weight"] = w2d
    model = load_video_encoder({"model": sd}, tubelet_size=2, num_frames=4, num_classes=0)
    w = model.patch_embed.proj.weight
    assert w.shape == (192, 3, 2, 16, 16)
    assert torch.equal(w[:, :, 1], w2d) and torch.count_nonzero(w[:, :, 0]) == 0


def test_resize_position_embeddings():
    sd = _official_classification_sd()
    model = load_video_encoder(sd, img_size=64, num_frames=8)
    assert model.pos_embed.shape == (1, 1 + 16, 192)
    assert model.temporal_pos_embedding.shape == (1, 8, 192)
    assert torch.equal(model.pos_embed[:, 0], sd["pos_embed"][:, 0])  # cls entry kept
    resized = {k for k, _, _ in model.load_report.resized}
    assert resized == {"pos_embed", "temporal_pos_embedding"}
    # a constant temporal embedding stays constant under linear resizing
    const = dict(sd, temporal_pos_embedding=torch.ones(1, 4, 192))
    m2 = load_video_encoder(const, num_frames=8)
    torch.testing.assert_close(m2.temporal_pos_embedding, torch.ones(1, 8, 192))
    # a constant spatial grid stays constant under bicubic resizing
    pe = torch.cat([torch.zeros(1, 1, 192), torch.full((1, 4, 192), 0.5)], 1)
    m3 = load_video_encoder(dict(sd, pos_embed=pe), img_size=64)
    torch.testing.assert_close(m3.pos_embed[:, 1:], torch.full((1, 16, 192), 0.5))
    out = model(torch.randn(1, 3, 8, 64, 64))
    assert out.shape == (1, 10)


def test_strict_reports_missing_and_unexpected():
    sd = _official_classification_sd()
    sd.pop("layers.1.mixer.D_b")
    sd["layers.0.mixer.extra"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match="layers.1.mixer.D_b") as e:
        load_video_encoder(sd, strict=True)
    assert "layers.0.mixer.extra" in str(e.value)
    model = load_video_encoder(sd)
    assert model.load_report.missing == ["layers.1.mixer.D_b"]
    assert "missing:    layers.1.mixer.D_b" in str(model.load_report)


def test_wrong_size_and_non_checkpoint(tmp_path):
    sd = _official_classification_sd()
    with pytest.raises(CheckpointError, match="192-dim, 2-layer VideoMamba but 'videomamba_small' expects 384-dim"):
        load_video_encoder(sd, name="videomamba_small")
    junk = tmp_path / "notes.pth"
    junk.write_text("hello")
    with pytest.raises(CheckpointError, match="not a PyTorch or safetensors checkpoint"):
        load_video_encoder(junk)
    with pytest.raises(CheckpointError, match="not a VideoMamba checkpoint"):
        load_video_encoder({"weight": torch.zeros(2)})
    with pytest.raises(FileNotFoundError):
        load_video_encoder(tmp_path / "missing.pth")
    bad = dict(sd, **{"layers.0.mixer.in_proj.weight": torch.zeros(10, 192)})
    with pytest.raises(CheckpointError, match="in_proj.weight: checkpoint shape"):
        load_video_encoder(bad)
