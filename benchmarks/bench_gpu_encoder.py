"""GPU inference benchmark: VideoMamba-Ti (per scan path) vs a TimeSformer-Ti-style joint space-time ViT
(materialised / SDPA attention).

VideoMamba variants, all measured in the same process: `cuda_unfused` (mamba-ssm scans, PyTorch residual
add + RMSNorm: the path before the Triton work), `cuda` (mamba-ssm scans + fused add/norm) and `triton`
(our block kernels + fused add/norm), `triton_graphs` (the same replayed from a CUDA graph). `--profile` prints
each variant's per-kernel share of GPU time.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics

import torch
import torch.nn as nn
import torch.nn.functional as F

from retrieval import create_video_encoder
from retrieval.cuda_graphs import CudaGraphed
from retrieval.videomamba import patch_linear


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, fused: bool):
        super().__init__()
        self.heads, self.fused = heads, fused
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, L, D = x.shape
        q, k, v = self.qkv(x).reshape(B, L, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        if self.fused:
            y = F.scaled_dot_product_attention(q, k, v)
        else:  # the paper's baseline: the (L x L) attention matrix is materialised
            attn = (q @ k.transpose(-2, -1)) * (D // self.heads) ** -0.5
            y = attn.softmax(-1) @ v
        return self.proj(y.transpose(1, 2).reshape(B, L, D))


class ViTBlock(nn.Module):
    def __init__(self, dim, heads, fused):
        super().__init__()
        self.n1, self.n2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, fused)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x):
        x = x + self.attn(self.n1(x))
        return x + self.mlp(self.n2(x))


class SpaceTimeViT(nn.Module):
    """TimeSformer-Ti-style baseline: joint space-time attention over all 1 + T*196 tokens. gemm_patch: the patch
    embedding as VideoMamba's runs on the GPU (one GEMM, retrieval.videomamba.patch_linear) instead of cuDNN's
    Conv3d, so a comparison can leave that difference out."""

    def __init__(self, frames, dim=192, depth=12, heads=3, fused=False, img=224, patch=16, gemm_patch=False):
        super().__init__()
        self.gemm_patch = gemm_patch
        n = (img // patch) ** 2
        self.patch = nn.Conv3d(3, dim, (1, patch, patch), (1, patch, patch))
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.zeros(1, 1 + frames * n, dim))
        self.blocks = nn.ModuleList([ViTBlock(dim, heads, fused) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)

    def forward(self, x):
        x = (patch_linear(x, self.patch) if self.gemm_patch else self.patch(x)).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1) + self.pos
        for b in self.blocks:
            x = b(x)
        return self.norm(x)[:, 0]


def measure(model, frames, batch, repeats=10, warmup=3):
    x = torch.randn(batch, 3, frames, 224, 224, device="cuda")
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    times = []
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
        for i in range(warmup + repeats):
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            model(x)
            e.record()
            torch.cuda.synchronize()
            if i >= warmup:
                times.append(s.elapsed_time(e) / 1e3)
    peak = torch.cuda.max_memory_allocated() - base + x.numel() * 4
    t = statistics.median(times)
    return {"videos_per_s": batch / t, "mem_per_video_mb": peak / batch / 2**20, "batch": batch}


VARIANTS = {  # name: (VMR_SCAN_BACKEND, VMR_FUSED_NORM)
    "cuda_unfused": ("cuda", "0"),
    "cuda": ("cuda", "1"),
    "triton": ("triton", "1"),
    "triton_graphs": ("triton", "1"),  # + the forward replayed from a CUDA graph (retrieval.cuda_graphs)
}


def use_variant(name: str) -> None:
    os.environ["VMR_SCAN_BACKEND"], os.environ["VMR_FUSED_NORM"] = VARIANTS[name]


def profile_shares(model, frames: int, batch: int, top: int = 12) -> list[dict]:
    """Per-kernel share of the GPU time of one bf16 forward: name, share, launches, ms."""
    from torch.profiler import ProfilerActivity, profile
    x = torch.randn(batch, 3, frames, 224, 224, device="cuda")
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
        model(x)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            model(x)
            torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if e.device_type.name == "CUDA" and e.self_device_time_total > 0]
    total = sum(e.self_device_time_total for e in events)
    events.sort(key=lambda e: -e.self_device_time_total)
    return [{"kernel": e.key[:90], "share": e.self_device_time_total / total, "launches": e.count,
             "ms": e.self_device_time_total / 1e3} for e in events[:top]] + [{"kernel": "TOTAL", "share": 1.0,
             "launches": sum(e.count for e in events), "ms": total / 1e3}]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--frames", type=int, nargs="+", default=[8, 16, 32, 64])
    p.add_argument("--videos-per-batch-frames", type=int, default=512,
                   help="batch = this / frames (same batch for every model at a frame count)")
    p.add_argument("--variants", default="cuda_unfused,cuda,triton", help=f"VideoMamba paths, from {list(VARIANTS)}")
    p.add_argument("--no-materialised", action="store_true", help="skip the materialised-attention ViT")
    p.add_argument("--profile", type=int, metavar="FRAMES", help="also profile each variant's forward at FRAMES")
    p.add_argument("--batch", type=int, help="one batch size for every frame count (instead of the rule above)")
    p.add_argument("--load-blocks", help="Triton block sizes from bench_scan_gpu.py --save-blocks")
    p.add_argument("--json", help="write results here")
    args = p.parse_args(argv)
    if args.load_blocks:
        from bench_scan_gpu import load_blocks
        with open(args.load_blocks) as f:
            load_blocks(json.load(f))
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    rows, profiles = [], {}
    for T in args.frames:
        B = args.batch or max(1, args.videos_per_batch_frames // T)
        models = {f"videomamba_tiny_{v}": (lambda: create_video_encoder("videomamba_tiny", num_frames=T), v)
                  for v in variants}
        if not args.no_materialised:
            models["vit_ti_materialised"] = (lambda: SpaceTimeViT(T, fused=False), None)
        models["vit_ti_sdpa"] = (lambda: SpaceTimeViT(T, fused=True), None)
        models["vit_ti_sdpa_gemm_patch"] = (lambda: SpaceTimeViT(T, fused=True, gemm_patch=True), None)
        res = {}
        for name, (make, variant) in models.items():
            if variant:
                use_variant(variant)
            torch.manual_seed(0)
            m = make().cuda().eval()
            try:
                res[name] = measure(CudaGraphed(m) if name.endswith("_graphs") else m, T, B)
                if variant and T == args.profile:
                    profiles[variant] = profile_shares(m, T, B)
            except torch.OutOfMemoryError:
                res[name] = {"videos_per_s": float("nan"), "mem_per_video_mb": float("nan"), "batch": B}
            del m
            torch.cuda.empty_cache()
        rows.append({"frames": T, **res})
        sd = res["vit_ti_sdpa"]
        print(f"T={T:3d} B={B:3d} | " + " | ".join(
            f"{k} {v['videos_per_s']:.1f} v/s {v['mem_per_video_mb']:.1f} MB/v "
            f"x{v['videos_per_s'] / sd['videos_per_s']:.2f} sdpa"
            for k, v in res.items()), flush=True)
    base = f"videomamba_tiny_{variants[0]}"
    names = [k for k in rows[0] if k != "frames"]
    mamba = [n for n in names if n.startswith("videomamba")]
    not_base = [n for n in mamba if n != base]
    print("\n| frames | batch | " + " | ".join(f"{n} v/s (MB/video)" for n in names)
          + " | " + " | ".join(f"{n} vs SDPA" for n in mamba)
          + " | " + " | ".join(f"{n} vs {variants[0]}" for n in not_base) + " |")
    print("|" + "---|" * (2 + len(names) + 2 * len(mamba) - 1))
    for r in rows:
        sd, b0 = r["vit_ti_sdpa"]["videos_per_s"], r[base]["videos_per_s"]
        print(f"| {r['frames']} | {r[base]['batch']} | "
              + " | ".join(f"{r[n]['videos_per_s']:.1f} ({r[n]['mem_per_video_mb']:.1f})" for n in names) + " | "
              + " | ".join(f"{r[n]['videos_per_s'] / sd:.2f}x" for n in mamba) + " | "
              + " | ".join(f"{r[n]['videos_per_s'] / b0:.2f}x" for n in not_base)
              + " |")
    for variant, shares in profiles.items():
        print(f"\nprofile, {variant}, {args.profile} frames:\n| kernel | share | launches | ms |\n|---|---|---|---|")
        for e in shares:
            print(f"| `{e['kernel']}` | {e['share']:.1%} | {e['launches']} | {e['ms']:.2f} |")
    print(f"\ndevice: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "rows": rows, "profiles": profiles}, f, indent=1)


if __name__ == "__main__":
    main()
