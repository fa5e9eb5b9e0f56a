"""FAISS search latency and recall at library scale, with the index type `vmr index build` would pick.

    python benchmarks/bench_faiss.py                 # 1M and 100k x 512-d (needs ~6 GB RAM, a few minutes)
    python benchmarks/bench_faiss.py --n 200000      # smaller

Synthetic embeddings, clustered the way real video embeddings are rather than uniform on the sphere:
  * a shared mean direction (embeddings of one model sit in a narrow cone: random pairs have cosine ~0.3),
  * 2,048 topics with Zipf-distributed popularity (a few subjects dominate a library),
  * videos drawn around their topic, and 8 segments per video drawn tightly around their video (consecutive
    segments of one video are near-duplicates),
all L2-normalised. Queries are fresh videos from the same generator (held out: never in the index), so
"recall@10" is the overlap of the FAISS top-10 with the exact top-10 over the whole library.

Latency is one query per call (what the app does), timed around `index.search` only, after warm-up.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from index import ann  # noqa: E402 - the same choice/build/tune code as `vmr index build`


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


class Generator:
    """Mean direction -> topics -> videos -> segments; see the module docstring."""

    def __init__(self, dim: int, topics: int = 2048, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.dim = dim
        mean = _unit(self.rng.normal(size=dim))
        self.topics = _unit(0.65 * mean + _unit(self.rng.normal(size=(topics, dim))))
        weights = 1.0 / np.arange(1, topics + 1) ** 0.8
        self.p = weights / weights.sum()

    def _noise(self, n: int, scale: float) -> np.ndarray:
        return scale * _unit(self.rng.normal(size=(n, self.dim)))

    def videos(self, n: int) -> np.ndarray:
        topic = self.rng.choice(len(self.topics), size=n, p=self.p)
        return _unit(self.topics[topic] + self._noise(n, 0.9))

    def segments(self, n: int, per_video: int = 8, chunk: int = 1 << 17) -> np.ndarray:
        out = np.empty((n, self.dim), np.float32)
        for start in range(0, n, chunk):
            m = min(chunk, n - start)
            vid = self.videos((m + per_video - 1) // per_video)
            out[start:start + m] = _unit(np.repeat(vid, per_video, axis=0)[:m] + self._noise(m, 0.35))
        return out

    def queries(self, n: int) -> np.ndarray:
        return _unit(self.videos(n) + self._noise(n, 0.35)).astype(np.float32)


def latency_ms(index, queries: np.ndarray, k: int = 10, warmup: int = 20) -> np.ndarray:
    for q in queries[:warmup]:
        ann.search(index, q[None], k)
    times = np.empty(len(queries))
    for i, q in enumerate(queries):
        t0 = time.perf_counter()
        ann.search(index, q[None], k)  # as the Searcher calls it (one OpenMP thread for one query)
        times[i] = (time.perf_counter() - t0) * 1e3
    return times


def recall_at_k(index, queries, truth: np.ndarray, k: int = 10) -> float:
    _, got = index.search(queries, k)
    return float(np.mean([len(set(g) & set(t)) / k for g, t in zip(got, truth)]))


def run_case(name: str, vectors: np.ndarray, queries: np.ndarray, truth: np.ndarray, spec: ann.IndexSpec,
             target: float, per_video: int) -> dict:
    ids = np.arange(len(vectors), dtype=np.int64)
    t0 = time.perf_counter()
    index = ann.build_index(spec, vectors, ids)
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    groups = ids // per_video  # the video of each segment, as `vmr index build` passes file ids
    tuning = ann.tune(index, spec, vectors, ids, target=target, groups=groups,  # exactly as at build time
                      train_rows=ann.training_rows(len(ids), spec))
    tune_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as d:
        size = ann.write_index(index, os.path.join(d, "x.faiss"))
    lat = latency_ms(index, queries)
    row = {"case": name, "n": len(vectors), "index": spec.factory(), "nprobe": tuning.get("nprobe") or "-",
           "recall_build": tuning["recall_at_10"], "recall_queries": recall_at_k(index, queries, truth),
           "p50": np.percentile(lat, 50), "p99": np.percentile(lat, 99), "build_s": build_s, "tune_s": tune_s,
           "mib": size / 2**20}
    print(f"  {name}: {row}", file=sys.stderr, flush=True)
    return row


def exact_truth(vectors, queries, k=10):
    import faiss

    _, truth = faiss.knn(queries, vectors, k, metric=faiss.METRIC_INNER_PRODUCT)
    return truth


def exact_latency_ms(vectors, queries) -> np.ndarray:
    """Brute force without an index copy: what exact search costs at this size."""
    import faiss

    return latency_ms(type("Flat", (), {"search": staticmethod(
        lambda q, k: faiss.knn(q, vectors, k, metric=faiss.METRIC_INNER_PRODUCT))})(), queries, warmup=3)


def main(argv=None) -> int:
    import faiss

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--small", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--target-recall", type=float, default=ann.TARGET_RECALL)
    p.add_argument("--small-budget", type=lambda s: int(float(s) * 2**30), default=1 << 29,
                   help="GiB; also run the type chosen under this smaller memory budget (0 = skip)")
    p.add_argument("--per-video", type=int, default=8, help="segments per synthetic video")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    print(f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads, {os.cpu_count()} cores",
          file=sys.stderr)
    gen = Generator(args.dim, seed=args.seed)
    t0 = time.perf_counter()
    big = gen.segments(args.n, args.per_video)
    queries = gen.queries(args.queries)
    print(f"generated {args.n} x {args.dim} in {time.perf_counter() - t0:.1f}s; "
          f"mean cosine of random pairs {np.mean(np.sum(big[:2000] * big[2000:4000], 1)):.2f}, "
          f"query-to-top1 {np.mean(np.max(queries[:100] @ big[:200_000].T, 1)):.2f}", file=sys.stderr)
    rows = []
    truth = exact_truth(big, queries)
    spec = ann.choose_index(args.n, args.dim)
    rows.append(run_case("large, chosen", big, queries, truth, spec, args.target_recall, args.per_video))
    if args.small_budget:
        spec_small_budget = ann.choose_index(args.n, args.dim, memory_budget=args.small_budget)
        if spec_small_budget != spec:
            rows.append(run_case(f"large, {args.small_budget / 2**30:g} GiB budget", big, queries, truth,
                                 spec_small_budget, args.target_recall, args.per_video))
    lat = exact_latency_ms(big, queries[:50])
    rows.append({"case": "large, exact brute force", "n": args.n, "index": "knn (no index)", "nprobe": "-",
                 "recall_build": 1.0, "recall_queries": 1.0, "p50": np.percentile(lat, 50),
                 "p99": np.percentile(lat, 99), "build_s": 0.0, "tune_s": 0.0, "mib": big.nbytes / 2**20})
    small = big[: args.small]
    del big
    truth = exact_truth(small, queries)
    rows.append(run_case("small, exact Flat", small, queries, truth, ann.IndexSpec("flat"), args.target_recall,
                         args.per_video))
    spec = ann.choose_index(args.small, args.dim)
    if spec.kind != "flat":
        rows.append(run_case("small, chosen", small, queries, truth, spec, args.target_recall, args.per_video))

    print("\n| case | vectors | FAISS index | nprobe | recall@10 measured at build | recall@10 new queries | "
          "p50 ms | p99 ms | build s | tune s | size MiB |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['case']} | {r['n']:,} | `{r['index']}` | {r['nprobe']} | {r['recall_build']:.3f} | "
              f"{r['recall_queries']:.3f} | {r['p50']:.2f} | {r['p99']:.2f} | {r['build_s']:.1f} | "
              f"{r['tune_s']:.1f} | {r['mib']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
