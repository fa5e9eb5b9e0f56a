"""Frozen teachers for masked video modelling: per-frame open_clip image encoder, or an earlier model of this project.

A teacher maps a student-normalised video (B, 3, T, H, W) to L2-normalised per-token targets
(B, T'*h*w, D_t) on the student's token grid (T', h, w), in the student's token order (frame, row,
column), plus per-token saliency scores (B, T'*h*w) for the `attention` mask kind. The score is the
cosine between each token and the teacher's own pooled feature of that frame (open_clip: the projected
CLS/pooled embedding; model teacher: the final-normed CLS token): tokens that agree with the
global summary are the salient ones, a cheap stand-in for UMT's last-layer CLS attention that
needs no attention maps (Mamba has none).
"""
from __future__ import annotations

import logging

import torch
import torch.nn as nn
import torch.nn.functional as F

log = logging.getLogger(__name__)


def resample_grid(tokens: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
    """tokens (B, T, h, w, D) -> (B, T', h', w', D) by trilinear interpolation (identity when equal)."""
    if tuple(tokens.shape[1:4]) == tuple(grid):
        return tokens
    x = tokens.permute(0, 4, 1, 2, 3).float()  # (B, D, T, h, w)
    x = F.interpolate(x, size=tuple(grid), mode="trilinear", align_corners=False)
    return x.permute(0, 2, 3, 4, 1).to(tokens.dtype)


def _renormalise(video: torch.Tensor, mean_in, std_in, mean_out, std_out) -> torch.Tensor:
    """Undo the student's normalisation and apply the teacher's (no-op when they agree)."""
    if tuple(mean_in) == tuple(mean_out) and tuple(std_in) == tuple(std_out):
        return video
    shape = (1, 3, 1, 1, 1)

    def t(v):
        return torch.tensor(v, dtype=video.dtype, device=video.device).view(shape)
    return (video * t(std_in) + t(mean_in) - t(mean_out)) / t(std_out)


def _resize_frames(video: torch.Tensor, size: int) -> torch.Tensor:
    """(B, 3, T, H, W) -> (B, 3, T, size, size), bilinear per frame."""
    B, C, T, H, W = video.shape
    if (H, W) == (size, size):
        return video
    frames = video.transpose(1, 2).reshape(B * T, C, H, W)
    frames = F.interpolate(frames, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return frames.reshape(B, T, C, size, size).transpose(1, 2)


class Teacher(nn.Module):
    """Base: frozen, eval-only; subclasses implement `_tokens(video) -> (tokens (B, T, h, w, D), pooled (B, T, D))`."""

    dim: int

    def __init__(self, grid: tuple[int, int, int], in_mean, in_std, precision: str = "bf16"):
        super().__init__()
        self.grid = tuple(grid)  # the student's (T', h, w)
        self.in_mean, self.in_std = tuple(in_mean), tuple(in_std)
        self.precision = precision

    def train(self, mode: bool = True):
        return super().train(False)  # always frozen: no dropout, no batch-norm updates

    @torch.no_grad()
    def forward(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """video (B, 3, T, H, W) normalised as the student expects -> (tokens (B, N, D_t) normalised, scores (B, N))."""
        use_bf16 = video.is_cuda and self.precision == "bf16"
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_bf16):
            tokens, pooled = self._tokens(video.float())  # (B, T, h, w, D), (B, T, D)
        tokens, pooled = tokens.float(), pooled.float()
        scores = torch.einsum("bthwd,btd->bthw", F.normalize(tokens, dim=-1), F.normalize(pooled, dim=-1))
        tokens = resample_grid(tokens, self.grid)  # (B, T', h', w', D) on the student's grid
        scores = resample_grid(scores.unsqueeze(-1), self.grid).squeeze(-1)
        B, D = tokens.shape[0], tokens.shape[-1]
        return F.normalize(tokens.reshape(B, -1, D), dim=-1), scores.reshape(B, -1)

    def _tokens(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError


class OpenClipTeacher(Teacher):
    """A frozen open_clip image tower applied to every frame; targets = projected, final-normed patch tokens."""

    def __init__(self, model_name: str, checkpoint: str | None, grid, in_mean, in_std, image_size: int | None = None,
                 precision: str = "bf16"):
        super().__init__(grid, in_mean, in_std, precision)
        import open_clip

        if checkpoint is None:  # random weights: right shapes and cost, meaningless targets (benchmarks only)
            log.warning("teacher: open_clip %s with RANDOM weights (no checkpoint)", model_name)
        model = open_clip.create_model(model_name, pretrained=checkpoint, force_image_size=image_size,
                                       require_pretrained=checkpoint is not None)
        visual = model.visual
        if getattr(visual, "attn_pool", None) is not None or not hasattr(visual, "_global_pool"):
            raise ValueError(f"open_clip model {model_name!r}: only plain ViT image towers are supported as teachers")
        self.visual = visual.eval().requires_grad_(False)
        self.visual.output_tokens = True
        del model  # the text tower is not needed
        size = visual.image_size
        self.image_size = size[0] if isinstance(size, (tuple, list)) else int(size)
        gs = visual.grid_size
        self.teacher_grid = (int(gs[0]), int(gs[1]))
        self.mean = tuple(getattr(visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN)
        self.std = tuple(getattr(visual, "image_std", None) or open_clip.OPENAI_DATASET_STD)
        self.dim = int(visual.proj.shape[1]) if visual.proj is not None else int(visual.transformer.width)
        log.info("teacher: open_clip %s from %s, %d px, grid %s, dim %d", model_name, checkpoint,
                 self.image_size, self.teacher_grid, self.dim)

    def _tokens(self, video):
        B, _, T, _, _ = video.shape
        x = _resize_frames(_renormalise(video, self.in_mean, self.in_std, self.mean, self.std), self.image_size)
        frames = x.transpose(1, 2).reshape(B * T, 3, self.image_size, self.image_size)
        pooled, tokens = self.visual(frames)  # (BT, D_out), (BT, hw, width)
        if getattr(self.visual, "final_ln_after_pool", False):
            tokens = self.visual.ln_post(tokens)
        if self.visual.proj is not None:
            tokens = tokens @ self.visual.proj  # (BT, hw, D_out)
        h, w = self.teacher_grid
        return tokens.reshape(B, T, h, w, -1), pooled.reshape(B, T, -1)


class ModelTeacher(Teacher):
    """A frozen earlier model folder of this project (self-distillation): its VideoMamba's final-normed tokens."""

    def __init__(self, path: str, grid, in_mean, in_std, precision: str = "bf16"):
        super().__init__(grid, in_mean, in_std, precision)
        from retrieval.model import load_model

        model = load_model(path)
        self.visual = model.visual.eval().requires_grad_(False)
        vcfg = model.config.video
        self.mean, self.std = tuple(vcfg.mean), tuple(vcfg.std)
        self.num_frames, self.image_size = self.visual.cfg.num_frames, self.visual.cfg.img_size
        self.teacher_grid = self.visual.cfg.grid
        self.dim = self.visual.embed_dim
        log.info("teacher: model %s, grid %s, dim %d", path, self.teacher_grid, self.dim)

    def _tokens(self, video):
        B, _, T, _, _ = video.shape
        x = _renormalise(video, self.in_mean, self.in_std, self.mean, self.std)
        if T != self.num_frames:  # pick evenly spaced frames, as the teacher was trained with
            idx = torch.linspace(0, T - 1, self.num_frames, device=video.device).round().long()
            x = x.index_select(2, idx)
        x = _resize_frames(x, self.image_size)
        out = self.visual.forward_features(x)  # (B, 1 + T'h w, D)
        Tt, h, w = self.teacher_grid
        tokens = out[:, 1:].reshape(B, Tt, h, w, -1)
        pooled = out[:, :1].expand(B, Tt, out.shape[-1])
        return tokens, pooled


def create_teacher(cfg, grid: tuple[int, int, int], in_mean, in_std) -> Teacher | None:
    """Teacher from a TeacherConfig (None for kind "none"); frozen, in eval mode."""
    if cfg.kind == "none":
        return None
    if cfg.kind == "open_clip":
        return OpenClipTeacher(cfg.open_clip_model, cfg.checkpoint, grid, in_mean, in_std, cfg.image_size,
                               cfg.precision)
    if cfg.kind == "model":
        return ModelTeacher(cfg.model_path, grid, in_mean, in_std, cfg.precision)
    raise ValueError(f"unknown teacher kind {cfg.kind!r}")
