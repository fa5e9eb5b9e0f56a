"""The one mapper: clips and captions through a model in batches, for the index, evaluation and training checks."""
from __future__ import annotations

from typing import Iterable, Iterator

import numpy as np
import torch

# Every encode runs under no_grad, never inference_mode: a tensor made under inference_mode (a backend's cached scratch
# buffer, a tower's cached mask) can never take part in autograd, so a later training step or no_grad call in the
# same process that meets it fails. Pretraining's zero-shot check runs between train steps; no_grad is as fast here.


def device_of(model) -> torch.device:
    """The device of the model's first parameter; the CPU for a model without any (duck-typed stand-ins)."""
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration, TypeError):
        return torch.device("cpu")


@torch.no_grad()
def encode_clips(model, batches: Iterable[torch.Tensor], device: torch.device | None = None, *,
                 dtype: torch.dtype | None = None, tokens: bool = False) -> Iterator:
    """Each batch (B, 3, T, H, W) -- uint8 frames (normalised on the device with the model's config.video mean/std)
    or normalised float (cast to `dtype` if given) -- -> float32 (B, E) `encode_video(normalize=True)` embeddings,
    one per batch, left on the device (the caller's `.cpu()` is where it waits for the GPU). Lazy, so decoding the
    next batch overlaps encoding this one. `tokens=True` (models with an ITM head) yields (embeddings, patch tokens
    (B, S, D)) from `video_features`."""
    device = device_of(model) if device is None else device
    for batch in batches:
        if batch.dtype == torch.uint8:
            from .data.transforms import IMAGENET_MEAN, IMAGENET_STD, normalize_clips

            video_cfg = getattr(getattr(model, "config", None), "video", None)  # the model says how input is normalised
            x = normalize_clips(batch.to(device, non_blocking=True), tuple(getattr(video_cfg, "mean", IMAGENET_MEAN)),
                                tuple(getattr(video_cfg, "std", IMAGENET_STD)))
            x = x if dtype is None else x.to(dtype)
        else:
            x = batch.to(device, dtype or batch.dtype, non_blocking=True)
        if tokens:
            emb, tok = model.video_features(x)
            yield emb.float(), tok
        else:
            yield model.encode_video(x, normalize=True).float()


@torch.no_grad()
def encode_texts(model, texts: list[str], batch_size: int = 256, *, context_length: int | None = None,
                 states: bool = False):
    """Captions -> float32 (N, E) numpy `encode_text(normalize=True)` embeddings, `batch_size` at a time.

    context_length: None tokenises with the model's own setting; otherwise through `model.tokenize(texts,
    context_length=)` (models with an ITM head: their caption cleaning) or `model.tokenizer`. `states=True` (ITM
    models) -> (embeddings, text states (N, L, H) float32, masks (N, L)), CPU tensors, for the matching head."""
    emb, all_states, masks = [], [], []
    for a in range(0, len(texts), batch_size):
        chunk = list(texts[a:a + batch_size])
        if context_length is not None:
            tokenize = model.tokenize if getattr(model, "has_itm", False) else model.tokenizer
            chunk = tokenize(chunk, context_length=context_length)
        if states:
            st, mask = model.text_states(chunk)
            emb.append(model.embed_text_states(st).float().cpu().numpy())
            all_states.append(st.float().cpu())
            masks.append(mask.cpu())
        else:
            emb.append(model.encode_text(chunk, normalize=True).float().cpu().numpy())
    emb = np.concatenate(emb) if emb else np.zeros((0, 0), np.float32)
    return (emb, torch.cat(all_states), torch.cat(masks)) if states else emb
