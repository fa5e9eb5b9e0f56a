"""VideoMamba video encoder (Li et al. 2024): config, model, size registry and `create_video_encoder`."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .config import ConfigError
from .mamba import Block, DropPath, RMSNorm, add_rms_norm, matmul_dtype
from .masking import gather_visible


@dataclass
class VideoMambaConfig:
    embed_dim: int = 192          # token width D (tiny 192, small 384, middle 576)
    depth: int = 24               # number of bidirectional Mamba blocks
    patch_size: int = 16          # spatial patch side in pixels
    tubelet_size: int = 1         # frames per temporal patch (release: 1)
    num_frames: int = 8           # input frames T; temporal_pos_embedding has T/tubelet entries
    img_size: int = 224           # input height = width in pixels
    in_chans: int = 3
    d_state: int = 16             # SSM state size N
    d_conv: int = 4               # causal depthwise conv width
    expand: int = 2               # d_inner = expand * embed_dim
    norm_eps: float = 1e-5
    drop_path_rate: float = 0.0   # stochastic depth, grows linearly with depth (0.1-0.4 when fine-tuning)
    num_classes: int = 0          # >0 adds the classification `head` (Kinetics checkpoints)
    pool_norm: bool = True        # LayerNorm on cls + mean(patches), as the multimodal backbone
    grad_checkpointing: bool = False

    def validate(self) -> "VideoMambaConfig":
        if self.img_size % self.patch_size:
            raise ConfigError(f"img_size {self.img_size} is not divisible by patch_size {self.patch_size}")
        if self.num_frames % self.tubelet_size:
            raise ConfigError(f"num_frames {self.num_frames} is not divisible by tubelet_size {self.tubelet_size}")
        for name in ("embed_dim", "depth", "patch_size", "tubelet_size", "num_frames", "img_size", "d_state"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        return self

    @property
    def grid(self) -> tuple[int, int, int]:
        """Token grid (T', h, w) after patch embedding."""
        side = self.img_size // self.patch_size
        return self.num_frames // self.tubelet_size, side, side


# Published sizes; every other field keeps its default unless overridden.
_SIZES: dict[str, dict] = {
    "videomamba_tiny": dict(embed_dim=192, depth=24),
    "videomamba_small": dict(embed_dim=384, depth=24),
    "videomamba_middle": dict(embed_dim=576, depth=32),
}


def register_size(name: str, **fields) -> None:
    """Add a named size to the registry (e.g. a small demo encoder)."""
    dataclasses.replace(VideoMambaConfig(), **fields).validate()  # fail early on typos
    _SIZES[name] = dict(fields)


def list_video_encoders() -> list[str]:
    return sorted(_SIZES)


def video_encoder_config(name: str, **overrides) -> VideoMambaConfig:
    if name not in _SIZES:
        raise KeyError(f"unknown video encoder {name!r}; known: {list_video_encoders()}")
    fields = {**_SIZES[name], **overrides}
    unknown = set(fields) - {f.name for f in dataclasses.fields(VideoMambaConfig)}
    if unknown:
        raise TypeError(f"unknown VideoMambaConfig field(s) {sorted(unknown)}")
    return VideoMambaConfig(**fields).validate()


class PatchEmbed(nn.Module):
    """(B, 3, T, H, W) -> (B, D, T/tubelet, H/p, W/p): the release's Conv3d (its weights, its checkpoint keys), on
    the GPU computed as one GEMM over the unfolded patches (patch_linear; on the CPU the conv is the faster)."""

    def __init__(self, cfg: VideoMambaConfig):
        super().__init__()
        k = (cfg.tubelet_size, cfg.patch_size, cfg.patch_size)
        self.proj = nn.Conv3d(cfg.in_chans, cfg.embed_dim, kernel_size=k, stride=k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return patch_linear(x, self.proj) if x.is_cuda else self.proj(x)


def patch_linear(x: torch.Tensor, conv: nn.Conv3d) -> torch.Tensor:
    """conv(x) for a Conv3d whose stride equals its kernel (non-overlapping patches), as a GEMM over the patches;
    the result is (B, D, T', h, w) as a view of a channels-last (B, T', h, w, D) tensor, the layout tokens take.

    cuDNN ran this conv in bf16 as an implicit sgemm without tensor cores: 1.5 ms for 512 frames of 224 px on an
    H100, 4% of an 8-frame VideoMamba-Ti forward (BENCHMARKS.md 9e). The unfold is one copy, in the GEMM's dtype."""
    B, C, T, H, W = x.shape
    kt, kh, kw = conv.kernel_size
    t, h, w = T // kt, H // kh, W // kw
    view = x[:, :, :t * kt, :h * kh, :w * kw].reshape(B, C, t, kt, h, kh, w, kw).permute(0, 2, 4, 6, 1, 3, 5, 7)
    patches = torch.empty(view.shape, dtype=matmul_dtype(x), device=x.device).copy_(view)  # cast and unfold in one copy
    y = F.linear(patches.view(B * t * h * w, -1), conv.weight.reshape(conv.out_channels, -1), conv.bias)
    return y.view(B, t, h, w, conv.out_channels).permute(0, 4, 1, 2, 3)


class VideoMamba(nn.Module):
    """VideoMamba encoder: spatial-first token order [cls, frame0 patches, frame1 patches, ...].

    `forward(video)` returns the normalised cls feature (B, D) (or class logits when a head is set).
    `forward_features(video, mask)` returns all final-normed tokens; `pool_frames` gives per-frame
    pooled features pool_norm(cls + mean(patches of the frame)).
    """

    def __init__(self, cfg: VideoMambaConfig):
        super().__init__()
        self.cfg = cfg.validate()
        D = cfg.embed_dim
        T, h, w = cfg.grid
        self.patch_embed = PatchEmbed(cfg)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + h * w, D))
        self.temporal_pos_embedding = nn.Parameter(torch.zeros(1, T, D))
        dpr = [cfg.drop_path_rate * i / max(cfg.depth - 1, 1) for i in range(cfg.depth)]  # linear in depth
        inter_dpr = [0.0] + dpr  # block i adds the output of block i-1, hence the shift
        self.layers = nn.ModuleList([
            Block(D, drop_path=inter_dpr[i], norm_eps=cfg.norm_eps,
                  d_state=cfg.d_state, d_conv=cfg.d_conv, expand=cfg.expand)
            for i in range(cfg.depth)
        ])
        self.drop_path = DropPath(dpr[-1] if dpr else 0.0)
        self.norm_f = RMSNorm(D, eps=cfg.norm_eps)
        self.pool_norm = nn.LayerNorm(D) if cfg.pool_norm else None
        self.head = nn.Linear(D, cfg.num_classes) if cfg.num_classes > 0 else None
        self.grad_checkpointing = cfg.grad_checkpointing
        self._init_weights()

    @property
    def embed_dim(self) -> int:
        return self.cfg.embed_dim

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for name, m in self.named_modules():
            if isinstance(m, nn.Linear) and not name.endswith("dt_proj") and not name.endswith("dt_proj_b"):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        # Rescale out_proj as GPT-2 / the release do, so the fp32 residual stays O(1) at init.
        for layer in self.layers:
            nn.init.kaiming_uniform_(layer.mixer.out_proj.weight, a=5 ** 0.5)
            with torch.no_grad():
                layer.mixer.out_proj.weight /= self.cfg.depth ** 0.5

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def no_weight_decay(self) -> set[str]:
        names = {"cls_token", "pos_embed", "temporal_pos_embedding"}
        for n, p in self.named_parameters():
            if p.ndim <= 1 or n.endswith("A_log") or n.endswith("A_b_log"):
                names.add(n)
        return names

    def check_input(self, x: torch.Tensor) -> None:
        cfg = self.cfg
        if not torch.is_tensor(x) or x.ndim != 5:
            shape = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
            raise ValueError(f"video must be a (B, C, T, H, W) tensor, got {shape}")
        B, C, T, H, W = x.shape
        if C != cfg.in_chans:
            raise ValueError(f"video has {C} channels, expected {cfg.in_chans} (layout is (B, C, T, H, W))")
        if (H, W) != (cfg.img_size, cfg.img_size):
            raise ValueError(f"video frames are {H}x{W}, this encoder expects {cfg.img_size}x{cfg.img_size} "
                             f"(resize, or load with img_size={H} to resize position embeddings)")
        if T != cfg.num_frames:
            raise ValueError(f"video has {T} frames, this encoder expects {cfg.num_frames} "
                             f"(sample {cfg.num_frames}, or load with num_frames={T})")
        if not x.is_floating_point():
            raise ValueError(f"video must be float (normalised), got {x.dtype}")

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) -> tokens (B, 1 + T'*h*w, D) with position embeddings, before the blocks."""
        self.check_input(x)
        x = self.patch_embed(x)  # (B, D, T', h, w)
        B, D, T, h, w = x.shape
        x = x.permute(0, 2, 3, 4, 1).reshape(B, T, h * w, D)  # (B, T', hw, D)
        x = x + self.pos_embed[:, 1:].unsqueeze(1) + self.temporal_pos_embedding.unsqueeze(2)
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(B, -1, -1)  # (B, 1, D)
        return torch.cat([cls, x.reshape(B, T * h * w, D)], dim=1)

    def forward_features(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """video (B, 3, T, H, W), mask (B, T'*h*w) True = dropped -> final-normed tokens (B, 1 + N_vis, D).

        Masked tokens never enter the blocks (what makes masked pretraining cheap); every sample must
        keep the same number of tokens.
        """
        x = self.embed(x)
        if mask is not None:
            B, L, D = x.shape
            if mask.shape != (B, L - 1):
                raise ValueError(f"mask must have shape {(B, L - 1)}, got {tuple(mask.shape)}")
            x = torch.cat([x[:, :1], gather_visible(x[:, 1:], mask)], dim=1)
        hidden, residual = x, None
        for layer in self.layers:
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                hidden, residual = checkpoint(layer, hidden, residual, use_reentrant=False)
            else:
                hidden, residual = layer(hidden, residual)
        if self.drop_path.p == 0.0 or not self.training:
            return add_rms_norm(hidden, residual, self.norm_f)[0]
        residual = residual + self.drop_path(hidden)
        return self.norm_f(residual.to(self.norm_f.weight.dtype))

    def pool_frames(self, tokens: torch.Tensor, num_frames: int | None = None) -> torch.Tensor:
        """tokens (B, 1 + T'*hw, D) -> per-frame pooled features (B, T', D) = pool_norm(cls + mean_t(patches)).

        With num_frames=1 (e.g. masked tokens of unequal per-frame counts) the mean runs over all patches.
        """
        T = self.cfg.grid[0] if num_frames is None else num_frames
        cls, patches = tokens[:, :1], tokens[:, 1:]
        B, N, D = patches.shape
        if N % T:
            raise ValueError(f"{N} patch tokens cannot be split into {T} frames")
        pooled = cls + patches.reshape(B, T, N // T, D).mean(2)  # (B, T', D)
        return self.pool_norm(pooled) if self.pool_norm is not None else pooled

    def forward_head(self, tokens: torch.Tensor) -> torch.Tensor:
        cls = tokens[:, 0]
        return self.head(cls) if self.head is not None else cls

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) -> (B, D) cls feature, or (B, num_classes) logits with a head."""
        return self.forward_head(self.forward_features(x))


def create_video_encoder(name: str = "videomamba_tiny", **overrides) -> VideoMamba:
    """Build a VideoMamba by registry name (`videomamba_tiny|small|middle`) with field overrides."""
    return VideoMamba(video_encoder_config(name, **overrides))
