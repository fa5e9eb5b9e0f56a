"""Video token masks on a (T, h, w) patch grid (random, tube, row, attention) and gathering of the visible tokens."""
from __future__ import annotations

from typing import Callable

import torch

# Every generator returns a BoolTensor (B, T*h*w), True = masked, token order t-major then row then column
# (the order VideoMamba flattens patches in). Every sample keeps exactly the same number of visible
# tokens, so visible tokens gather into a dense (B, N_vis, D) tensor without padding.
MaskFn = Callable[..., torch.Tensor]


def num_masked(n: int, ratio: float) -> int:
    """How many of `n` units a `ratio` masks; at least one unit always stays visible."""
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"mask ratio must be in [0, 1), got {ratio}")
    return min(int(round(n * ratio)), n - 1)


def _device(generator: torch.Generator | None, device) -> torch.device:
    # Random draws must happen on the generator's device, else torch refuses the generator.
    if generator is not None:
        return generator.device
    return torch.device(device) if device is not None else torch.device("cpu")


def _mask_k_of_n(batch_size: int, n: int, k: int, generator, device) -> torch.Tensor:
    """(B, n) bool with exactly k True per row at uniformly random places."""
    noise = torch.rand(batch_size, n, generator=generator, device=_device(generator, device))
    order = noise.argsort(dim=1)
    mask = torch.zeros(batch_size, n, dtype=torch.bool, device=noise.device)
    mask.scatter_(1, order[:, :k], True)
    return mask


def random_mask(batch_size: int, T: int, h: int, w: int, ratio: float,
                generator: torch.Generator | None = None, *, device=None, scores=None) -> torch.Tensor:
    """Independent uniform masking of all T*h*w tokens -> (B, T*h*w)."""
    n = T * h * w
    return _mask_k_of_n(batch_size, n, num_masked(n, ratio), generator, device)


def tube_mask(batch_size: int, T: int, h: int, w: int, ratio: float,
              generator: torch.Generator | None = None, *, device=None, scores=None) -> torch.Tensor:
    """One spatial mask repeated in every frame (VideoMAE tubes), so a patch can't be copied from a neighbour frame."""
    spatial = _mask_k_of_n(batch_size, h * w, num_masked(h * w, ratio), generator, device)  # (B, h*w)
    return spatial[:, None, :].expand(batch_size, T, h * w).reshape(batch_size, T * h * w)


def row_mask(batch_size: int, T: int, h: int, w: int, ratio: float,
             generator: torch.Generator | None = None, *, device=None, scores=None) -> torch.Tensor:
    """Whole rows of patches, chosen independently in each frame.

    The 1D scan visits a row as one contiguous run, so masking rows removes contiguous runs instead
    of scattering holes through every run; mask ratio granularity is 1/(T*h).
    """
    rows = _mask_k_of_n(batch_size, T * h, num_masked(T * h, ratio), generator, device)  # (B, T*h)
    return rows[:, :, None].expand(batch_size, T * h, w).reshape(batch_size, T * h * w)


def attention_guided_mask(batch_size: int, T: int, h: int, w: int, ratio: float,
                   generator: torch.Generator | None = None, *, device=None, scores=None) -> torch.Tensor:
    """Keep the tokens with the highest `scores` (B, T*h*w) visible (UMT's semantic masking: teacher CLS attention)."""
    n = T * h * w
    if scores is None:
        raise ValueError("attention masking needs scores (B, T*h*w), e.g. the teacher's CLS attention")
    if scores.shape != (batch_size, n):
        raise ValueError(f"attention masking: scores must be {(batch_size, n)}, got {tuple(scores.shape)}")
    n_vis = n - num_masked(n, ratio)
    keep = scores.float().topk(n_vis, dim=1).indices
    mask = torch.ones(batch_size, n, dtype=torch.bool, device=scores.device)
    mask.scatter_(1, keep, False)
    return mask


MASK_GENERATORS: dict[str, MaskFn] = {
    "random": random_mask,
    "tube": tube_mask,
    "row": row_mask,
    "attention": attention_guided_mask,
}


def create_mask_generator(kind: str) -> MaskFn:
    """The mask function registered as `kind` (one of MASK_GENERATORS)."""
    try:
        return MASK_GENERATORS[kind]
    except KeyError:
        raise ValueError(f"unknown mask kind {kind!r}; known: {sorted(MASK_GENERATORS)}") from None


def visible_index(mask: torch.Tensor) -> torch.Tensor:
    """mask (B, N) True = masked -> (B, N_vis) positions of each sample's visible tokens, in order.

    Every sample must keep the same number of tokens. On a CPU mask the check and the positions cost the
    GPU nothing; on a GPU mask they wait for it (a host sync), so training draws its masks on the CPU.
    """
    visible = ~mask.to(torch.bool)
    B = visible.shape[0]
    counts = visible.sum(dim=1)
    if B and not bool((counts == counts[0]).all()):
        raise ValueError(f"every sample must keep the same number of visible tokens, got {counts.tolist()}")
    n_vis = int(counts[0]) if B else 0
    return visible.nonzero()[:, 1].view(B, n_vis)  # nonzero walks row-major: each row's positions ascending


def gather_visible(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """tokens (B, N, D), mask (B, N) True = masked -> visible tokens (B, N_vis, D) in their original order.

    A CPU mask with GPU tokens is the fast case: the positions are found on the CPU and copied
    asynchronously, so the host never waits for the GPU here.
    """
    B, N, D = tokens.shape
    if mask.shape != (B, N):
        raise ValueError(f"mask must be {(B, N)} to match tokens {tuple(tokens.shape)}, got {tuple(mask.shape)}")
    index = visible_index(mask)
    if index.device != tokens.device:
        if index.device.type == "cpu" and tokens.device.type == "cuda":
            index = index.pin_memory()  # a pinned source makes the copy truly asynchronous
        index = index.to(tokens.device, non_blocking=True)
    return tokens.gather(1, index[:, :, None].expand(B, index.shape[1], D))
