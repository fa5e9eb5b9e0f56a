"""Text side of one search query on CPU: tokenise + encode one caption with a model folder (p50/p99).

The FAISS side is `benchmarks/bench_faiss.py` (realistic clustered vectors, recall-tuned index).
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from retrieval import load_model


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default="app/assets/demo_model")
    p.add_argument("--queries", type=int, default=300)
    p.add_argument("--threads", type=int, default=1, help="torch threads (a server answers queries in parallel)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_model(args.model).eval()
    rng = np.random.default_rng(0)
    words = ["red", "green", "blue", "yellow", "purple", "orange", "circle", "square", "star", "ring",
             "moves left", "grows", "shrinks", "spins", "bounces", "appears", "then", "first", "a", "the"]
    texts = [" ".join(rng.choice(words, 8)) for _ in range(args.queries)]
    times = []
    with torch.no_grad():
        model.encode_text(texts[:5])  # warm-up
        for t in texts:
            start = time.perf_counter()
            model.encode_text([t])
            times.append(time.perf_counter() - start)
    ms = np.asarray(times) * 1e3
    print(f"model {args.model} ({model.config.text.layers}-layer text tower, width {model.config.text.width}), "
          f"{args.threads} thread(s), {args.queries} queries\n")
    print("| part | p50 ms | p99 ms |\n|---|---|---|")
    print(f"| text encoding (one query) | {np.percentile(ms, 50):.2f} | {np.percentile(ms, 99):.2f} |")


if __name__ == "__main__":
    main()
