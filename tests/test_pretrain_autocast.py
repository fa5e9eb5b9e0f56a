"""DeepSpeed's torch_autocast mode (configs/deepspeed/zero0_autocast.json) trains like the torch engine under
autocast."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("webdataset")
pytest.importorskip("deepspeed")
ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "configs" / "pretrain" / "smoke_cpu.yaml")
SHORT = ["run.epochs=1", "val.every=0", "val.anno=null", "run.progress=false", "synth.train_videos=16",
         "synth.val_videos=4", "data.batch_size=4", "run.ckpt_every=0", "run.seed=3"]


def _losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "steps.jsonl").read_text().splitlines() if line.strip()]


def test_resolved_config_keeps_fp32_weights():
    from pretrain.config import load_train_config
    from pretrain.engine import resolve_optimization

    cfg = load_train_config(SMOKE, ["engine.deepspeed_config=configs/deepspeed/zero0_autocast.json"])
    ds, opt = resolve_optimization(cfg, world_size=1)
    assert opt["precision"] == "bf16" and opt["autocast"]
    assert ds["torch_autocast"] == {"enabled": True, "dtype": "bfloat16", "lower_precision_safe_modules": []}
    assert not ds["bf16"]["enabled"] and not ds["fp16"]["enabled"]
    fp32 = load_train_config(SMOKE, ["engine.deepspeed_config=configs/deepspeed/zero0_autocast.json",
                                     "engine.precision=fp32"])
    ds, opt = resolve_optimization(fp32, world_size=1)
    assert not opt["autocast"] and "torch_autocast" not in ds


def test_deepspeed_autocast_matches_torch_engine(tmp_path, single_process_env):
    import torch

    from pretrain.run import main

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # multi-threaded CPU reductions differ from run to run in the last bits
    try:
        main(["--config", SMOKE, "--out", str(tmp_path / "torch"), "engine.kind=torch", "engine.precision=bf16",
              *SHORT])
        # the same clips for both, generated once
        shutil.copytree(tmp_path / "torch" / "synth", tmp_path / "ds" / "synth")
        main(["--config", SMOKE, "--out", str(tmp_path / "ds"), "engine.kind=deepspeed",
              "engine.deepspeed_config=configs/deepspeed/zero0_autocast.json", *SHORT])
    finally:
        torch.set_num_threads(threads)
    torch_losses, ds_losses = _losses(tmp_path / "torch"), _losses(tmp_path / "ds")
    assert len(torch_losses) == len(ds_losses) == 4
    # The same weights in the same dtype give the same first loss; bf16 weights (DeepSpeed's bf16 section) do not.
    # Later steps drift apart by the run-to-run noise of the CPU backward (~1e-3 relative), engine or not.
    assert ds_losses[0] == pytest.approx(torch_losses[0], rel=1e-6)
    assert ds_losses == pytest.approx(torch_losses, rel=2e-2)
