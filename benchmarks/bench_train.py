"""Training benchmark: step time, samples/s, peak memory and MFU of VideoMamba-Ti/S + a 12-layer text tower
(VTC vs VTC + masked video), and real-loader data wait.

Runs the project's own train step (pretrain.train.micro_step through pretrain.engine.Engine, plain-PyTorch
backend: bf16 autocast, fused AdamW) on synthetic in-memory batches, then the real WebDataset loader on
synthetic shards written by the script. FLOPs are counted with torch.utils.flop_counter.FlopCounterMode
on one step: it counts matmuls/convolutions/attention, NOT the selective scan (a custom kernel, or
elementwise ops in the torch fallback), so MFU is a lower bound. Peak = a measured 8192^3 bf16 matmul.

    python benchmarks/bench_train.py --json bench_train.json                 # GPU
    python benchmarks/bench_train.py --device cpu --quick --json /tmp/b.json  # CPU smoke check, tiny sizes
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import itertools
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torch.nn as nn

from pretrain.config import TrainConfig
from pretrain.teachers import OpenClipTeacher, Teacher
from retrieval.config import from_dict


class StandInTeacher(Teacher):
    """Shape-only teacher: a fixed random patch projection to D_t per frame (costs ~nothing; isolates the student)."""

    def __init__(self, grid, dim: int, patch: int, in_mean, in_std):
        super().__init__(grid, in_mean, in_std)
        self.dim, self.patch = dim, patch
        self.proj = nn.Conv2d(3, dim, patch, patch).requires_grad_(False)

    def _tokens(self, video):
        B, C, T, H, W = video.shape
        x = self.proj(video.transpose(1, 2).reshape(B * T, C, H, W))  # (BT, D, h, w)
        x = x.permute(0, 2, 3, 1).reshape(B, T, x.shape[2], x.shape[3], self.dim)
        return x, x.mean((2, 3))


def train_config(size: str, mvm: bool, batch: int, quick: bool, grad_ckpt: bool) -> TrainConfig:
    if quick:
        encoder = {"depth": 2, "embed_dim": 64 if size == "tiny" else 96, "img_size": 32, "num_frames": 4}
        model = {"video": {"name": f"videomamba_{size}", "encoder": encoder},
                 "text": {"layers": 2, "width": 64, "heads": 2, "context_length": 32}, "embed_dim": 64}
    else:  # 12-layer CLIP text transformer, width 512 (open_clip ViT-B-16's text_cfg)
        model = {"video": {"name": f"videomamba_{size}", "encoder": {"num_frames": 8, "img_size": 224}},
                 "text": {"open_clip_model": "ViT-B-16", "context_length": 32}, "embed_dim": 512}
    return from_dict(TrainConfig, {
        "model": model,
        "data": {"batch_size": batch, "sources": [{"urls": "unused.tar"}]},
        "objectives": {"vtc": 1.0, "mvm": 1.0 if mvm else 0.0, "mask_kind": "tube", "mask_ratio": 0.8},
        "teacher": {"kind": "open_clip" if mvm else "none", "checkpoint": "random-weights-for-timing"},
        "engine": {"kind": "torch", "precision": "bf16", "grad_checkpointing": grad_ckpt},
        "optim": {"lr": 1e-4, "weight_decay": 0.05},
    })


def build(cfg: TrainConfig, dist, teacher_kind: str):
    """Model + engine (+ teacher) exactly as pretrain.train builds them."""
    import dataclasses

    from pretrain.engine import Engine
    from pretrain.train import PretrainModule
    from retrieval.model import create_model

    vcfg = cfg.model.video
    grid = vcfg.encoder_config().grid
    teacher, model_cfg = None, cfg.model
    torch.manual_seed(1)  # the random-weight teacher too: two builds must train against the same targets
    if cfg.objectives.mvm > 0:
        if teacher_kind == "openclip":
            teacher = OpenClipTeacher("ViT-B-16", None, grid, vcfg.mean, vcfg.std)
        else:
            teacher = StandInTeacher(grid, 512, vcfg.encoder_config().patch_size, vcfg.mean, vcfg.std)
        teacher.to(dist.device)
        model_cfg = dataclasses.replace(model_cfg, teacher_dim=teacher.dim)
    torch.manual_seed(0)
    model = create_model(model_cfg)
    if cfg.engine.grad_checkpointing:
        model.set_grad_checkpointing(True)
    engine = Engine(PretrainModule(model, cfg.objectives, use_mlm=False), cfg, dist, "torch")
    engine.train(True)
    return engine, teacher, grid


def synthetic_batch(cfg: TrainConfig, tokenizer, device) -> dict:
    v = cfg.model.video
    B = cfg.data.batch_size
    g = torch.Generator().manual_seed(0)
    captions = [f"a synthetic caption number {i} with a few more words in it" for i in range(B)]
    return {"video": torch.randn(B, 3, v.num_frames, v.img_size, v.img_size, generator=g).to(device),
            "text": tokenizer(captions, context_length=cfg.model.text.context_length or 32).to(device),
            "video_ids": torch.arange(B), "keys": [str(i) for i in range(B)]}


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def count_flops(engine, teacher, cfg, batch, grid) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    from pretrain.train import micro_step

    with FlopCounterMode(display=False) as counter:
        micro_step(engine, teacher, batch, cfg, grid, seed=0)
    return float(counter.get_total_flops())


def time_steps(engine, teacher, cfg, batch, grid, steps: int, warmup: int) -> dict:
    from pretrain.train import micro_step

    dev = engine.dist.device
    for i in range(warmup):
        micro_step(engine, teacher, batch, cfg, grid, seed=i)
    sync(dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    times = []
    for i in range(steps):
        t0 = time.perf_counter()
        micro_step(engine, teacher, batch, cfg, grid, seed=100 + i)
        sync(dev)
        times.append(time.perf_counter() - t0)
    step = statistics.median(times)
    return {"step_ms": step * 1e3, "samples_per_s": cfg.data.batch_size / step,
            "peak_mem_gb": torch.cuda.max_memory_allocated(dev) / 2 ** 30 if dev.type == "cuda" else None}


def profile_steps(engine, teacher, cfg, batch, grid, steps: int, out: Path) -> dict:
    """torch.profiler over `steps` train steps: writes the op tables (by GPU time, by CPU time) to `out` and
    returns the GPU's busy time per step against the step's wall time (a step is host-bound when busy << wall)."""
    from torch.profiler import ProfilerActivity, profile

    from pretrain.train import micro_step

    dev = engine.dist.device
    sync(dev)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        for i in range(steps):
            micro_step(engine, teacher, batch, cfg, grid, seed=200 + i)
        sync(dev)
        wall = (time.perf_counter() - t0) / steps
    ops = prof.key_averages()
    kernels = [e for e in ops if e.device_type == torch.autograd.DeviceType.CUDA]  # not the ops that launch them
    busy = sum(e.self_device_time_total for e in kernels) / steps / 1e3  # us -> ms
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(f"{steps} steps; wall {wall * 1e3:.1f} ms/step (profiler on), GPU busy {busy:.1f} ms/step\n\n"
                   + ops.table(sort_by="self_device_time_total", row_limit=30) + "\n\n"
                   + ops.table(sort_by="self_cpu_time_total", row_limit=30) + "\n")
    return {"profiled_wall_ms": wall * 1e3, "gpu_busy_ms": busy, "profile": str(out)}


def matmul_peak_tflops(device, n: int, dtype=torch.bfloat16, reps: int = 10) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n ** 3 * reps / (time.perf_counter() - t0) / 1e12


def _noise_clip(job: tuple) -> None:
    """A web-video-like clip that is costly to decode: a moving noise texture, H.264 crf 28, one keyframe per 250."""
    import av
    import numpy as np

    path, width, height, frames, fps, seed = job
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (height, width * 2, 3), dtype=np.uint8)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "28", "preset": "veryfast"}
        stream.codec_context.thread_count = 1
        for i in range(frames):
            img = np.ascontiguousarray(base[:, 2 * i: 2 * i + width])
            out.mux(stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        out.mux(stream.encode())
    Path(path).with_suffix(".txt").write_text(f"moving noise texture number {seed}\n")


def write_shards(root: Path, videos: int, kind: str, quick: bool, workers: int, reencode: bool) -> tuple[str, str]:
    """Pre-write the loader benchmark's shards; returns (urls, description)."""
    from concurrent.futures import ProcessPoolExecutor

    from pretrain.shards import ShardOptions, read_annotations
    from pretrain.shards import write_shards as _write
    from retrieval.data.workers import media_worker_context

    raw = root / "raw"
    if kind == "synth":  # the project's synthetic world: flat shapes, decodes far faster than real footage
        from pretrain.synth import generate

        size, frames = (32, 16) if quick else (320, 64)
        generate(raw, videos, "train", size=size, frames=frames, workers=workers, progress=False)
        items, media = read_annotations(raw / "annotations.json", raw / "videos"), raw / "videos"
        desc = f"{videos} synthetic-world clips, {size} px, {frames} frames at 8 fps"
    else:  # WebVid-like: 596x336, 10 s at 25 fps
        (w, h, frames) = (48, 32, 16) if quick else (596, 336, 250)
        raw.mkdir(parents=True)
        jobs = [(raw / f"clip{i:05d}.mp4", w, h, frames, 25, i) for i in range(videos)]
        with ProcessPoolExecutor(max_workers=workers, mp_context=media_worker_context()) as pool:
            list(pool.map(_noise_clip, jobs))
        items, media = read_annotations(None, raw), raw
        desc = f"{videos} noise-texture clips, {w}x{h}, {frames} frames at 25 fps, H.264 crf 28"
    opts = ShardOptions(shard_size=max(1, videos // 16), workers=workers)
    if reencode:  # what `vmr shards --max-side 320 --fps 8` stores for 224 px training
        opts.max_side, opts.fps = (24, 8) if quick else (320, 8)
        desc += f", stored re-encoded to <= {opts.max_side} px and {opts.fps:g} fps (vmr shards --max-side --fps)"
    else:
        desc += ", stored as is"
    report = _write(items, media, root / "shards", opts, progress=False)
    return report["urls"], desc


def loader_run(engine, teacher, cfg, grid, urls: str, workers: int, steps: int, warmup: int) -> dict:
    """Real pipeline (decode + augment + tokenise in workers) feeding the same train step: data wait vs step time."""
    from pretrain.data import StreamSpec, create_stream, expand_urls
    from pretrain.train import micro_step

    dev = engine.dist.device
    v = cfg.model.video
    model = engine.module.model
    spec = StreamSpec(sources=[(expand_urls(urls), 1.0)], batch_size=cfg.data.batch_size, num_frames=v.num_frames,
                      img_size=v.img_size, mean=tuple(v.mean), std=tuple(v.std),
                      context_length=model.config.text.context_length, resampled=True, shuffle_buffer=64,
                      flip=False)
    loader = create_stream(spec, model.tokenizer, num_workers=workers, prefetch_factor=4,
                           pin_memory=dev.type == "cuda")
    it = loader.epoch(0)
    waits, totals = [], []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        batch = next(it)
        t1 = time.perf_counter()
        micro_step(engine, teacher, batch, cfg, grid, seed=i)
        sync(dev)
        t2 = time.perf_counter()
        if i >= warmup:
            waits.append(t1 - t0)
            totals.append(t2 - t0)
    it.close()
    wait, total = statistics.mean(waits), statistics.mean(totals)
    return {"data_wait_ms": wait * 1e3, "step_ms": total * 1e3, "wait_pct": 100 * wait / total,
            "samples_per_s": cfg.data.batch_size / total, "workers": workers, "skipped": loader.skipped}


@contextlib.contextmanager
def scan_backend(backend: str | None):
    """Run the block with $VMR_SCAN_BACKEND set (None: leave `auto`)."""
    old = os.environ.get("VMR_SCAN_BACKEND")
    if backend is not None:
        os.environ["VMR_SCAN_BACKEND"] = backend
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("VMR_SCAN_BACKEND", None)
        else:
            os.environ["VMR_SCAN_BACKEND"] = old


def loss_curve(engine, teacher, cfg, grid, steps: int) -> list[float]:
    """Losses of `steps` train steps on fresh synthetic clips (step i's drawn on the device from seed 1000 + i)."""
    from pretrain.train import micro_step

    dev = engine.dist.device
    batch = synthetic_batch(cfg, engine.module.model.tokenizer, dev)
    losses = []
    for i in range(steps):
        g = torch.Generator(device=dev).manual_seed(1000 + i)
        batch["video"] = torch.randn(batch["video"].shape, generator=g, device=dev)
        losses.append(float(micro_step(engine, teacher, batch, cfg, grid, seed=i)["loss"]))
    return losses


def compare_curves(curves: dict[str, list[float]]) -> dict:
    """Each curve against the first: mean and max |diff|, next to the first curve's own step-to-step noise."""
    names = list(curves)
    ref = torch.tensor(curves[names[0]])
    out = {"reference": names[0], "step_noise": float((ref[1:] - ref[:-1]).abs().mean())}
    for name in names[1:]:
        d = (torch.tensor(curves[name]) - ref).abs()
        out[name] = {"mean_abs_diff": float(d.mean()), "max_abs_diff": float(d.max()),
                     "last20_ref": float(ref[-20:].mean()), "last20": float(torch.tensor(curves[name][-20:]).mean())}
    return out


def fmt(x, spec: str = ".1f") -> str:
    return "-" if x is None else format(x, spec)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])  # the summary paragraph
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="tiny models, few steps (CPU check of the script itself)")
    p.add_argument("--sizes", default="tiny,small")
    p.add_argument("--batch", type=int, default=None, help="per-step batch (default 32 on GPU, 4 with --quick)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per configuration (0: none)")
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--teacher", choices=("openclip", "standin"), default=None,
                   help="openclip: random-weight open_clip ViT-B/16 (the real teacher's shape and cost); "
                        "standin: a free random projection (student cost only). Default openclip on GPU")
    p.add_argument("--grad-ckpt", action="store_true", help="gradient checkpointing in the encoder")
    p.add_argument("--no-loader", action="store_true", help="skip the real-loader measurement")
    p.add_argument("--loader-workers", type=int, default=None)
    p.add_argument("--loader-videos", type=int, default=None)
    p.add_argument("--loader-clips", choices=("noise", "synth"), default="noise",
                   help="noise: WebVid-like 596x336 10 s clips that are costly to decode; synth: the synthetic world")
    p.add_argument("--loader-raw", action="store_true",
                   help="store loader clips as they are "
                        "(default: re-encoded to 320 px / 8 fps, the recommended shards)")
    p.add_argument("--backends", default=None,
                   help="comma list of selective-scan backends to time side by side (e.g. cuda,triton); "
                        "default: what `auto` picks. A backend named twice trains its loss curve twice "
                        "(e.g. cuda,triton,cuda: the run-to-run noise next to the difference)")
    p.add_argument("--curve-steps", type=int, default=0,
                   help="also train this many steps from one seed on fresh synthetic batches with each backend "
                        "(VTC + MVM) and compare the loss curves")
    p.add_argument("--profile", default=None, metavar="DIR",
                   help="also profile 3 steps of each configuration (torch.profiler) and write its op tables here")
    p.add_argument("--json", default=None, help="write results here")
    args = p.parse_args(argv)
    q = args.quick
    batch = args.batch or (4 if q else 32)
    steps = args.steps if args.steps is not None else (3 if q else 20)  # 0: no timing rows (e.g. curves only)
    warmup = args.warmup or (1 if q else 5)
    teacher_kind = args.teacher or ("standin" if q else "openclip")
    device = torch.device(args.device)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from pretrain.distributed import DistInfo
    from retrieval.selective_scan import resolve_backend

    dist = DistInfo(device=device)
    if device.type == "cuda":
        torch.cuda.set_device(device if device.index is not None else 0)
        torch.backends.cuda.matmul.allow_tf32 = True
    peak = matmul_peak_tflops(device, 1024 if q or device.type == "cpu" else 8192, reps=3 if q else 10)
    info = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
            "torch": torch.__version__, "scan_backend": resolve_backend(device), "batch": batch, "quick": q,
            "teacher": teacher_kind, "grad_checkpointing": args.grad_ckpt,
            "matmul_peak_tflops_bf16": peak, "matmul_n": 1024 if q or device.type == "cpu" else 8192}
    backends = args.backends.split(",") if args.backends else [None]
    rows = []
    for size, mvm, backend in itertools.product(args.sizes.split(","), (False, True), backends if steps else []):
        with scan_backend(backend):
            cfg = train_config(size, mvm, batch, q, args.grad_ckpt)
            name = "VTC + MVM (mask 0.8)" if mvm else "VTC"
            row = {"model": f"videomamba_{size}", "objectives": name, "batch": batch,
                   "scan_backend": resolve_backend(device, backend)}
            try:
                engine, teacher, grid = build(cfg, dist, teacher_kind)
                b = synthetic_batch(cfg, engine.module.model.tokenizer, device)
                flops = count_flops(engine, teacher, cfg, b, grid)
                row.update(time_steps(engine, teacher, cfg, b, grid, steps, warmup))
                row["gflop_per_sample"] = flops / batch / 1e9
                row["tflops"] = flops / (row["step_ms"] / 1e3) / 1e12
                row["mfu_pct"] = 100 * row["tflops"] / peak
                row["params_m"] = sum(p.numel() for p in engine.module.parameters()) / 1e6
                if args.profile:
                    tag = f"{size}_{'vtc_mvm' if mvm else 'vtc'}_{row['scan_backend']}"
                    row.update(profile_steps(engine, teacher, cfg, b, grid, 3, Path(args.profile) / f"{tag}.txt"))
            except torch.cuda.OutOfMemoryError:
                row["error"] = "OOM"
            rows.append(row)
            print(f"  {row['model']:18s} {name:22s} " + (row.get("error") or f"{row['step_ms']:.1f} ms/step"),
                  file=sys.stderr)
            engine = teacher = b = None
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()

    curves = {}
    if args.curve_steps:
        for size in args.sizes.split(","):
            per_backend = {}
            for backend in backends:
                with scan_backend(backend):
                    cfg = train_config(size, True, batch, q, args.grad_ckpt)
                    engine, teacher, grid = build(cfg, dist, teacher_kind)
                    name = resolve_backend(device, backend)
                    runs = sum(k.split(" ")[0] == name for k in per_backend)
                    name += f" (run {runs + 1})" if runs else ""  # a backend named twice: run-to-run noise
                    per_backend[name] = loss_curve(engine, teacher, cfg, grid, args.curve_steps)
                    engine = teacher = None
                    gc.collect()
            curves[f"videomamba_{size}"] = {"losses": per_backend, "compare": compare_curves(per_backend)}
            print(f"  loss curves videomamba_{size}: {curves[f'videomamba_{size}']['compare']}", file=sys.stderr)

    loader_rows = []
    if not args.no_loader:
        workers = args.loader_workers if args.loader_workers is not None else (1 if q else min(12, os.cpu_count() or 4))
        n_videos = args.loader_videos or (16 if q else 256)
        tmp = Path(tempfile.mkdtemp(prefix="bench_train_"))
        try:
            t0 = time.perf_counter()
            urls, info["loader_clips"] = write_shards(tmp, n_videos, args.loader_clips, q,
                                                      max(1, (os.cpu_count() or 2) - 1), not args.loader_raw)
            info["loader_shards_written_s"] = time.perf_counter() - t0
            for size in args.sizes.split(","):
                cfg = train_config(size, True, batch, q, args.grad_ckpt)
                engine, teacher, grid = build(cfg, dist, teacher_kind)
                r = loader_run(engine, teacher, cfg, grid, urls, workers, steps * 2, warmup + 2)
                loader_rows.append({"model": f"videomamba_{size}", "objectives": "VTC + MVM (mask 0.8)",
                                    "batch": batch, **r})
                engine = teacher = None
                gc.collect()
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    lines = [f"Device: {info['device']}, torch {info['torch']}, scan backend `{info['scan_backend']}`, "
             f"bf16 matmul peak {peak:.1f} TFLOP/s ({info['matmul_n']}^3), teacher: "
             + ("random-weight open_clip ViT-B/16 per frame" if teacher_kind == "openclip" else "shape-only stand-in"),
             "",
             "| model | objectives | scan backend | batch | step (ms) | samples/s | peak mem (GB) "
             "| GFLOP/sample* | TFLOP/s* | MFU %* |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['objectives']} | {r['scan_backend']} | {r['batch']} | {r['error']} "
                         "| | | | | |")
            continue
        lines.append(f"| {r['model']} | {r['objectives']} | {r['scan_backend']} | {r['batch']} | {r['step_ms']:.1f} "
                     f"| {r['samples_per_s']:.1f} | {fmt(r['peak_mem_gb'], '.2f')} | {r['gflop_per_sample']:.4g} "
                     f"| {r['tflops']:.3g} | {r['mfu_pct']:.1f} |")
    lines += ["", "*FlopCounterMode counts matmuls/convs/attention of the whole step (student fwd+bwd, teacher fwd), "
              "not the selective scan: MFU is a lower bound."]
    if loader_rows:
        lines += ["", f"Real loader ({info['loader_clips']}; decode + crop + tokenise in workers):", "",
                  "| model | batch | workers | data wait (ms) | step incl. wait (ms) | wait % | samples/s |",
                  "|---|---|---|---|---|---|---|"]
        for r in loader_rows:
            lines.append(f"| {r['model']} | {r['batch']} | {r['workers']} | {r['data_wait_ms']:.1f} "
                         f"| {r['step_ms']:.1f} | {r['wait_pct']:.1f} | {r['samples_per_s']:.1f} |")
    for model, c in curves.items():
        cmp = c["compare"]
        lines += ["", f"Loss curves, {model}, VTC + MVM, {args.curve_steps} steps from one seed on fresh synthetic "
                  f"batches, against `{cmp['reference']}` (its step-to-step noise: {cmp['step_noise']:.4f}):", "",
                  "| backend | mean abs diff | max abs diff | loss, last 20 steps (reference) |", "|---|---|---|---|"]
        for name, d in cmp.items():
            if isinstance(d, dict):
                lines.append(f"| {name} | {d['mean_abs_diff']:.4f} | {d['max_abs_diff']:.4f} "
                             f"| {d['last20']:.4f} ({d['last20_ref']:.4f}) |")
    table = "\n".join(lines)
    print(table)
    result = {"info": info, "synthetic": rows, "curves": curves, "loader": loader_rows, "markdown": table}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
