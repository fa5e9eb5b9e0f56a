"""FAISS side: choose an index type for a library size and memory budget, build it, tune it to a measured recall.

Rule (`choose_index`), all inner product on L2-normalised vectors:
  * exact `IDMap2,Flat` while a brute-force scan stays small (n * dim <= 2**25 values: 65,536 vectors at
    512-d, ~128 MB scanned per query);
  * beyond that IVF with nlist = the power of two nearest sqrt(n) (1,024 lists at 1M vectors), with codes
    chosen by the memory budget: `SQfp16` (2 bytes a dimension: the embeddings are stored as float16 anyway,
    so nothing is lost, and scanning half the bytes of float32 made it 2x faster at 1M), then `SQ8`, then `PQ`.
    IVF rather than HNSW because FAISS's HNSW cannot remove vectors, while IVF supports `remove_ids` and cheap
    adds (`vmr index add/remove` patch the index instead of rebuilding it), and trains fast (IVF1024 over 1M
    512-d vectors: 16 s on 2 cores, benchmarks/bench_faiss.py).
`tune` then raises nprobe until recall@10 against exact search, measured at build time on held-out stored
vectors (videos k-means never saw; their own video's other segments excluded), reaches the target with 95%
confidence, and returns the measurement so it is stored in the index's info.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

import numpy as np

from retrieval.io import atomic_write

from .errors import IndexCorruptError

log = logging.getLogger(__name__)

FLAT_MAX_ELEMENTS = 1 << 25
DEFAULT_MEMORY_BUDGET = 4 << 30
TARGET_RECALL = 0.95
_CHUNK = 1 << 16  # rows converted to float32 at a time: bounds peak memory when vectors are float16 shards


@dataclass(frozen=True)
class IndexSpec:
    """Which FAISS index to build: kind in {flat, ivf_flat, ivf_fp16, ivf_sq8, ivf_pq}, IVF list count, PQ bytes."""
    kind: str
    nlist: int = 0
    pq_m: int = 0

    def factory(self) -> str:
        return {"flat": "IDMap2,Flat",  # Flat has no ids of its own; IDMap2 adds stable int64 ids + reconstruct
                "ivf_flat": f"IVF{self.nlist},Flat",  # IVF stores ids natively and removes by id
                "ivf_fp16": f"IVF{self.nlist},SQfp16",
                "ivf_sq8": f"IVF{self.nlist},SQ8",
                "ivf_pq": f"IVF{self.nlist},PQ{self.pq_m}x8"}[self.kind]

    def bytes_per_vector(self, dim: int) -> int:
        code = {"flat": 4 * dim, "ivf_flat": 4 * dim, "ivf_fp16": 2 * dim, "ivf_sq8": dim,
                "ivf_pq": self.pq_m}[self.kind]
        return code + 8  # + the int64 id


def ivf_nlist(n: int) -> int:
    """Power of two nearest sqrt(n), with >= 39 training points per list (FAISS's k-means minimum)."""
    nlist = 2 ** int(round(np.log2(max(np.sqrt(n), 1))))
    while nlist > 16 and n < 39 * nlist:
        nlist //= 2
    return int(min(max(nlist, 16), 1 << 16))


def choose_index(n: int, dim: int, memory_budget: int = DEFAULT_MEMORY_BUDGET,
                 flat_max_elements: int | None = None) -> IndexSpec:
    """The index for `n` vectors of `dim` within `memory_budget` bytes (see the module docstring)."""
    flat_max = FLAT_MAX_ELEMENTS if flat_max_elements is None else flat_max_elements
    if n * dim <= flat_max or n < 39 * 16:  # IVF needs >= 39 training points for each of >= 16 lists
        return IndexSpec("flat")
    nlist = ivf_nlist(n)
    for spec in (IndexSpec("ivf_fp16", nlist), IndexSpec("ivf_sq8", nlist)):
        if n * spec.bytes_per_vector(dim) <= memory_budget:
            return spec
    ms = [m for m in (64, 48, 32, 16, 8) if dim % m == 0] or [1]
    fitting = [m for m in ms if n * (m + 8) <= memory_budget]
    return IndexSpec("ivf_pq", nlist, fitting[0] if fitting else ms[-1])


def _as_f32(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32)


def training_rows(n: int, spec: IndexSpec, seed: int = 0) -> np.ndarray:
    """Sorted rows k-means trains on: 64 per list (FAISS wants >= 39), enough 256-code PQ training for PQ."""
    if spec.kind == "flat":
        return np.zeros(0, np.int64)
    want = 64 * spec.nlist if spec.kind != "ivf_pq" else max(64 * spec.nlist, 39 * 256)
    return np.sort(np.random.default_rng(seed).choice(n, size=min(n, want), replace=False))


def build_index(spec: IndexSpec, vectors: np.ndarray, ids: np.ndarray, seed: int = 0):
    """A trained FAISS index holding `vectors` (n, dim) under int64 `ids` (n,)."""
    import faiss

    n, dim = vectors.shape
    index = faiss.index_factory(dim, spec.factory(), faiss.METRIC_INNER_PRODUCT)
    if spec.kind != "flat":
        ivf = faiss.extract_index_ivf(index)
        ivf.cp.seed, ivf.cp.niter = seed, 20  # 20 k-means rounds: converged enough for routing, ~25% faster
        sample = training_rows(n, spec, seed)
        if faiss.get_num_gpus() > 0:  # k-means on the GPU; the index itself stays on the CPU for saving
            try:
                ivf.clustering_index = faiss.index_cpu_to_all_gpus(faiss.IndexFlatIP(dim))
            except Exception as e:  # pragma: no cover - GPU hosts only
                log.warning("GPU k-means unavailable (%s); training on CPU", e)
        index.train(_as_f32(vectors[sample]))
    add_vectors(index, vectors, ids)
    return index


def add_vectors(index, vectors: np.ndarray, ids: np.ndarray) -> None:
    for i in range(0, len(ids), _CHUNK):
        index.add_with_ids(_as_f32(vectors[i:i + _CHUNK]), np.ascontiguousarray(ids[i:i + _CHUNK], np.int64))


def remove_ids(index, ids) -> int:
    import faiss

    ids = np.ascontiguousarray(np.asarray(ids, np.int64))
    return int(index.remove_ids(faiss.IDSelectorBatch(ids))) if len(ids) else 0


def set_nprobe(index, nprobe: int | None) -> None:
    import faiss

    if nprobe:
        faiss.extract_index_ivf(index).nprobe = int(nprobe)


def exact_knn(queries: np.ndarray, vectors: np.ndarray, k: int, query_groups: np.ndarray | None = None,
              groups: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force top-k inner product (scores, row numbers), streamed over `vectors` in chunks; with groups,
    rows of a query's own group are left out."""
    q = _as_f32(queries)
    best_s = np.full((len(q), k), -np.inf, np.float32)
    best_i = np.full((len(q), k), -1, np.int64)
    for start in range(0, len(vectors), _CHUNK):
        s = q @ _as_f32(vectors[start:start + _CHUNK]).T
        if groups is not None:
            s[query_groups[:, None] == groups[None, start:start + s.shape[1]]] = -np.inf
        cand_s = np.concatenate([best_s, s], axis=1)
        cand_i = np.concatenate([best_i, np.arange(start, start + s.shape[1])[None].repeat(len(q), 0)], axis=1)
        top = np.argpartition(-cand_s, min(k, cand_s.shape[1] - 1), axis=1)[:, :k]
        best_s, best_i = np.take_along_axis(cand_s, top, 1), np.take_along_axis(cand_i, top, 1)
    order = np.argsort(-best_s, axis=1)
    return np.take_along_axis(best_s, order, 1), np.take_along_axis(best_i, order, 1)


MAX_GROUP = 1024  # queries from larger groups (hour-long videos) are not sampled: excluding them costs a huge k


def measure_recall(index, vectors: np.ndarray, ids: np.ndarray, nprobe: int | None = None, k: int = 10,
                   n_queries: int = 400, seed: int = 0, groups: np.ndarray | None = None,
                   train_rows: np.ndarray | None = None, _cache: dict | None = None, per_query: bool = False):
    """recall@k of `index` against exact search, with held-out stored vectors as queries.

    Stored vectors make optimistic queries in two ways, both removed here:
      * their nearest neighbours are the other segments of the same video, all in the same IVF cell: each
        query's own group (`groups`, e.g. the file of each vector; default: the vector alone) is left out of
        both result lists, so we measure how well the index finds the *other* videos, as a text query must;
      * k-means fitted its centroids to the training sample (`train_rows`): queries come only from groups with
        no member in it (measured at 100k vectors: 0.958 for in-sample queries vs 0.932 for fresh ones, at the
        same nprobe; fresh ones matched truly new queries, 0.934).
    A returned neighbour counts as correct when its true score reaches the exact k-th best score: plain id
    overlap would punish ties, and real libraries are full of them (static shots give identical segments).
    Returns the mean, or with `per_query` each query's recall.
    """
    cache = _cache if _cache is not None else {}
    if "q" not in cache:
        n = len(ids)
        groups = np.arange(n) if groups is None else np.asarray(groups)
        _, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
        size = counts[inverse]
        ok = (size <= MAX_GROUP) & (n - size >= k)
        fresh = ok.copy()
        if train_rows is not None and len(train_rows):
            fresh &= ~np.isin(inverse, inverse[train_rows])
        held_out = int(fresh.sum()) >= min(n_queries, 50)  # else (tiny libraries) settle for in-sample queries
        eligible = np.flatnonzero(fresh if held_out else ok)
        rng = np.random.default_rng(seed)
        rows = np.sort(rng.choice(eligible, size=min(n_queries, len(eligible)), replace=False))
        q = _as_f32(vectors[rows])
        gt_s, _ = exact_knn(q, vectors, k, inverse[rows], inverse)
        order = np.argsort(ids)
        cache.update(q=q, rows=rows, kth=gt_s[:, k - 1], order=order, sorted_ids=ids[order], group=inverse,
                     extra=int(size[rows].max()) if len(rows) else 0, held_out=held_out)
    q, rows, kth, group = cache["q"], cache["rows"], cache["kth"], cache["group"]
    if not len(rows):
        return np.ones(1) if per_query else 1.0
    set_nprobe(index, nprobe)
    _, found = search(index, q, k + cache["extra"])
    recall = np.zeros(len(q))
    for qi in range(len(q)):
        got = found[qi][found[qi] >= 0]
        pos = cache["order"][np.searchsorted(cache["sorted_ids"], got)]
        pos = pos[group[pos] != group[rows[qi]]][:k]
        true = _as_f32(vectors[pos]) @ q[qi]
        recall[qi] = (true >= kth[qi] - 1e-4).sum() / k
    return recall if per_query else float(recall.mean())


NPROBES = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)  # ~1.4x apart


def tune(index, spec: IndexSpec, vectors: np.ndarray, ids: np.ndarray, target: float = TARGET_RECALL,
         k: int = 10, n_queries: int = 400, seed: int = 0, groups: np.ndarray | None = None,
         train_rows: np.ndarray | None = None) -> dict:
    """Smallest nprobe whose measured recall@k reaches `target` with 95% confidence (the one-sided lower bound
    of the mean over the sampled queries); returns what to store in the index info."""
    t0 = time.perf_counter()
    if spec.kind == "flat":
        return {"nprobe": None, "recall_at_10": 1.0, "exact": True, "tuned_at_n": int(len(ids))}
    cache: dict = {}
    tried = {}
    candidates = [p for p in NPROBES if p < spec.nlist] + [spec.nlist]
    for nprobe in candidates:
        per_query = measure_recall(index, vectors, ids, nprobe, k, n_queries, seed, groups, train_rows, cache,
                                   per_query=True)
        recall = float(per_query.mean())
        spread = float(per_query.std(ddof=1) / np.sqrt(len(per_query))) if len(per_query) > 1 else 0.0
        lower = recall - 1.645 * spread
        tried[nprobe] = round(recall, 4)
        if lower >= target:
            break
    else:  # quantisation error bounds recall even when every list is scanned
        log.warning("index %s reaches recall@%d=%.3f < %.2f even at nprobe=nlist", spec.factory(), k, recall, target)
    set_nprobe(index, nprobe)
    return {"nprobe": nprobe, "recall_at_10": round(recall, 4), "recall_lower_95": round(lower, 4),
            "exact": False, "target_recall": target, "recall_queries": int(len(cache["q"])),
            "recall_excludes": "same file" if groups is not None else "self",
            "recall_queries_held_out": bool(cache.get("held_out")), "nprobe_sweep": tried,
            "tuned_at_n": int(len(ids)), "tune_seconds": round(time.perf_counter() - t0, 2)}


def _threads_for(nq: int) -> int:
    # A single query gains nothing from a second OpenMP thread, and on a busy small machine the thread team's
    # barrier costs 10x the search itself (measured: 1.5 ms with 1 thread vs 28 ms with 2 on a loaded 2-core box).
    return 1 if nq < 8 else int(os.environ.get("OMP_NUM_THREADS", 0)) or (os.cpu_count() or 1)


def search(index, queries: np.ndarray, k: int):
    """index.search with a thread count suited to the batch size; sets it for the calling thread only."""
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(_threads_for(len(queries)))  # OpenMP keeps this per calling thread
    try:
        return index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
    finally:
        faiss.omp_set_num_threads(before)  # training and adding in this thread keep all cores


def spec_of(index) -> IndexSpec:
    """Recover the IndexSpec of a loaded index (so updates know whether they can patch it in place)."""
    import faiss

    try:
        ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
    except RuntimeError:
        return IndexSpec("flat")
    if isinstance(ivf, faiss.IndexIVFPQ):
        return IndexSpec("ivf_pq", ivf.nlist, ivf.pq.M)
    if isinstance(ivf, faiss.IndexIVFScalarQuantizer):
        return IndexSpec("ivf_fp16" if ivf.sq.qtype == faiss.ScalarQuantizer.QT_fp16 else "ivf_sq8", ivf.nlist)
    return IndexSpec("ivf_flat", ivf.nlist)


def write_index(index, path: str) -> int:
    """Write atomically, durable with its name: the SQLite commit that names the file comes next. Returns bytes."""
    import faiss

    atomic_write(path, lambda tmp: faiss.write_index(index, str(tmp)), durable="full")
    return os.path.getsize(path)


def read_index(path: str, expected_bytes: int | None = None):
    """Load a FAISS index; a missing, truncated or unparsable file raises IndexCorruptError naming it."""
    import faiss

    if not os.path.isfile(path):
        raise IndexCorruptError(f"FAISS index file missing: {path}")
    size = os.path.getsize(path)
    if expected_bytes is not None and size != expected_bytes:
        # checked before FAISS parses it: a truncated file must not reach the C++ reader
        raise IndexCorruptError(f"FAISS index file {path} is {size} bytes, expected {expected_bytes}: "
                                "it was truncated or overwritten")
    try:
        return faiss.read_index(path)
    except Exception as e:
        raise IndexCorruptError(f"cannot read FAISS index {path}: {e}".splitlines()[0]) from e


def to_gpu(index):
    """Move an index to all GPUs when FAISS has any (faiss-gpu build); otherwise return it unchanged."""
    import faiss

    if faiss.get_num_gpus() <= 0:
        return index
    try:  # pragma: no cover - GPU hosts only
        return faiss.index_cpu_to_all_gpus(index)
    except Exception as e:  # pragma: no cover - e.g. PQ sizes the GPU kernels lack
        log.warning("keeping FAISS index on CPU: %s", e)
        return index
