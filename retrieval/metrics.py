"""Retrieval metrics from a similarity matrix: exact pessimistic ranks -> R@1/5/10, MdR, MnR (CLIP4Clip convention)."""
from __future__ import annotations

from typing import Sequence

import numpy as np

TIE_RULE = "pessimistic: a wrong target scoring equal to the best correct one ranks above it"


def _as_matrix(sim) -> np.ndarray:
    if hasattr(sim, "detach"):  # torch tensor; bf16/fp16 widen exactly to float32
        sim = sim.detach().float().cpu().numpy()
    sim = np.asarray(sim)
    if sim.ndim != 2 or sim.shape[0] == 0 or sim.shape[1] == 0:
        raise ValueError(f"sim must be a non-empty (queries, targets) matrix, got shape {sim.shape}")
    if not np.issubdtype(sim.dtype, np.floating):
        sim = sim.astype(np.float64)
    return sim


def _as_gt(gt, num_queries: int, num_targets: int) -> list[np.ndarray] | None:
    """None (diagonal) or, per query, a non-empty int array of correct target indices."""
    if gt is None:
        if num_queries > num_targets:
            raise ValueError(f"diagonal ground truth needs queries <= targets, got {num_queries} > {num_targets}")
        return None
    if len(gt) != num_queries:
        raise ValueError(f"gt has {len(gt)} entries for {num_queries} queries")
    out = []
    for q, g in enumerate(gt):
        g = np.atleast_1d(np.asarray(g, dtype=np.int64))
        if g.size == 0:
            raise ValueError(f"query {q} has no correct target")
        if g.min() < 0 or g.max() >= num_targets:
            raise ValueError(f"query {q}: target index out of range [0, {num_targets})")
        out.append(g)
    return out


def ranks(sim, gt=None, chunk_size: int = 1024) -> np.ndarray:
    """1-based rank of the best correct target for each query; ties pessimistic (see `TIE_RULE`).

    rank = 1 + number of wrong targets with score >= the best correct target's score. This is exact
    and deterministic; the common `np.where(np.sort(-sim) == -diag)` idiom instead counts ties
    optimistically and can match an equal score of another target. Rows are processed in chunks
    so a (queries x targets) boolean never has to exist in full.
    """
    sim = _as_matrix(sim)
    nq, nt = sim.shape
    if np.isnan(sim).any():
        raise ValueError("sim contains NaN; ranks would be meaningless")
    gts = _as_gt(gt, nq, nt)
    out = np.empty(nq, dtype=np.int64)
    for a in range(0, nq, chunk_size):
        b = min(nq, a + chunk_size)
        block = sim[a:b]  # (c, T)
        rows = np.arange(b - a)
        correct = np.zeros(block.shape, dtype=bool)
        if gts is None:
            correct[rows, np.arange(a, b)] = True
        else:
            qi = np.concatenate([np.full(len(g), r) for r, g in zip(rows, gts[a:b])])
            correct[qi, np.concatenate(gts[a:b])] = True
        best = np.where(correct, block, -np.inf).max(axis=1)  # (c,)
        out[a:b] = 1 + ((block >= best[:, None]) & ~correct).sum(axis=1)
    return out


def metrics_from_ranks(r: np.ndarray, num_targets: int) -> dict:
    """R1/R5/R10 in percent, median and mean rank (1-based), and the counts."""
    r = np.asarray(r)
    return {
        "R1": float(100.0 * np.mean(r <= 1)),
        "R5": float(100.0 * np.mean(r <= 5)),
        "R10": float(100.0 * np.mean(r <= 10)),
        "MdR": float(np.median(r)),
        "MnR": float(np.mean(r)),
        "num_queries": int(r.size),
        "num_targets": int(num_targets),
    }


def retrieval_metrics(sim, gt=None, chunk_size: int = 1024) -> dict:
    """sim: (queries, targets) numpy/torch; gt: per query the correct target index or indices (default: diagonal).

    Returns R1, R5, R10 (percent), MdR, MnR (CLIP4Clip convention, rank 1 = top), num_queries,
    num_targets. With several correct targets a query counts its best-ranked one. Ties are
    pessimistic (`TIE_RULE`).
    """
    sim = _as_matrix(sim)
    return metrics_from_ranks(ranks(sim, gt, chunk_size), sim.shape[1])


def t2v_v2t_metrics(sim_text_video, text_to_video: Sequence[int], chunk_size: int = 1024) -> dict:
    """Both directions from one (texts, videos) matrix: {"t2v": ..., "v2t": ...}.

    text_to_video[t] is the video of text t. Video-to-text counts every text of a video as correct
    (best rank among them), so several captions per video are handled; every video needs a text.
    """
    sim = _as_matrix(sim_text_video)
    nt, nv = sim.shape
    t2v = np.asarray(text_to_video, dtype=np.int64)
    if t2v.shape != (nt,):
        raise ValueError(f"text_to_video has {t2v.size} entries for {nt} texts")
    if nt and (t2v.min() < 0 or t2v.max() >= nv):
        raise ValueError(f"text_to_video index out of range [0, {nv})")
    order = np.argsort(t2v, kind="stable")
    counts = np.bincount(t2v, minlength=nv)
    if (counts == 0).any():
        raise ValueError(f"{int((counts == 0).sum())} video(s) have no text, e.g. index {int(np.argmin(counts))}")
    texts_of_video = np.split(order, np.cumsum(counts)[:-1])
    return {
        "t2v": retrieval_metrics(sim, [[v] for v in t2v], chunk_size),
        "v2t": retrieval_metrics(sim.T, texts_of_video, chunk_size),
    }


def dual_softmax(sim, temperature: float = 100.0) -> np.ndarray:
    """TRANSDUCTIVE re-scoring (CAMoE/CLIP4Clip "DSL"): sim * softmax(temperature * sim) over the query axis.

    It uses every test query at once (a prior from the whole query set), so its numbers are not
    comparable with plain similarity results and it is never applied by default. For (queries,
    targets) input the softmax runs over queries (axis 0); pass `sim.T` for the other direction.
    """
    sim = _as_matrix(sim).astype(np.float64)
    logits = temperature * sim
    logits -= logits.max(axis=0, keepdims=True)
    prior = np.exp(logits)
    prior /= prior.sum(axis=0, keepdims=True)
    return sim * prior
