"""GPU inference benchmark: VideoMamba-Ti vs a TimeSformer-Ti-style joint space-time ViT (materialised / SDPA attention)."""
from __future__ import annotations

import argparse
import json
import math
import statistics

import torch
import torch.nn as nn
import torch.nn.functional as F

from retrieval import create_video_encoder


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
    """TimeSformer-Ti-style baseline: joint space-time attention over all 1 + T*196 tokens."""

    def __init__(self, frames, dim=192, depth=12, heads=3, fused=False, img=224, patch=16):
        super().__init__()
        n = (img // patch) ** 2
        self.patch = nn.Conv3d(3, dim, (1, patch, patch), (1, patch, patch))
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.zeros(1, 1 + frames * n, dim))
        self.blocks = nn.ModuleList([ViTBlock(dim, heads, fused) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
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


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--frames", type=int, nargs="+", default=[8, 16, 32, 64])
    p.add_argument("--videos-per-batch-frames", type=int, default=512,
                   help="batch = this / frames (same batch for every model at a frame count)")
    p.add_argument("--backend", default="cuda", help="VideoMamba scan backend")
    p.add_argument("--json", help="write results here")
    args = p.parse_args(argv)
    import os
    os.environ["VMR_SCAN_BACKEND"] = args.backend
    rows = []
    for T in args.frames:
        B = max(1, args.videos_per_batch_frames // T)
        models = {
            "videomamba_tiny": lambda: create_video_encoder("videomamba_tiny", num_frames=T),
            "vit_ti_materialised": lambda: SpaceTimeViT(T, fused=False),
            "vit_ti_sdpa": lambda: SpaceTimeViT(T, fused=True),
        }
        res = {}
        for name, make in models.items():
            m = make().cuda().eval()
            try:
                res[name] = measure(m, T, B)
            except torch.OutOfMemoryError:
                res[name] = {"videos_per_s": float("nan"), "mem_per_video_mb": float("nan"), "batch": B}
            del m
            torch.cuda.empty_cache()
        rows.append({"frames": T, **{f"{k}": v for k, v in res.items()}})
        vm, mat, sd = res["videomamba_tiny"], res["vit_ti_materialised"], res["vit_ti_sdpa"]
        print(f"T={T:3d} B={B:3d} | VideoMamba-Ti {vm['videos_per_s']:8.1f} v/s {vm['mem_per_video_mb']:8.1f} MB/v"
              f" | ViT-Ti mat {mat['videos_per_s']:8.1f} v/s {mat['mem_per_video_mb']:8.1f} MB/v"
              f" | ViT-Ti SDPA {sd['videos_per_s']:8.1f} v/s {sd['mem_per_video_mb']:8.1f} MB/v"
              f" | speed x{vm['videos_per_s'] / mat['videos_per_s']:.2f} (mat) x{vm['videos_per_s'] / sd['videos_per_s']:.2f} (sdpa)"
              f" | mem 1/{mat['mem_per_video_mb'] / vm['mem_per_video_mb']:.1f} (mat)", flush=True)
    print("\n| frames | batch | VideoMamba-Ti v/s | MB/video | ViT-Ti materialised v/s | MB/video | ViT-Ti SDPA v/s | MB/video | speed vs mat | speed vs SDPA | memory vs mat |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        vm, mat, sd = r["videomamba_tiny"], r["vit_ti_materialised"], r["vit_ti_sdpa"]
        print(f"| {r['frames']} | {vm['batch']} | {vm['videos_per_s']:.1f} | {vm['mem_per_video_mb']:.1f} | "
              f"{mat['videos_per_s']:.1f} | {mat['mem_per_video_mb']:.1f} | {sd['videos_per_s']:.1f} | {sd['mem_per_video_mb']:.1f} | "
              f"{vm['videos_per_s'] / mat['videos_per_s']:.2f}x | {vm['videos_per_s'] / sd['videos_per_s']:.2f}x | "
              f"1/{mat['mem_per_video_mb'] / vm['mem_per_video_mb']:.1f} |")
    print(f"\ndevice: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
