"""Training objectives as pure functions of features: VTC (multi-positive InfoNCE), token alignment, MLM, their sum."""
from __future__ import annotations

from typing import Callable, Mapping

import torch
import torch.nn.functional as F

GatherFn = Callable[[torch.Tensor], torch.Tensor]


def gather_features(x: torch.Tensor, gather_fn: GatherFn | None = None) -> torch.Tensor:
    """Concatenate `x` (B, ...) from all processes in rank order -> (world*B, ...); identity when not distributed.

    Uses torch.distributed.nn.functional.all_gather, whose backward sums the gradients every rank
    computed for this rank's slice. Every rank then computes the same global loss, so a local
    feature's gradient is world_size * dL/dx and DDP's gradient averaging turns that back into
    exactly dL/dtheta. Tests pass a fake `gather_fn` to play several ranks in one process.
    """
    if gather_fn is not None:
        return gather_fn(x)
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    if not x.is_floating_point():  # ids and other integer data carry no gradient
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=0)
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x.contiguous()), dim=0)


def _soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over rows of -sum_j targets_ij * log_softmax(logits)_ij."""
    return -(targets * logits.log_softmax(dim=-1)).sum(dim=-1).mean()


def vtc_loss(video_feats: torch.Tensor, text_feats: torch.Tensor, logit_scale: torch.Tensor | float,
             video_ids: torch.Tensor | None = None, gather_fn: GatherFn | None = None) -> torch.Tensor:
    """Video-text contrastive loss (InfoNCE, both directions averaged).

    video_feats, text_feats: (B, E), already L2-normalised; row i of each is one (clip, caption) pair.
    logit_scale: the multiplier itself (already exp()'d, as open_clip's ClipLoss takes it).
    video_ids: (B,) integer id of the source video. Pairs sharing an id are all positives for each
    other and the target spreads uniformly over them (UMT's soft targets), so a second caption of
    the same video in the batch is not pushed away as a negative. None = only the diagonal.
    """
    if video_feats.shape != text_feats.shape or video_feats.dim() != 2:
        raise ValueError(f"video/text features must both be (B, E), got {tuple(video_feats.shape)} "
                         f"and {tuple(text_feats.shape)}")
    v = gather_features(video_feats, gather_fn)  # (N, E), N = world * B
    t = gather_features(text_feats, gather_fn)   # (N, E)
    logits = logit_scale * v @ t.t()             # (N, N) video -> text
    if video_ids is None:
        labels = torch.arange(logits.shape[0], device=logits.device)
        return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2
    ids = gather_features(video_ids.reshape(-1).to(video_feats.device), gather_fn)  # (N,)
    if ids.shape[0] != logits.shape[0]:
        raise ValueError(f"video_ids gather to {ids.shape[0]} entries, features to {logits.shape[0]}")
    positives = (ids[:, None] == ids[None, :]).to(logits.dtype)  # (N, N), symmetric
    targets = positives / positives.sum(dim=1, keepdim=True)
    return (_soft_cross_entropy(logits, targets) + _soft_cross_entropy(logits.t(), targets)) / 2


def alignment_loss(student_tokens: torch.Tensor, teacher_tokens: torch.Tensor) -> torch.Tensor:
    """mean(2 - 2 cos) between decoded student tokens and teacher tokens, both (B, N_vis, D) at the same visible places.

    The teacher is a target: it is detached here so no caller can train it by accident.
    """
    if student_tokens.shape != teacher_tokens.shape:
        raise ValueError(f"student {tuple(student_tokens.shape)} and teacher {tuple(teacher_tokens.shape)} "
                         "tokens must have the same shape (decode the student to the teacher width first)")
    s = F.normalize(student_tokens.float(), dim=-1)
    t = F.normalize(teacher_tokens.detach().float(), dim=-1)
    return (2 - 2 * (s * t).sum(dim=-1)).mean()


def mlm_mask_tokens(tokens: torch.Tensor, mask_id: int, vocab_size: int, special_ids,
                    prob: float = 0.15, generator: torch.Generator | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking of token ids (B, L) -> (inputs, labels).

    Each non-special token is picked with `prob`; picked tokens become `mask_id` 80% of the time, a
    random non-special token 10%, and stay unchanged 10%. labels hold the original id where
    picked and -100 elsewhere. Random replacements avoid special ids so a random pad id can't hide
    a token from attention.
    """
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"MLM probability must be in [0, 1], got {prob}")
    device = generator.device if generator is not None else tokens.device
    special = torch.tensor(sorted({int(i) for i in special_ids} | {int(mask_id)}), dtype=torch.long)
    t = tokens.to(device)
    candidates = ~torch.isin(t, special.to(device))

    def draw():
        return torch.rand(t.shape, generator=generator, device=device)

    picked = candidates & (draw() < prob)
    labels = torch.where(picked, t, torch.full_like(t, -100))
    to_mask = picked & (draw() < 0.8)
    to_random = picked & ~to_mask & (draw() < 0.5)  # half of the remaining 20%
    allowed = torch.ones(vocab_size, dtype=torch.bool)
    allowed[special[special < vocab_size]] = False
    allowed_ids = allowed.nonzero().squeeze(1).to(device)
    random_ids = allowed_ids[torch.randint(len(allowed_ids), t.shape, generator=generator, device=device)]
    inputs = torch.where(to_mask, torch.full_like(t, mask_id), t)
    inputs = torch.where(to_random, random_ids, inputs)
    return inputs.to(tokens.device), labels.to(tokens.device)


def mlm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of logits (B, L, V) at labelled places (labels (B, L), -100 = ignore); 0 when none is labelled."""
    flat_labels = labels.reshape(-1)
    if not bool((flat_labels != -100).any()):
        return logits.sum() * 0.0  # keeps the graph (and DDP's used-parameter bookkeeping) intact
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), flat_labels, ignore_index=-100)


def total_loss(terms: Mapping[str, torch.Tensor], weights: Mapping[str, float]) -> dict[str, torch.Tensor]:
    """{"loss": sum_k weights[k] * terms[k], **terms}: terms stay unweighted for logging.

    Every term needs a weight (a silent default would hide a typo); weights of absent terms are
    ignored, so a config can carry a weight for an objective that a run switches off.
    """
    if not terms:
        raise ValueError("total_loss: no loss terms")
    missing = sorted(set(terms) - set(weights))
    if missing:
        raise ValueError(f"total_loss: no weight for term(s) {missing}; weights given for {sorted(weights)}")
    if "loss" in terms:
        raise ValueError('total_loss: "loss" is reserved for the weighted sum')
    total = sum(float(weights[k]) * v for k, v in terms.items())
    return {**terms, "loss": total}
