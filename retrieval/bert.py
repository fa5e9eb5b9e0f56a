"""BERT text tower with the release's (UMT/VINDLU `xbert`) names: text-only layers, then cross-attention fusion."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import ConfigError

# Additive attention-mask value at padding, as the release's BertModel (not -inf: a fully padded row stays finite).
MASK_VALUE = -10000.0


@dataclass
class BertConfig:
    vocab_size: int = 30522            # word-embedding rows (bert-base-uncased: 30522)
    hidden_size: int = 768             # width of every layer (base 768, large 1024)
    num_layers: int = 12               # transformer layers in all
    num_heads: int = 12                # attention heads; must divide hidden_size (no shape in a checkpoint reveals it)
    intermediate_size: int = 3072      # MLP hidden width (4 x hidden for BERT)
    max_positions: int = 512           # position-embedding rows: the longest caption in tokens
    type_vocab_size: int = 2           # token-type rows (always type 0 here)
    layer_norm_eps: float = 1e-12
    fusion_layer: int = 9              # layers >= this one carry cross-attention on video tokens (release: 9 of 12)
    encoder_width: int = 768           # width of the video tokens the cross-attention reads (VideoMamba-M: 576)
    pad_id: int = 0                    # [PAD]; the attention mask is ids != pad_id

    def validate(self) -> "BertConfig":
        if self.hidden_size % self.num_heads:
            raise ConfigError(f"bert.num_heads={self.num_heads} must divide bert.hidden_size={self.hidden_size}")
        if not 0 <= self.fusion_layer <= self.num_layers:
            raise ConfigError(f"bert.fusion_layer={self.fusion_layer} must be in 0..{self.num_layers}")
        for name in ("vocab_size", "hidden_size", "num_layers", "intermediate_size", "max_positions", "encoder_width"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"bert.{name} must be positive, got {getattr(self, name)}")
        return self


class BertEmbeddings(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size, padding_idx=cfg.pad_id)
        self.position_embeddings = nn.Embedding(cfg.max_positions, cfg.hidden_size)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, L) -> (B, L, H)."""
        L = ids.shape[1]
        pos = torch.arange(L, device=ids.device)
        x = self.word_embeddings(ids) + self.token_type_embeddings.weight[0] + self.position_embeddings(pos)
        return self.LayerNorm(x)


class _SelfAttentionProj(nn.Module):
    """query/key/value projections; a cross-attention's key/value read the video width."""

    def __init__(self, cfg: BertConfig, kv_width: int):
        super().__init__()
        self.num_heads = cfg.num_heads
        self.query = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.key = nn.Linear(kv_width, cfg.hidden_size)
        self.value = nn.Linear(kv_width, cfg.hidden_size)

    def forward(self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """x (B, L, H), context (B, S, W), mask additive (B, 1, 1, S) or None -> (B, L, H)."""
        B, L, H = x.shape
        h = self.num_heads

        def heads(t):  # (B, N, H) -> (B, h, N, H/h)
            return t.view(B, t.shape[1], h, H // h).transpose(1, 2)

        q, k, v = heads(self.query(x)), heads(self.key(context)), heads(self.value(context))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # softmax(q k^T / sqrt(d) + mask) v
        return out.transpose(1, 2).reshape(B, L, H)


class _AttentionOutput(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class BertAttention(nn.Module):
    def __init__(self, cfg: BertConfig, kv_width: int | None = None):
        super().__init__()
        self.self = _SelfAttentionProj(cfg, kv_width or cfg.hidden_size)
        self.output = _AttentionOutput(cfg)

    def forward(self, x, context=None, mask=None):
        return self.output(self.self(x, x if context is None else context, mask), x)


class _Intermediate(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.intermediate_size)

    def forward(self, x):
        return F.gelu(self.dense(x))  # exact (erf) GELU, BERT's "gelu"


class _Output(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.intermediate_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, x, residual):
        return self.LayerNorm(self.dense(x) + residual)


class BertLayer(nn.Module):
    def __init__(self, cfg: BertConfig, cross: bool):
        super().__init__()
        self.attention = BertAttention(cfg)
        self.crossattention = BertAttention(cfg, kv_width=cfg.encoder_width) if cross else None
        self.intermediate = _Intermediate(cfg)
        self.output = _Output(cfg)

    def forward(self, x, mask, video=None, video_mask=None):
        x = self.attention(x, mask=mask)
        if self.crossattention is not None:
            if video is None:
                raise ValueError("a fusion layer needs video tokens")
            x = self.crossattention(x, context=video, mask=video_mask)
        return self.output(self.intermediate(x), x)


class BertEncoder(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.layer = nn.ModuleList([BertLayer(cfg, cross=i >= cfg.fusion_layer) for i in range(cfg.num_layers)])


def additive_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, L) 1 = token, 0 = padding -> (B, 1, 1, L) with 0 / MASK_VALUE, the release's extended mask."""
    return (1.0 - attention_mask[:, None, None, :].to(dtype)) * MASK_VALUE


class BertTextEncoder(nn.Module):
    """`forward_text(ids)`: layers [0, fusion_layer) ("text" mode); `forward_fusion(states, mask, video)`: the rest."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.config = cfg.validate()
        self.embeddings = BertEmbeddings(cfg)
        self.encoder = BertEncoder(cfg)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    @property
    def width(self) -> int:
        return self.config.hidden_size

    def attention_mask(self, ids: torch.Tensor) -> torch.Tensor:
        return (ids != self.config.pad_id).long()  # (B, L)

    def forward_text(self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """ids (B, L) -> hidden states (B, L, H) after the text-only layers."""
        if ids.dim() != 2:
            raise ValueError(f"text tokens must be (B, L), got {tuple(ids.shape)}")
        if ids.shape[1] > self.config.max_positions:
            raise ValueError(f"{ids.shape[1]} tokens per caption but BERT has {self.config.max_positions} positions")
        if attention_mask is None:
            attention_mask = self.attention_mask(ids)
        x = self.embeddings(ids)
        mask = additive_mask(attention_mask, x.dtype)
        for layer in self.encoder.layer[:self.config.fusion_layer]:
            x = layer(x, mask)
        return x

    def forward_fusion(self, states: torch.Tensor, attention_mask: torch.Tensor, video: torch.Tensor) -> torch.Tensor:
        """states (B, L, H) from forward_text, attention_mask (B, L), video tokens (B, S, encoder_width) -> (B, L, H).

        Every video token is attended to (no video mask), as the release's evaluation does.
        """
        if video.shape[-1] != self.config.encoder_width:
            raise ValueError(f"video tokens are {video.shape[-1]}-wide but the cross-attention takes "
                             f"{self.config.encoder_width}")
        mask = additive_mask(attention_mask, states.dtype)
        x = states
        for layer in self.encoder.layer[self.config.fusion_layer:]:
            x = layer(x, mask, video=video)
        return x

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, L) -> (B, H) [CLS] state of the text-only layers (what retrieval embeds)."""
        return self.forward_text(ids)[:, 0]

