"""One text query end to end on CPU: text encoding with a model folder + FAISS search over N synthetic vectors."""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from retrieval import load_model


def percentile_ms(times, q):
    return float(np.percentile(np.asarray(times) * 1e3, q))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default="app/assets/demo_model")
    p.add_argument("--vectors", type=int, default=1_000_000)
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--threads", type=int, default=1, help="torch/FAISS threads for a single query")
    args = p.parse_args(argv)
    import faiss

    from index.ann import build_index, choose_index, search, tune  # what `vmr index build` does

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    model = load_model(args.model).eval()
    rng = np.random.default_rng(0)
    dim = model.config.embed_dim
    centres = rng.standard_normal((2048, dim)).astype(np.float32)
    x = centres[rng.integers(0, 2048, args.vectors)] + 0.5 * rng.standard_normal((args.vectors, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    t0 = time.perf_counter()
    ids = np.arange(args.vectors, dtype=np.int64)
    spec = choose_index(args.vectors, dim)
    index = build_index(spec, x, ids)
    tuned = tune(index, spec, x, ids)
    build_s = time.perf_counter() - t0
    words = ["red", "green", "blue", "yellow", "purple", "orange", "circle", "square", "star", "ring",
             "moves left", "grows", "shrinks", "spins", "bounces", "appears", "then", "first"]
    texts = [" ".join(rng.choice(words, 6)) for _ in range(args.queries)]
    t_enc, t_search, t_total = [], [], []
    with torch.no_grad():
        model.encode_text(texts[:5])  # warm-up
        for t in texts:
            a = time.perf_counter()
            q = model.encode_text([t]).numpy().astype(np.float32)
            b = time.perf_counter()
            search(index, q, 10)
            c = time.perf_counter()
            t_enc.append(b - a), t_search.append(c - b), t_total.append(c - a)
    print(f"{args.vectors} vectors x {dim}, index {spec.factory()} (nprobe {tuned['nprobe']}, recall@10 "
          f"{tuned['recall_at_10']}), built + tuned in {build_s:.1f}s, {args.threads} thread(s)\n")
    print("| part | p50 ms | p99 ms |")
    print("|---|---|---|")
    for name, ts in (("text encoding", t_enc), ("FAISS search (k=10)", t_search), ("total", t_total)):
        print(f"| {name} | {percentile_ms(ts, 50):.2f} | {percentile_ms(ts, 99):.2f} |")


if __name__ == "__main__":
    main()
