"""Ingest pipeline overhead: `index.ingest.build` with a free encoder vs the decode workers alone.

On a GPU the encoder is fast, so what the build adds around it (moving clips out of the decode workers, batching,
writing, committing) decides whether ingest keeps up with the encoder. This measures that part on any machine:
the model's `encode_video` is replaced by a no-op that returns unit vectors, so the build's wall time is
decode + pipeline only. Compare `build seg/s` with `decode only seg/s` (the same reader and DataLoader, no model).

    PYTHONPATH=. python benchmarks/bench_ingest_pipeline.py --videos 120 --workers 1
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch.nn.functional as F
from bench_ingest import decode_only, model_config


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--videos", type=int, default=120, help="synthetic 4 s clips (one segment each)")
    p.add_argument("--size", type=int, default=224, help="clip side in pixels (the model input is 224)")
    p.add_argument("--workers", type=int, default=1, help="decode worker processes")
    p.add_argument("--batch-size", type=int, default=16)
    args = p.parse_args(argv)

    from index import ingest
    from index.reader import FileTask
    from pretrain.synth import generate
    from retrieval import create_model, load_model, save_model

    work = Path(tempfile.mkdtemp(prefix="bench_pipeline_"))
    try:
        lib = work / "lib"
        generate(lib, args.videos, "test", size=args.size, frames=32, fps=8, workers=2, progress=False)
        save_model(create_model(model_config(quick=False)), work / "model")
        model = load_model(work / "model")
        model.model_id  # noqa: B018 - hash the weights outside the timed build
        dim = model.config.embed_dim
        model.encode_video = lambda x, normalize=True: F.normalize(x.flatten(1)[:, :dim].float() + 1e-3, dim=-1)
        files = sorted(p.name for p in (lib / "videos").glob("*.mp4"))
        segments, dec_s = decode_only([FileTask(str(lib / "videos"), f) for f in files], model, args.batch_size,
                                      args.workers)
        (work / "list.txt").write_text("\n".join(files) + "\n")
        cfg = ingest.IngestConfig(batch_size=args.batch_size, workers=args.workers, device="cpu", progress=False)
        t0 = time.perf_counter()
        report = ingest.build(str(work / "list.txt"), work / "index", model=model, model_path=str(work / "model"),
                              config=cfg, video_root=str(lib / "videos"))
        build_s = time.perf_counter() - t0
        row = {"files": len(files), "workers": args.workers, "decode_only_seg_s": segments / dec_s,
               "build_free_encoder_seg_s": report.segments / build_s}
        print("| files | workers | decode only seg/s | build with a free encoder seg/s | build / decode |")
        print("|---|---|---|---|---|")
        decode_s, build_free_s = row["decode_only_seg_s"], row["build_free_encoder_seg_s"]
        print(f"| {len(files)} | {args.workers} | {decode_s:.1f} | {build_free_s:.1f} "
              f"| {build_free_s / decode_s:.0%} |")
        return row
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
