"""Pretraining configs and engine pieces: strict YAML/JSON loading, overrides, param groups, lr schedule."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pretrain.config import TrainConfig, load_train_config
from pretrain.engine import lr_at, param_groups, resolve_optimization
from retrieval.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]
PRETRAIN_YAMLS = sorted((ROOT / "configs" / "pretrain").glob("*.yaml"))
DEEPSPEED_JSONS = sorted((ROOT / "configs" / "deepspeed").glob("*.json"))
SMOKE = ROOT / "configs" / "pretrain" / "smoke_cpu.yaml"


def test_config_files_exist():
    names = {p.name for p in PRETRAIN_YAMLS}
    assert {"smoke_cpu.yaml", "tiny_1gpu.yaml", "small_1gpu.yaml", "middle_release.yaml"} <= names
    assert len(DEEPSPEED_JSONS) >= 3


@pytest.mark.parametrize("path", PRETRAIN_YAMLS, ids=lambda p: p.name)
def test_every_pretrain_yaml_loads_strictly(path):
    cfg = load_train_config(path)
    assert isinstance(cfg, TrainConfig)
    assert (ROOT / cfg.engine.deepspeed_config).is_file()
    ds, opt = resolve_optimization(cfg, world_size=2)
    assert ds["train_batch_size"] == cfg.data.batch_size * cfg.engine.grad_accum * 2
    assert opt["precision"] in ("fp32", "bf16", "fp16")


@pytest.mark.parametrize("path", DEEPSPEED_JSONS, ids=lambda p: p.name)
def test_every_deepspeed_json_resolves(path):
    cfg = load_train_config(SMOKE, [f"engine.deepspeed_config={path}"])
    ds, opt = resolve_optimization(cfg, world_size=1)
    raw = json.loads(path.read_text())
    assert opt["zero_stage"] == raw["zero_optimization"]["stage"]
    # DeepSpeed's bf16 weights, unless its torch_autocast section keeps them fp32
    assert "optimizer" not in ds and ds["bf16"]["enabled"] == (opt["precision"] == "bf16" and not opt["autocast"])
    assert ("torch_autocast" in ds) == opt["autocast"] == bool(raw.get("torch_autocast", {}).get("enabled"))


def test_release_recipe_values():
    cfg = load_train_config(ROOT / "configs" / "pretrain" / "middle_release.yaml")
    assert cfg.model.video.name == "videomamba_middle" and cfg.model.video.num_frames == 8
    assert cfg.model.video.img_size == 224 and cfg.objectives.mask_ratio == 0.8
    _, opt = resolve_optimization(cfg, world_size=32)
    assert (opt["lr"], opt["weight_decay"], opt["precision"]) == (4e-4, 0.05, "bf16")
    assert cfg.run.epochs == 10


def test_strictness_and_overrides():
    with pytest.raises(ConfigError, match="unknown key"):
        load_train_config(SMOKE, ["optim.learning_rate=1e-4"])
    with pytest.raises(ConfigError):
        load_train_config(SMOKE, ["data.batch_size=eight"])
    with pytest.raises(ConfigError, match="teacher"):
        load_train_config(SMOKE, ["objectives.mvm=1.0"])
    with pytest.raises(ConfigError, match="mask_kind"):
        load_train_config(SMOKE, ["objectives.mask_kind=checkerboard"])
    cfg = load_train_config(SMOKE, ["optim.lr=2.0e-4", "data.batch_size=3", "engine.grad_accum=4",
                                    "engine.zero_stage=2", "engine.precision=bf16", "optim.grad_clip=0.5"])
    ds, opt = resolve_optimization(cfg, world_size=2)
    assert opt["lr"] == 2e-4 and opt["grad_clip"] == 0.5 and ds["gradient_clipping"] == 0.5
    batch = (ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"], ds["train_batch_size"])
    assert batch == (3, 4, 24)
    assert ds["zero_optimization"]["stage"] == 2 and ds["bf16"]["enabled"] and not ds["fp16"]["enabled"]
    base = load_train_config(SMOKE)
    _, opt = resolve_optimization(base, world_size=1)
    assert opt["lr"] == 1e-3  # the YAML's optim.lr wins over the JSON's 1e-4
    assert opt["weight_decay"] == 0.05  # unset in the YAML: the JSON's
    with pytest.raises(ValueError, match="fp16"):
        resolve_optimization(load_train_config(SMOKE, ["engine.precision=fp16", "engine.zero_stage=0"]), 1)


def test_lr_schedule():
    lrs = [lr_at(s, 1.0, 0.1, warmup=4, total=20) for s in range(20)]
    assert lrs[:4] == [0.25, 0.5, 0.75, 1.0]
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:]))  # cosine decays monotonically
    assert lrs[-1] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + torch.cos(torch.tensor(15 / 16 * torch.pi)).item()))
    assert lr_at(20, 1.0, 0.1, 4, 20) == pytest.approx(0.1)
    assert lr_at(0, 1.0, 0.0, 0, 10) == 1.0


def test_param_groups_weight_decay_and_layer_decay():
    from pretrain.train import PretrainModule
    from retrieval.model import create_model

    cfg = load_train_config(SMOKE)
    wrapper = PretrainModule(create_model(cfg.model), cfg.objectives, use_mlm=False)
    groups = param_groups(wrapper, wrapper.no_weight_decay(), 0.05, layer_decay=0.5, text_lr_scale=0.1, depth=2)
    names = {id(p): n for n, p in wrapper.named_parameters()}
    by_name = {names[id(p)]: g for g in groups for p in g["params"]}
    assert len(by_name) == sum(p.requires_grad for p in wrapper.parameters())
    no_decay = [n for n, g in by_name.items() if g["weight_decay"] == 0]
    decay = [n for n, g in by_name.items() if g["weight_decay"] > 0]
    for n in no_decay:
        p = dict(wrapper.named_parameters())[n]
        assert p.ndim <= 1 or any(k in n for k in ("pos_embed", "positional_embedding", "A_log", "A_b_log",
                                                      "cls_token", "temporal_pos")), n
    assert "model.temp" in no_decay and "model.visual.pos_embed" in no_decay
    assert any(n.endswith("A_log") for n in no_decay) and any(n.endswith(".D") for n in no_decay)
    assert all(dict(wrapper.named_parameters())[n].ndim >= 2 for n in decay)
    assert "model.vision_proj.weight" in decay
    scale = {n: g["lr_scale"] for n, g in by_name.items()}
    assert scale["model.visual.patch_embed.proj.weight"] == 0.5 ** 3  # embeddings: depth + 1 steps down
    assert scale["model.visual.layers.1.mixer.in_proj.weight"] == 0.5
    assert scale["model.visual.norm_f.weight"] == 1.0 and scale["model.vision_proj.weight"] == 1.0
    assert all(v == 0.1 for n, v in scale.items() if n.startswith("model.text."))


def test_launcher_reports_a_bad_config_in_one_line(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, str(root / "pretrain" / "run.py"), "--config",
                           str(root / "configs" / "pretrain" / "smoke_cpu.yaml"), "--out", str(tmp_path / "run"),
                           "data.reverse_pairs=2"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "pretrain/run.py: data.reverse_pairs is a probability in [0, 1], got 2" in proc.stderr
    assert "Traceback" not in proc.stderr
