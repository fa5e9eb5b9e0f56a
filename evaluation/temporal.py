"""Temporal two-way score: for each video of a time-twin pair, is its own caption ranked above its twin's caption?

The synthetic `temporal` split pairs videos that differ only in time (`pair_kind` "reverse": the same scene
played backwards; "order": the same two events in swapped order); each record names its `twin` and
`twin_caption`. A model that ignores frame order can only guess, so chance is 50%.

Scoring (cosine of L2-normalised embeddings, as retrieval uses): a video scores 1 when
cos(video, own caption) > cos(video, twin caption), 0 when lower, and 1/2 on a tie (|difference| <= TIE_EPS),
so a model that gives both captions the same score sits exactly at chance. `t2v_accuracy` asks the same
question from the caption's side (own video above the twin video); there an order-blind model, whose twin
videos embed identically, ties on every caption.

Order-blind baseline (order="shuffled"): each clip is encoded under `permutations` seeded random frame orders
(uniform over all T! orders) and the embeddings are averaged and re-normalised. Averaging over orders
estimates the model's order-marginalised embedding, which is the same for a clip and its time-reversed twin,
so the score then shows what the model gets from frame content alone; permutations=1 is the single-shuffle
variant (noisier, same expectation).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from retrieval.errors import VmrError

TIE_EPS = 1e-6        # cosine differences this small count as ties (float noise between batches)
ORDERS = ("true", "shuffled")
KINDS = ("reverse", "order")
DEFAULT_PERMUTATIONS = 8


class TemporalError(VmrError, ValueError):
    """The annotation file or videos cannot give a temporal score."""


@dataclass
class TwinVideo:
    video: str          # file name relative to the videos folder
    caption: str
    twin: str
    twin_caption: str
    pair: str
    kind: str           # "reverse" | "order"
    file: Path | None = None


def load_pairs(anno_path, videos_dir) -> list[TwinVideo]:
    """Records that carry a twin (temporal split), with their files; raises TemporalError when unusable."""
    anno_path, videos_dir = Path(anno_path), Path(videos_dir)
    try:
        records = json.loads(anno_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise TemporalError(f"cannot read {anno_path}: {e}") from None
    if not isinstance(records, list):
        raise TemporalError(f"{anno_path}: expected a JSON list of records (vmr synth --split temporal)")
    items = []
    for r in records:
        if not isinstance(r, dict) or "pair" not in r:
            continue
        caption = r.get("caption")
        if isinstance(caption, list):  # one caption per temporal video; take the first if a list slipped in
            caption = caption[0] if caption else None
        missing = [k for k in ("video", "twin", "twin_caption") if not r.get(k)] + ([] if caption else ["caption"])
        if missing:
            raise TemporalError(f"{anno_path}: record {r.get('video')!r} of pair {r['pair']!r} lacks {missing}")
        items.append(TwinVideo(r["video"], caption, r["twin"], r["twin_caption"], str(r["pair"]),
                               str(r.get("pair_kind") or "unknown"), videos_dir / r["video"]))
    if not items:
        raise TemporalError(f"{anno_path} has no records with a `pair` (make them with "
                            "`vmr synth --split temporal`)")
    absent = [it.video for it in items if not it.file.is_file()]
    if absent:
        raise TemporalError(f"{len(absent)} videos of {anno_path} are missing under {videos_dir} "
                            f"(first: {absent[0]})")
    return items


def frame_orders(num_frames: int, order: str, seed: int, index: int, permutations: int) -> list[np.ndarray]:
    """Frame orders to encode clip number `index` under: the identity, or seeded random permutations."""
    if order == "true":
        return [np.arange(num_frames)]
    if order != "shuffled":
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    if permutations < 1:
        raise ValueError(f"permutations must be >= 1, got {permutations}")
    rng = np.random.default_rng([int(seed), int(index)])  # per clip, so a clip's orders don't depend on the others
    return [rng.permutation(num_frames) for _ in range(permutations)]


def clip_embeddings(model, items: list[TwinVideo], num_frames: int, order: str = "true", seed: int = 0,
                    permutations: int = DEFAULT_PERMUTATIONS, batch_size: int = 16,
                    progress: bool = False) -> np.ndarray:
    """(N, E) float32 L2-normalised video embeddings, each averaged over its frame orders."""
    import torch
    from tqdm import tqdm

    from retrieval.data.transforms import frames_to_tensor
    from retrieval.data.video import VideoError, read_frames
    from retrieval.inference import encode_clips

    video_cfg = model.config.video
    size = int(video_cfg.img_size)
    mean, std = getattr(video_cfg, "mean", None), getattr(video_cfg, "std", None)
    norm = {} if mean is None or std is None else {"mean": mean, "std": std}
    views: list[torch.Tensor] = []   # (3, T, H, W) each: every clip under every order
    owner: list[int] = []            # clip index of each view
    sums: np.ndarray | None = None

    def flush():
        nonlocal sums
        (emb,) = encode_clips(model, [torch.stack(views)])
        emb = emb.cpu().numpy()
        if sums is None:
            sums = np.zeros((len(items), emb.shape[1]), np.float64)
        np.add.at(sums, np.asarray(owner), emb)
        views.clear()
        owner.clear()

    for i, it in enumerate(tqdm(items, desc=f"temporal ({order})", unit="video", disable=not progress)):
        try:
            clip = frames_to_tensor(read_frames(it.file, num_frames, mode="middle"), size, **norm)  # (3, T, H, W)
        except VideoError as e:
            raise TemporalError(f"cannot read {it.file}: {e}") from None
        for perm in frame_orders(num_frames, order, seed, i, permutations):
            views.append(clip[:, torch.as_tensor(perm)])
            owner.append(i)
            if len(views) >= batch_size:
                flush()
    if views:
        flush()
    if sums is None:  # no clips
        return np.zeros((0, 0), np.float32)
    return (sums / np.linalg.norm(sums, axis=1, keepdims=True).clip(1e-12)).astype(np.float32)


def _wins(own: np.ndarray, other: np.ndarray) -> np.ndarray:
    """1 where own > other, 0 where lower, 1/2 on a tie."""
    diff = own.astype(np.float64) - other.astype(np.float64)
    return np.where(np.abs(diff) <= TIE_EPS, 0.5, (diff > 0).astype(np.float64))


def _by_kind(wins: np.ndarray, kinds: list[str]) -> dict:
    """Accuracy per pair kind, known kinds first in KINDS order."""
    kinds_arr = np.asarray(kinds)
    order = sorted(set(kinds), key=lambda k: (KINDS.index(k) if k in KINDS else len(KINDS), k))
    return {k: float(wins[kinds_arr == k].mean()) for k in order}


def two_way_scores(video_emb: np.ndarray, caption_emb: np.ndarray, items: list[TwinVideo]) -> dict:
    """The score from embeddings: video_emb (N, E) and caption_emb (N, E) rows in `items` order."""
    row = {it.video: i for i, it in enumerate(items)}
    missing = [it.twin for it in items if it.twin not in row]
    if missing:
        raise TemporalError(f"twins missing from the annotations: {missing[:5]}")
    twin = np.asarray([row[it.twin] for it in items])
    own_v2t = np.einsum("ne,ne->n", video_emb, caption_emb)            # cos(video, own caption)
    twin_v2t = np.einsum("ne,ne->n", video_emb, caption_emb[twin])     # cos(video, twin caption)
    twin_t2v = np.einsum("ne,ne->n", video_emb[twin], caption_emb)     # cos(twin video, own caption)
    v2t, t2v = _wins(own_v2t, twin_v2t), _wins(own_v2t, twin_t2v)
    kinds = [it.kind for it in items]
    return {"accuracy": float(v2t.mean()), "n_pairs": len({it.pair for it in items}), "n_videos": len(items),
            "per_kind": _by_kind(v2t, kinds), "ties": int((v2t == 0.5).sum()),
            "t2v_accuracy": float(t2v.mean()), "t2v_per_kind": _by_kind(t2v, kinds),
            "t2v_ties": int((t2v == 0.5).sum())}


def temporal_two_way(model, anno_path, videos_dir, frames: int | None = None, order: str = "true", seed: int = 0,
                     permutations: int = DEFAULT_PERMUTATIONS, batch_size: int = 16, progress: bool = False) -> dict:
    """Two-way temporal accuracy of `model` on a temporal-split annotation file (chance 0.5).

    Returns accuracy, n_pairs, n_videos, per_kind {reverse, order}, ties, the caption-side t2v_*
    counterparts, and the settings (order, frames, permutations, seed).
    """
    from retrieval.inference import encode_texts

    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    items = load_pairs(anno_path, videos_dir)
    num_frames = int(frames or model.config.video.num_frames)
    video_emb = clip_embeddings(model, items, num_frames, order, seed, permutations, batch_size, progress)
    result = two_way_scores(video_emb, encode_texts(model, [it.caption for it in items]), items)
    result.update(order=order, frames=num_frames, seed=seed,
                  permutations=permutations if order == "shuffled" else 1)
    return result


def format_table(results: list[dict]) -> str:
    """Markdown table, one row per result (e.g. true order, then the order-blind baseline)."""
    kinds = [k for k in KINDS if any(k in r["per_kind"] for r in results)]
    head = ["frame order", "video->caption", *[f"{k} pairs" for k in kinds], "caption->video", "ties",
            "videos (pairs)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        what = "true order" if r["order"] == "true" else f"shuffled, mean of {r['permutations']} orders"
        cells = [what, f"{100 * r['accuracy']:.1f}%"]
        cells += [f"{100 * r['per_kind'][k]:.1f}%" if k in r["per_kind"] else "-" for k in kinds]
        cells += [f"{100 * r['t2v_accuracy']:.1f}%", f"{r['ties']} / {r['t2v_ties']}",
                  f"{r['n_videos']} ({r['n_pairs']})"]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append(f"\nchance is 50.0%; {results[0]['frames']} frames per clip; a tie counts as half.")
    return "\n".join(lines)
