"""Ingest throughput: segments/s of the real `vmr index build` path (decode + encode + write) vs the pure encoder.

Writes a library of short synthetic mp4 clips (pretrain.synth.generate, test split, 4 s at 8 fps: one segment
each), saves a randomly initialised videomamba_tiny dual encoder (8 frames, 224 px) with retrieval.save_model,
then on each device, in one process:
  1. pure encoder: model.encode_video on a random (B, 3, 8, 224, 224) batch already on the device, no_grad and
     float32 as index.embedder.Embedder runs it (the build uses no autocast); median of repeats after warm-up.
     GPU only, for reference: Embedder.encode_video from a uint8 host batch (+ copy in, normalise, fp16 copy
     out) and bf16 autocast.
  2. decode only: index.reader.SegmentReader in the same DataLoader the build uses (hash + probe + decode + resize).
  3. end to end: index.ingest.build (what `vmr index build` calls) into a fresh index: discovery, decode workers,
     encode, part/checkpoint writes, merge + FAISS commit. The model is passed in memory (load time excluded);
     CUDA is already warm from step 1. segments/s = segments written / wall time of the build call (median of
     --build-repeats builds).
The issue's bar: end to end >= 70% of the pure encoder on the GPU.

    PYTHONPATH=. python benchmarks/bench_ingest.py --device cuda,cpu --json bench_ingest.json          # GPU machine
    PYTHONPATH=. python benchmarks/bench_ingest.py --device cpu --quick --json /tmp/bench_ingest.json  # CPU smoke check
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch


def model_config(quick: bool) -> dict:
    if quick:  # a few-layer tower at 64 px: checks the script, not the speed
        return {"video": {"name": "videomamba_tiny", "encoder": {"embed_dim": 64, "depth": 2, "img_size": 64,
                                                                 "num_frames": 8}},
                "text": {"kind": "clip", "width": 64, "layers": 2, "heads": 2, "context_length": 16}, "embed_dim": 32}
    return {"video": {"name": "videomamba_tiny", "encoder": {"img_size": 224, "num_frames": 8}},
            "text": {"open_clip_model": "ViT-B-16", "context_length": 32}, "embed_dim": 512}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor() or "cpu"
    return f"{cpu} ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_encoder(fn, x, device, repeats: int, warmup: int, autocast: bool = False) -> float:
    """Median seconds of fn(x) over `repeats` after `warmup` calls."""
    ctx = torch.autocast(device.type, dtype=torch.bfloat16) if autocast else nullcontext()
    times = []
    with torch.no_grad(), ctx:
        for i in range(warmup + repeats):
            sync(device)
            t0 = time.perf_counter()
            fn(x)
            sync(device)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    return statistics.median(times)


def decode_only(tasks, model, batch: int, workers: int) -> tuple[int, float]:
    """The build's reader and DataLoader without a model: (segments, seconds)."""
    from index.ingest import IngestConfig
    from index.reader import Chunk, SegmentReader, decode_stream

    v = model.config.video
    reader = SegmentReader(tasks, v.num_frames, v.img_size, IngestConfig().segment_seconds, None, chunk=batch)
    stream = decode_stream(reader, min(workers, len(tasks)))
    t0, segments = time.perf_counter(), 0
    for item in stream:
        segments += len(item.spans) if isinstance(item, Chunk) else 0
    return segments, time.perf_counter() - t0


def run_device(device: torch.device, model_dir: Path, lib: Path, files: list[str], work: Path, args, q: bool) -> dict:
    work.mkdir(parents=True)  # one folder per device run: its own list file and fresh indexes
    from index import ingest
    from index.embedder import Embedder
    from index.reader import FileTask
    from retrieval import load_model
    from retrieval.selective_scan import causal_conv1d_available, resolve_backend

    model = load_model(model_dir, device=device).eval()
    model.model_id  # noqa: B018 - hashes the weights once, outside the timed build
    v, B = model.config.video, args.batch_size
    repeats, warmup = (3, 1) if q else (2, 1) if device.type == "cpu" else (20, 5)
    x = torch.randn(B, 3, v.num_frames, v.img_size, v.img_size, device=device)
    pure = time_encoder(lambda t: model.encode_video(t, normalize=True), x, device, repeats, warmup)
    frames = torch.randint(0, 256, x.shape, dtype=torch.uint8)  # what the build's workers hand over
    host = (time_encoder(Embedder(model, device, B).encode_video, frames, device, repeats, warmup)
            if device.type == "cuda" else None)
    bf16 = None
    if device.type == "cuda":
        try:  # a reference figure only: never let it stop the run
            bf16 = time_encoder(lambda t: model.encode_video(t, normalize=True), x, device, repeats, warmup, True)
        except Exception as e:  # noqa: BLE001
            print(f"  bf16 autocast encoder failed: {type(e).__name__}: {e}", file=sys.stderr)

    tasks = [FileTask(str(lib), f) for f in files]
    dec_segments, dec_s = decode_only(tasks, model, B, args.workers)
    listing = work / "list.txt"  # a list file lets the CPU run take a subset of the library
    listing.write_text("\n".join(files) + "\n")
    cfg = ingest.IngestConfig(batch_size=B, workers=args.workers, device=str(device), progress=False)
    walls, phases = [], []
    for i in range(args.build_repeats or (2 if device.type == "cuda" and not q else 1)):  # fresh index each time
        t0 = time.perf_counter()
        report = ingest.build(str(listing), work / f"index{i}", model=model,
                              model_path=str(model_dir), config=cfg, video_root=str(lib))
        walls.append(time.perf_counter() - t0)
        phases.append(report.phases)
        if report.failures or report.segments != dec_segments:
            raise RuntimeError(f"build wrote {report.segments} segments (decode-only saw {dec_segments}); "
                               f"failures: {report.failures[:5]}")
    wall = statistics.median(walls)
    e2e = report.segments / wall
    return {"device": device_name(device), "device_type": device.type, "scan_backend": resolve_backend(device),
            "causal_conv1d_kernel": causal_conv1d_available() and device.type == "cuda", "files": len(files),
            "segments": report.segments, "batch": B, "workers": args.workers,
            "build_wall_s": wall, "build_walls_s": walls, "build_phases_s": phases,
            "end_to_end_seg_s": e2e, "pure_encoder_seg_s": B / pure, "ratio": e2e * pure / B,
            "embedder_host_batch_seg_s": B / host if host else None,
            "pure_encoder_bf16_seg_s": B / bf16 if bf16 else None,
            "decode_only_s": dec_s, "decode_only_seg_s": dec_segments / dec_s,
            "faiss": (report.commit.index or {}).get("factory") if report.commit else None}


