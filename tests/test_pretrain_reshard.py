"""A ZeRO checkpoint written by 2 ranks resumes on 1 rank through the real `deepspeed` launcher."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("deepspeed")
ROOT = Path(__file__).resolve().parents[1]
LAUNCHER = Path(sys.executable).with_name("deepspeed")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(n: int, out: Path, *extra: str) -> str:
    cmd = [str(LAUNCHER), "--num_gpus", str(n), "--master_port", str(_port()), "pretrain/run.py",
           "--config", "configs/pretrain/smoke_cpu.yaml", "--out", str(out), *extra,  # flags, then overrides
           "engine.deepspeed_config=configs/deepspeed/zero1_bf16.json", "engine.zero_stage=1", "run.progress=false"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


@pytest.mark.skipif(shutil.which("deepspeed", path=str(LAUNCHER.parent)) is None, reason="no deepspeed launcher")
def test_zero_checkpoint_from_two_ranks_resumes_on_one(tmp_path):
    run = tmp_path / "run"
    _launch(2, run)  # 2 epochs x 2 steps at global batch 16, checkpoint at the end
    first = json.loads((run / "summary.json").read_text())
    log = _launch(1, run, "--resume", "auto", "run.epochs=3")
    assert "written by 2 ranks, this run has 1" in log
    assert f"at step {first['step']}" in log
    second = json.loads((run / "summary.json").read_text())
    assert second["step"] > first["step"] and not second["stopped_early"]
    from retrieval import load_model
    load_model(run / "model")  # the exported folder of the resumed run loads
