"""Frozen teachers (open_clip per frame, earlier model folder) and masked-video pretraining through run.py."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from pretrain.teachers import ModelTeacher, OpenClipTeacher, resample_grid

open_clip = pytest.importorskip("open_clip")
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
SMOKE = str(Path(__file__).resolve().parents[1] / "configs" / "pretrain" / "smoke_cpu.yaml")
TINY = {"video": {"name": "videomamba_tiny", "encoder": {"depth": 2, "embed_dim": 64, "img_size": 32, "num_frames": 4}},
        "text": {"layers": 2, "width": 64, "heads": 2, "context_length": 24}, "embed_dim": 64}


@pytest.fixture(scope="module")
def clip_ckpt(tmp_path_factory) -> Path:
    """A randomly initialised open_clip ViT-S-16-alt at 32 px saved as a local checkpoint (nothing downloaded)."""
    torch.manual_seed(0)
    model = open_clip.create_model("ViT-S-16-alt", force_image_size=32)
    path = tmp_path_factory.mktemp("clip") / "vit_s16_alt_32px.pt"
    torch.save(model.state_dict(), path)
    return path


def test_resample_grid_identity_and_shape():
    x = torch.randn(2, 4, 3, 3, 8)
    assert resample_grid(x, (4, 3, 3)) is x
    assert resample_grid(x, (2, 2, 2)).shape == (2, 2, 2, 2, 8)


def test_open_clip_teacher_tokens_per_frame(clip_ckpt):
    teacher = OpenClipTeacher("ViT-S-16-alt", str(clip_ckpt), grid=(4, 2, 2), in_mean=MEAN, in_std=STD, image_size=32)
    assert teacher.dim == 256 and teacher.teacher_grid == (2, 2)
    assert not any(p.requires_grad for p in teacher.parameters())
    video = torch.randn(2, 3, 4, 32, 32)
    tokens, scores = teacher(video)
    assert tokens.shape == (2, 16, 256) and scores.shape == (2, 16)
    torch.testing.assert_close(tokens.norm(dim=-1), torch.ones(2, 16))
    assert scores.abs().max() <= 1 + 1e-5
    # frame 2 of sample 1, recomputed alone through the open_clip tower, gives tokens 8..11
    vis = teacher.visual
    x = video[1, :, 2]  # (3, H, W) in ImageNet units -> CLIP units
    m, s = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)
    cm, cs = torch.tensor(teacher.mean).view(3, 1, 1), torch.tensor(teacher.std).view(3, 1, 1)
    pooled, toks = vis(((x * s + m - cm) / cs)[None])
    want = F.normalize(vis.ln_post(toks) @ vis.proj if vis.final_ln_after_pool else toks @ vis.proj, dim=-1)
    torch.testing.assert_close(tokens[1, 8:12], want[0], rtol=1e-4, atol=1e-5)
    # another teacher resolution (pos embeddings resized by open_clip; frames resized to 48 px, a 3x3 grid)
    # and a student on another grid: targets are interpolated onto the student's grid
    t2 = OpenClipTeacher("ViT-S-16-alt", str(clip_ckpt), grid=(2, 4, 4), in_mean=MEAN, in_std=STD, image_size=48)
    assert t2.teacher_grid == (3, 3)
    tokens2, scores2 = t2(video)
    assert tokens2.shape == (2, 32, 256) and scores2.shape == (2, 32)


def test_model_teacher_self_distillation(tmp_path):
    from pretrain.config import ObjectiveConfig
    from pretrain.train import PretrainModule
    from retrieval.masking import create_mask_generator
    from retrieval.model import create_model, save_model

    torch.manual_seed(0)
    save_model(create_model(TINY), tmp_path / "earlier")
    teacher = ModelTeacher(str(tmp_path / "earlier"), grid=(4, 2, 2), in_mean=MEAN, in_std=STD)
    assert teacher.dim == 64
    video = torch.randn(3, 3, 4, 32, 32)
    tokens, scores = teacher(video)
    ref = teacher.visual.forward_features(video)
    torch.testing.assert_close(tokens, F.normalize(ref[:, 1:], dim=-1))
    torch.testing.assert_close(scores, torch.einsum("bnd,bd->bn", F.normalize(ref[:, 1:], dim=-1),
                                                    F.normalize(ref[:, 0], dim=-1)))
    # a student with twice the frames: the teacher sees evenly spaced frames, targets are interpolated in time
    t8 = ModelTeacher(str(tmp_path / "earlier"), grid=(8, 2, 2), in_mean=MEAN, in_std=STD)
    assert t8(torch.randn(1, 3, 8, 32, 32))[0].shape == (1, 32, 64)
    # one masked-video step: visible tokens only, decoded and aligned to the teacher at the same places
    student = create_model({**TINY, "teacher_dim": teacher.dim})
    wrapper = PretrainModule(student, ObjectiveConfig(vtc=1.0, mvm=1.0, mask_kind="attention"), use_mlm=False)
    mask = create_mask_generator("attention")(3, 4, 2, 2, 0.75, None, scores=scores)
    assert int((~mask).sum(1)[0]) == 4
    losses = wrapper(video, student.tokenize(["a", "b", "c"]), video_ids=torch.arange(3), mask=mask,
                     teacher_tokens=tokens)
    assert set(losses) == {"vtc", "mvm", "loss"} and 0 < float(losses["mvm"].detach()) <= 4
    losses["loss"].backward()
    assert student.token_decoder[0].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())


def test_masked_video_pretraining_run(single_process_env, tmp_path, clip_ckpt):
    """objectives.mvm with an open_clip teacher through main(): loss terms logged, teacher_dim set, model exported."""
    from pretrain.run import main
    from retrieval.model import load_model

    run = tmp_path / "mvm"
    summary = main(["--config", SMOKE, "--out", str(run), "objectives.mvm=1.0", "objectives.mask_kind=attention",
                    "objectives.mask_ratio=0.5", "teacher.kind=open_clip", "teacher.open_clip_model=ViT-S-16-alt",
                    f"teacher.checkpoint={clip_ckpt}", "teacher.image_size=32", "run.max_steps=2", "val.every=0",
                    "run.progress=false", "synth.train_videos=16", "synth.val_videos=0", "engine.kind=torch"])
    assert summary["step"] == 2
    steps = [json.loads(line) for line in (run / "steps.jsonl").read_text().splitlines()]
    assert all({"vtc", "mvm", "loss"} <= set(s) for s in steps)
    assert all(abs(s["loss"] - s["vtc"] - s["mvm"]) < 1e-4 for s in steps)
    assert load_model(run / "model").config.teacher_dim == 256
