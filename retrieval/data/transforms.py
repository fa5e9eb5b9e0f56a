"""Decoded frames -> normalised model input: resize + centre crop (eval), random resized crop + flip (train)."""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _as_tchw_uint8(frames) -> torch.Tensor:
    """(T, H, W, 3) or (H, W, 3) uint8 numpy/tensor -> (T, 3, H, W) view with channels-last strides (no copy)."""
    x = torch.from_numpy(np.ascontiguousarray(frames)) if isinstance(frames, np.ndarray) else torch.as_tensor(frames)
    if x.dtype != torch.uint8:
        raise TypeError(f"frames must be uint8 (T, H, W, 3), got {x.dtype}")
    if x.ndim == 3:
        x = x[None]  # one image = a one-frame clip
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"frames must be (T, H, W, 3), got {tuple(x.shape)}")
    return x.permute(0, 3, 1, 2)


def _resize(x: torch.Tensor, height: int, width: int, mode: str = "bilinear") -> torch.Tensor:
    """Antialiased bilinear (or bicubic) resize of (T, C, H, W); uint8 stays uint8 (bilinear: torch's fast
    channels-last CPU kernel; bicubic: computed in float, rounded and clamped back, as torchvision does)."""
    if x.shape[-2:] == (height, width):
        return x
    if mode == "bicubic":
        y = F.interpolate(x.float(), size=(height, width), mode="bicubic", antialias=True, align_corners=False)
        return y.round_().clamp_(0, 255).to(torch.uint8) if x.dtype == torch.uint8 else y.to(x.dtype)
    if mode != "bilinear":
        raise ValueError(f"resize mode must be 'bilinear' or 'bicubic', got {mode!r}")
    if x.dtype == torch.uint8:
        x = x.contiguous(memory_format=torch.channels_last)
        return F.interpolate(x, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
    return F.interpolate(x.float(), size=(height, width), mode="bilinear", antialias=True,
                         align_corners=False).to(x.dtype)


def normalize(x: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """uint8 (T, 3, H, W) -> float32 (3, T, H, W) in ImageNet-normalised units."""
    m = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(3, 1, 1, 1)
    x = x.permute(1, 0, 2, 3).float().div_(255.0)  # (3, T, H, W)
    return x.sub_(m).div_(s).contiguous()


def normalize_clips(x: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """uint8 (B, 3, T, H, W) on any device -> float32 normalised: the same arithmetic as `normalize`, done where the
    model runs (the index ships uint8 from its decode workers: a quarter of the bytes through shared memory)."""
    m = torch.tensor(mean, dtype=torch.float32, device=x.device).view(1, 3, 1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=x.device).view(1, 3, 1, 1, 1)
    return x.float().div_(255.0).sub_(m).div_(s)


def frames_to_uint8(frames, size: int, crop: bool = True) -> torch.Tensor:
    """uint8 (T, H, W, 3) frames -> uint8 (3, T, size, size): `frames_to_tensor` before normalising."""
    return _crop_resize(frames, size, crop).permute(1, 0, 2, 3).contiguous()


def _crop_resize(frames, size: int, crop: bool, mode: str = "bilinear") -> torch.Tensor:
    x = _as_tchw_uint8(frames)  # (T, 3, H, W)
    h, w = x.shape[-2:]
    if crop:
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        x = x[:, :, top:top + side, left:left + side]
    return _resize(x, size, size, mode)


def frames_to_tensor(frames, size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD, crop: bool = True,
                     mode: str = "bilinear") -> torch.Tensor:
    """uint8 (T, H, W, 3) frames -> float32 (3, T, size, size): resize short side to `size`, centre crop, normalise.

    The centre square is cut first and then resized (same pixels as resize-then-crop up to a
    sub-pixel crop offset, and far cheaper for large frames). Resizing is antialiased bilinear on
    uint8. `crop=False` squashes the whole frame to size x size instead; with `mode="bicubic"` that is the
    VINDLU/UMT test transform (what the release's multimodal models are evaluated with).
    """
    return normalize(_crop_resize(frames, size, crop, mode), mean, std)  # (3, T, size, size)


def _crop_box(h: int, w: int, scale, ratio, generator) -> tuple[int, int, int, int]:
    """torchvision RandomResizedCrop box sampling (10 tries, then a centre crop clamped to `ratio`)."""
    area = h * w
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        u = torch.rand(2, generator=generator).tolist()
        target_area = area * (scale[0] + (scale[1] - scale[0]) * u[0])
        aspect = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * u[1])
        cw = int(round(math.sqrt(target_area * aspect)))
        ch = int(round(math.sqrt(target_area / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            top = int(torch.randint(0, h - ch + 1, (1,), generator=generator))
            left = int(torch.randint(0, w - cw + 1, (1,), generator=generator))
            return top, left, ch, cw
    in_ratio = w / h
    if in_ratio < min(ratio):
        cw, ch = w, int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        ch, cw = h, int(round(h * max(ratio)))
    else:
        cw, ch = w, h
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def random_resized_crop_flip(frames_tensor, size: int, scale=(0.5, 1.0), ratio=(3 / 4, 4 / 3),
                             flip_p: float = 0.5, generator: torch.Generator | None = None):
    """Training augmentation with one crop box and one flip decision for every frame of the clip.

    Layout follows the input type: a torch tensor is (C, T, H, W) of any dtype (e.g. the output of
    `frames_to_tensor`; crop/resize/flip commute with per-channel normalisation) -> (C, T, size,
    size); a numpy uint8 array is (T, H, W, 3) decoded frames -> (T, size, size, 3) uint8, the
    cheaper order (augment uint8, then `frames_to_tensor(out, size)` only normalises).
    """
    if isinstance(frames_tensor, np.ndarray):
        x = _as_tchw_uint8(frames_tensor)  # (T, 3, H, W)
        out = _augment(x, size, scale, ratio, flip_p, generator)
        return out.permute(0, 2, 3, 1).contiguous().numpy()  # (T, size, size, 3)
    if frames_tensor.ndim != 4:
        raise ValueError(f"expected (C, T, H, W), got {tuple(frames_tensor.shape)}")
    x = frames_tensor.transpose(0, 1)  # (T, C, H, W)
    return _augment(x, size, scale, ratio, flip_p, generator).transpose(0, 1).contiguous()


def _augment(x: torch.Tensor, size: int, scale, ratio, flip_p: float, generator) -> torch.Tensor:
    h, w = x.shape[-2:]
    top, left, ch, cw = _crop_box(h, w, scale, ratio, generator)
    x = _resize(x[:, :, top:top + ch, left:left + cw], size, size)
    if flip_p > 0 and float(torch.rand(1, generator=generator)) < flip_p:
        x = x.flip(-1)
    return x