def fmt(x, spec=".1f") -> str:
    return "-" if x is None else format(x, spec)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="auto | cuda | cpu, or a comma list run in order (e.g. cuda,cpu)")
    p.add_argument("--quick", action="store_true", help="tiny model at 64 px, 24 clips (checks the script on a CPU)")
    p.add_argument("--videos", type=int, default=None, help="library size (default 3000; 24 with --quick)")
    p.add_argument("--cpu-videos", type=int, default=None,
                   help="files the CPU run encodes, a prefix of the library (default 128; all with --quick)")
    p.add_argument("--size", type=int, default=None, help="generated clip side in px (default 224; 64 with --quick)")
    p.add_argument("--batch-size", type=int, default=16, help="segments per forward pass (vmr default: 16)")
    p.add_argument("--workers", type=int, default=None, help="decode processes (default: cores - 1)")
    p.add_argument("--build-repeats", type=int, default=None,
                   help="timed builds per device, each into a fresh index; the median counts "
                        "(default 2 on GPU, else 1)")
    p.add_argument("--work", default=None,
                   help="where to make the temporary folder for the clips, model and indexes (default: $TMPDIR)")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder")
    p.add_argument("--json", default=None, help="write results here")
    args = p.parse_args(argv)
    q = args.quick
    n = args.videos or (24 if q else 3000)
    size = args.size or (64 if q else 224)
    args.workers = max(1, (os.cpu_count() or 2) - 1) if args.workers is None else args.workers
    devices = [d.strip() for d in args.device.split(",")]
    devices = [("cuda" if torch.cuda.is_available() else "cpu") if d == "auto" else d for d in devices]
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    from pretrain.synth import generate
    from retrieval import create_model, save_model

    if args.work:
        Path(args.work).mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench_ingest_", dir=args.work))  # always a fresh folder: only it is removed
    info = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "work": str(work),
            "torch": torch.__version__, "python": platform.python_version(), "quick": q, "videos": n,
            "clip": f"{size} px, 32 frames at 8 fps (4 s)"}
    rows = []
    try:
        t0 = time.perf_counter()
        generate(work / "lib", n, "test", size=size, frames=32, fps=8, workers=os.cpu_count() or 1, progress=False)
        info["generate_s"] = time.perf_counter() - t0
        torch.manual_seed(0)
        model_dir = save_model(create_model(model_config(q)).eval(), work / "model")
        lib = work / "lib" / "videos"
        files = sorted(f.name for f in lib.glob("*.mp4"))
        for k, d in enumerate(devices):
            dev = torch.device(d)
            subset = files if dev.type == "cuda" or q else files[:args.cpu_videos or 128]
            rows.append(run_device(dev, model_dir, lib, subset, work / f"run{k}", args, q))
            phases = ", ".join(f"{k} {v:.2f} s" for k, v in rows[-1]["build_phases_s"][-1].items())
            print(f"  {d}: {rows[-1]['end_to_end_seg_s']:.1f} seg/s end to end (last build: {phases})", file=sys.stderr)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    lines = [f"{info['date']}, torch {info['torch']}, Python {info['python']}; library: {n} synthetic clips "
             f"({info['clip']}, one segment each), videomamba_tiny 8 frames x "
             f"{model_config(q)['video']['encoder']['img_size']} px, float32 (as the build runs)", "",
             "| device | scan backend | files | batch | workers | end to end seg/s | pure encoder seg/s | ratio "
             "| Embedder (host batch) seg/s | decode only seg/s | bf16 autocast encoder seg/s | build wall (s) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['device']} | {r['scan_backend']}{' + causal-conv1d' if r['causal_conv1d_kernel'] else ''} "
                     f"| {r['files']} | {r['batch']} | {r['workers']} | {r['end_to_end_seg_s']:.1f} "
                     f"| {r['pure_encoder_seg_s']:.1f} | {100 * r['ratio']:.0f}% "
                     f"| {fmt(r['embedder_host_batch_seg_s'])} | {r['decode_only_seg_s']:.1f} "
                     f"| {fmt(r['pure_encoder_bf16_seg_s'])} | {r['build_wall_s']:.2f} |")
    lines += ["", "End to end = wall time of index.ingest.build (discovery, hashing, decode workers, encode, "
              "checkpoint writes, merge + FAISS commit), model already in memory. Pure encoder = model.encode_video "
              "on a batch already on the device (median). Embedder (host batch) = the build's Embedder.encode_video "
              "on a uint8 batch in host memory (copy in + normalise + encode + fp16 copy out). "
              "Decode only = the build's SegmentReader + DataLoader, no model. "
              "bf16 autocast: what the encoder would do with it; the build does not use it."]
    table = "\n".join(lines)
    print(table)
    result = {"info": info, "rows": rows, "markdown": table}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
