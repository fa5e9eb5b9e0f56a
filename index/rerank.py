"""Re-rank text-search hits with a model's video-text matching (ITM) head: re-decode each hit's clip, fuse, re-score."""
from __future__ import annotations

import dataclasses
from typing import Callable

import torch

from retrieval.errors import UsageError

from .searcher import Hit


def supports_rerank(model) -> bool:
    return bool(getattr(model, "has_itm", False))


@torch.no_grad()
def rerank_hits(searcher, query: str, hits: list[Hit], k: int, batch_size: int = 8,
                progress: Callable[[int], object] | None = None) -> list[Hit]:
    """The first `k` hits re-scored by `itm_head` (raw logit) and re-sorted, the rest after them in their order,
    as the release's evaluation does (everything outside the top k scores -100 there). Each re-ranked hit's
    `score` becomes its ITM logit; `segments[0].score` keeps the similarity. Frames are read from the hit's
    segment the way the model's evaluation reads them."""
    from retrieval.data.transforms import frames_to_tensor
    from retrieval.data.video import read_frames
    from retrieval.inference import device_of, encode_clips

    model = searcher.model
    if not supports_rerank(model):
        raise UsageError("this index's model has no video-text matching (ITM) head, so it cannot re-rank; "
                         "build the index with the release's multimodal model (vmr convert) or drop --rerank")
    if k < 1:
        raise UsageError(f"--rerank must be >= 1, got {k}")
    top, rest = hits[:k], hits[k:]
    if not top:
        return hits
    cfg = model.config.video

    def clips():  # (batch_size, 3, T, H, W) at a time
        for a in range(0, len(top), batch_size):
            yield torch.stack([frames_to_tensor(
                read_frames(searcher.media_path(hit), int(cfg.num_frames), "middle", hit.start, hit.end),
                int(cfg.img_size), cfg.mean, cfg.std, crop=getattr(model, "eval_crop", True),
                mode=getattr(model, "eval_resize_mode", "bilinear")) for hit in top[a:a + batch_size]])

    text = searcher.clean_query(query)
    with searcher._model_lock:  # one forward at a time, as Searcher.encode
        states, mask = model.text_states([text])
        scores = []
        for _, tokens in encode_clips(model, clips(), device_of(model), tokens=True):
            n = tokens.shape[0]
            scores += model.itm_scores(states.expand(n, -1, -1), mask.expand(n, -1), tokens).float().cpu().tolist()
            if progress is not None:
                progress(n)
    order = sorted(range(len(top)), key=lambda i: -scores[i])
    ranked = [dataclasses.replace(top[i], score=float(scores[i])) for i in order] + rest
    return [dataclasses.replace(h, rank=r) for r, h in enumerate(ranked, 1)]
