"""The release's multimodal retrieval model (UMT-style VideoMamba + BERT): dual-encoder similarity, ITM re-ranking."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .bert import BertConfig, BertTextEncoder
from .config import ConfigError
from .model import RetrievalModule, VideoTowerConfig
from .tokenizer import TokenizerError
from .videomamba import VideoMamba

KIND = "umt"  # `kind` in a model folder's config.yaml
# The release's zero-shot text lengths (`max_txt_l` in its exp_zs/*/config.py), by dataset.
RELEASE_CONTEXT_LENGTH = {"msrvtt": 32, "lsmdc": 96, "didemo": 64, "msvd": 64, "activitynet": 150}


@dataclass
class UMTTextConfig(BertConfig):
    context_length: int = 32         # tokens per caption incl. [CLS]/[SEP] (release: max_txt_l; MSRVTT 32, ANet 150)
    clean_captions: bool = True      # the release's caption cleaning before tokenising (see clean_caption)


@dataclass
class UMTConfig:
    kind: str = KIND
    video: VideoTowerConfig = field(default_factory=lambda: VideoTowerConfig(name="videomamba_middle"))
    text: UMTTextConfig = field(default_factory=UMTTextConfig)
    embed_dim: int = 512             # shared space of vision_proj / text_proj
    temp: float = 0.07               # the checkpoint's temperature (kept; similarity scores do not use it)

    def validate(self) -> "UMTConfig":
        if self.kind != KIND:
            raise ConfigError(f"kind must be {KIND!r}, got {self.kind!r}")
        enc = self.video.encoder_config()
        self.text.validate()
        if self.text.encoder_width != enc.embed_dim:
            raise ConfigError(f"the BERT cross-attention reads {self.text.encoder_width}-wide video tokens but the "
                             f"VideoMamba is {enc.embed_dim} wide")
        if not 2 <= self.text.context_length <= self.text.max_positions:
            raise ConfigError(f"text.context_length must be in 2..{self.text.max_positions}, "
                             f"got {self.text.context_length}")
        return self


_CLEAN_DROP = re.compile(r"[,.'!?\"()*#:;~]")
_SPACES = re.compile(r"\s{2,}")


def clean_caption(text: str) -> str:
    """The release's caption cleaning (`pre_text`): lower-case; drop , . ' ! ? " ( ) * # : ; ~; '-' and '/' to
    spaces; '<person>' to 'person'; collapse runs of whitespace."""
    text = _CLEAN_DROP.sub("", text.lower())
    text = text.replace("-", " ").replace("/", " ").replace("<person>", "person")
    return _SPACES.sub(" ", text).rstrip("\n").strip(" ")


class UMTModel(RetrievalModule):
    """VideoMamba + BERT with the release's heads. Same API as VideoTextModel, plus ITM re-ranking.

    Similarity (what the index and `vmr eval` use by default): `encode_video` is the mean over frames of the
    L2-normalised per-frame projections (kept un-normalised, so text . video equals the release's mean over
    frames of text . frame); `encode_text` the normalised projection of BERT's [CLS] after the text-only layers.
    Re-ranking: `itm_scores(text_states, text_mask, video_tokens)` runs the fusion layers and returns the raw
    match logit `itm_head(CLS)[:, 1]`.
    """

    has_itm = True
    # How the release's zero-shot evaluation feeds frames: the whole frame squashed to img_size, bicubic.
    eval_crop = False
    eval_resize_mode = "bicubic"
    similarity = "mean over frames of text . frame (each L2-normalised), float32, no temperature"

    def __init__(self, cfg: UMTConfig, tokenizer):
        super().__init__()
        self.config = cfg.validate()
        self.tokenizer = tokenizer
        if tokenizer.vocab_size > cfg.text.vocab_size:
            raise TokenizerError(f"the tokenizer has {tokenizer.vocab_size} pieces but BERT has {cfg.text.vocab_size} "
                             "word embeddings; use the checkpoint's vocabulary (bert-base-uncased: 30522)")
        if tokenizer.pad_id != cfg.text.pad_id:
            raise TokenizerError(f"the tokenizer pads with id {tokenizer.pad_id} but BERT expects {cfg.text.pad_id}")
        self.visual = VideoMamba(cfg.video.encoder_config())
        self.text = BertTextEncoder(cfg.text)
        self.vision_proj = nn.Linear(self.visual.embed_dim, cfg.embed_dim)
        self.text_proj = nn.Linear(cfg.text.hidden_size, cfg.embed_dim)
        self.temp = nn.Parameter(torch.tensor(cfg.temp))
        self.itm_head = nn.Linear(cfg.text.hidden_size, 2)
        self.load_report = None

    # -- video -------------------------------------------------------------------------------------
    def video_features(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """video (B, 3, T, H, W) -> (embedding (B, E) as encode_video, patch tokens (B, T'*h*w, D) for ITM)."""
        tokens = self.visual.forward_features(video)  # (B, 1 + T'hw, D)
        frames = F.normalize(self.vision_proj(self.visual.pool_frames(tokens)), dim=-1)  # (B, T', E)
        return frames.mean(1), tokens[:, 1:]

    def encode_video(self, video: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """video (B, 3, T, H, W) -> (B, E): mean of the normalised frame vectors (normalize=False: of the raw ones).

        The mean is deliberately not re-normalised: per-text rankings would change otherwise.
        """
        tokens = self.visual.forward_features(video)
        frames = self.vision_proj(self.visual.pool_frames(tokens))  # (B, T', E)
        return (F.normalize(frames, dim=-1) if normalize else frames).mean(1)

    # -- text --------------------------------------------------------------------------------------
    def tokenize(self, texts, context_length: int | None = None) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        if self.config.text.clean_captions:
            texts = [clean_caption(t) if isinstance(t, str) else t for t in texts]
        return self.tokenizer(texts, context_length=context_length or self.config.text.context_length)

    def _ids(self, texts) -> torch.Tensor:
        ids = texts if torch.is_tensor(texts) else self.tokenize(texts)
        return ids.to(self.text_proj.weight.device)

    def text_states(self, texts) -> tuple[torch.Tensor, torch.Tensor]:
        """texts (list of str, or ids (B, L)) -> (states after the text-only layers (B, L, H), mask (B, L))."""
        ids = self._ids(texts)
        mask = self.text.attention_mask(ids)
        return self.text.forward_text(ids, mask), mask

    def embed_text_states(self, states: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        feats = self.text_proj(states[:, 0])
        return F.normalize(feats, dim=-1) if normalize else feats

    def encode_text(self, texts, normalize: bool = True) -> torch.Tensor:
        """texts: strings (cleaned + tokenised here) or ids (B, L) -> (B, E)."""
        return self.embed_text_states(self.text_states(texts)[0], normalize)

    # -- matching head -----------------------------------------------------------------------------
    def itm_scores(self, text_states: torch.Tensor, text_mask: torch.Tensor,
                   video_tokens: torch.Tensor) -> torch.Tensor:
        """Pairs (text_states (B, L, H), text_mask (B, L), video_tokens (B, S, D)) -> raw match logits (B,)."""
        fused = self.text.forward_fusion(text_states, text_mask, video_tokens)
        return self.itm_head(fused[:, 0])[:, 1]

    def forward(self, video: torch.Tensor | None = None, text=None) -> dict:
        out: dict = {"logit_scale": self.logit_scale}
        if video is not None:
            out["video_features"] = self.encode_video(video)
        if text is not None:
            out["text_features"] = self.encode_text(text)
        return out


@torch.no_grad()
def itm_rerank(model: UMTModel, sim: torch.Tensor, text_states: torch.Tensor, text_mask: torch.Tensor,
               video_tokens: torch.Tensor, k: int, direction: str = "t2v", batch_size: int = 32,
               progress: Callable[[int], object] | None = None) -> torch.Tensor:
    """The release's re-ranking: each query's top `k` candidates by `sim` get the raw ITM logit, all else -100.

    sim: (texts, videos) similarity; text_states (texts, L, H) and text_mask (texts, L) from `text_states`;
    video_tokens (videos, S, D) from `video_features` (kept on any device; moved per batch). direction "t2v"
    ranks videos for each text -> (texts, videos); "v2t" texts for each video -> (videos, texts).
    `progress(n)` is called after each query. Scores are float32.
    """
    if direction not in ("t2v", "v2t"):
        raise ValueError(f"direction must be 't2v' or 'v2t', got {direction!r}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    device = model.itm_head.weight.device
    scores = sim.float() if direction == "t2v" else sim.float().T  # (queries, candidates)
    out = torch.full(scores.shape, -100.0)
    k = min(k, scores.shape[1])
    for q in range(scores.shape[0]):
        top = scores[q].topk(k).indices  # (k,)
        top_dev = top.to(video_tokens.device)
        row = []
        for a in range(0, k, batch_size):
            idx = top_dev[a:a + batch_size]
            n = len(idx)
            if direction == "t2v":
                states, mask = text_states[q:q + 1].expand(n, -1, -1), text_mask[q:q + 1].expand(n, -1)
                video = video_tokens[idx]
            else:
                states, mask = text_states[idx.to(text_states.device)], text_mask[idx.to(text_mask.device)]
                video = video_tokens[q:q + 1].expand(n, -1, -1)
            row.append(model.itm_scores(states.to(device), mask.to(device), video.to(device)).float().cpu())
        out[q, top] = torch.cat(row)
        if progress is not None:
            progress(1)
    return out
