"""Per-step host syncs and tensor ops of backward + optimizer step, by engine path, on the CPU (no GPU needed).

Host syncs = aten::_local_scalar_dense calls (.item() / bool() of a tensor); ops = leaf aten ops, about one kernel
launch each on a GPU. The tiny_1gpu model (569 parameter tensors) at 2 frames x 32 px, batch 2, VTC only.
On the CPU torch's AdamW runs single-tensor and syncs once per parameter (`step.item()`), in every row that uses it;
on CUDA it is fused and does not.

    python benchmarks/count_engine_ops.py torch 0
    python benchmarks/count_engine_ops.py deepspeed 0 [engine.deepspeed_config=X.json engine.precision=fp32 ...]
"""
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("VMR_SCAN_BACKEND", "torch")
import torch
from torch.profiler import ProfilerActivity, profile

from pretrain.config import load_train_config
from pretrain.distributed import init_distributed
from pretrain.engine import Engine
from pretrain.train import PretrainModule, micro_step
from retrieval.model import create_model

ROOT = Path(__file__).resolve().parents[1]
kind, stage = sys.argv[1], int(sys.argv[2])
overrides = ['model.video.encoder={num_frames: 2, img_size: 32}', 'objectives.mvm=0', 'teacher.kind=none',
             'engine.precision=bf16', f'engine.zero_stage={stage}', 'data.batch_size=2', f'engine.kind={kind}',
             'data.sources=[{urls: x.tar}]']
cfg = load_train_config(str(ROOT / 'configs/pretrain/tiny_1gpu.yaml'), overrides + sys.argv[3:])
dist = init_distributed(kind)
torch.manual_seed(0)
model = create_model(cfg.model)
engine = Engine(PretrainModule(model, cfg.objectives, use_mlm=False), cfg, dist, kind)
B = 2
batch = {"video": torch.randn(B, 3, 2, 32, 32), "text": model.tokenize(["a red circle"] * B),
         "video_ids": torch.arange(B)}
grid = cfg.model.video.encoder_config().grid
micro_step(engine, None, batch, cfg, grid, seed=0)
dev = engine.dist.device
video = batch["video"].to(engine.input_dtype)
losses = engine(video, batch["text"], video_ids=batch["video_ids"])
with profile(activities=[ProfilerActivity.CPU]) as p:
    engine.backward(losses["loss"])
    engine.step()


def count(evs):
    syncs = sum(1 for e in evs if e.name == "aten::_local_scalar_dense")
    leaf = sum(1 for e in evs if e.name.startswith("aten::") and not e.cpu_children)
    return syncs, leaf


syncs, leaf_ops = count(p.events())
opt = type(engine.optimizer).__name__
print(json.dumps({"engine": kind, "zero_stage": stage, "optimizer_wrapper": opt,
                  "params": sum(1 for _ in engine.module.parameters()),
                  "host_syncs_backward_plus_step": syncs, "aten_leaf_ops_backward_plus_step": leaf_ops}))
