"""The one mapper: clips and captions through a model in batches, for the index, evaluation and training checks."""
from __future__ import annotations

from typing import Iterable, Iterator

import numpy as np
import torch

# Every encode runs under no_grad, never inference_mode: a tensor made under inference_mode (a backend's cached
# scratch buffer, a tower's cached mask) breaks a later training step or no_grad call in the same process that meets
# it, and pretraining's zero-shot check runs between train steps. For inference the two are as fast.


def device_of(model) -> torch.device:
    """The device of the model's first parameter; the CPU for a model without any (duck-typed stand-ins)."""
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration, TypeError):
        return torch.device("cpu")


@torch.no_grad()
def encode_clips(model, batches: Iterable[torch.Tensor], device: torch.device | None = None, *,
                 dtype: torch.dtype | None = None, tokens: bool = False, cuda_graphs: bool = False) -> Iterator:
    """Batches (B, 3, T, H, W) of uint8 frames (normalised on the device with the model's config.video mean/std) or
    normalised floats (cast to `dtype`) -> one float32 (B, E) `encode_video(normalize=True)` result per batch, left on
    the device. Lazy, so the next batch decodes while this one encodes. `tokens=True` (ITM models) yields
    (embeddings, patch tokens (B, S, D)) from `video_features`. `cuda_graphs=True` replays the encoder from a CUDA
    graph per batch shape on a GPU (retrieval.cuda_graphs: faster for short clips, a graph's buffers per shape)."""
    from .data.transforms import IMAGENET_MEAN, IMAGENET_STD, normalize_clips

    device = device_of(model) if device is None else device
    video_cfg = getattr(getattr(model, "config", None), "video", None)
    mean, std = tuple(getattr(video_cfg, "mean", IMAGENET_MEAN)), tuple(getattr(video_cfg, "std", IMAGENET_STD))
    for batch in batches:
        if batch.dtype == torch.uint8:
            x = normalize_clips(batch.to(device, non_blocking=True), mean, std).to(dtype or torch.float32)
        else:
            x = batch.to(device, dtype or batch.dtype, non_blocking=True)
        if tokens:
            emb, tok = model.video_features(x)
            yield emb.float(), tok
        elif cuda_graphs:
            yield _graphed_encoder(model)(x).float()
        else:
            yield model.encode_video(x, normalize=True).float()


def _graphed_encoder(model):
    """The model's `encode_video(normalize=True)` behind CUDA graphs, made once per model."""
    from .cuda_graphs import CudaGraphed

    graphed = model.__dict__.get("_vmr_cuda_graphs")
    if graphed is None:
        graphed = model.__dict__["_vmr_cuda_graphs"] = CudaGraphed(lambda x: model.encode_video(x, normalize=True))
    return graphed


@torch.no_grad()
def encode_texts(model, texts: list[str], batch_size: int = 256, *, context_length: int | None = None,
                 states: bool = False):
    """Captions -> float32 (N, E) numpy `encode_text(normalize=True)` embeddings, `batch_size` at a time, tokenised by
    the model (context_length: through `model.tokenize` for ITM models, which clean captions, else
    `model.tokenizer`). `states=True` (ITM models) -> (embeddings, text states (N, L, H) float32, masks (N, L)) on
    the CPU, for the matching head."""
    emb, all_states, masks = [], [], []
    for a in range(0, len(texts), batch_size):
        chunk = list(texts[a:a + batch_size])
        if context_length is not None:
            tokenize = model.tokenize if getattr(model, "has_itm", False) else model.tokenizer
            chunk = tokenize(chunk, context_length=context_length)
        if states:
            st, mask = model.text_states(chunk)
            all_states.append(st.float().cpu())
            masks.append(mask.cpu())
            emb.append(model.embed_text_states(st).float().cpu().numpy())
        else:
            emb.append(model.encode_text(chunk, normalize=True).float().cpu().numpy())
    emb = np.concatenate(emb) if emb else np.zeros((0, 0), np.float32)
    return (emb, torch.cat(all_states), torch.cat(masks)) if states else emb
