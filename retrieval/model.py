"""The dual encoder: VideoMamba video tower + text tower + projections + learnable temperature; saved as one folder."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import ConfigError, from_dict, load_yaml, save_yaml, to_dict
from .io import atomic_write, fsync_dir, fsync_tree
from .text import TextConfig, create_text_tower
from .tokenizer import check_compatible, load_tokenizer
from .videomamba import VideoMamba, VideoMambaConfig, video_encoder_config

FORMAT_VERSION = 1
_TOKENIZER_DIR = "tokenizer"  # inside a model folder
_HF_DIR = "text_model"        # HF tower config + tokenizer files inside a model folder
POOLINGS = ("cls", "cls_mean", "frames")
DOMAINS = ("synthetic", "real", "unknown")


@dataclass
class VideoTowerConfig:
    name: str = "videomamba_tiny"     # registry size; `encoder` fields below override it
    encoder: dict = field(default_factory=dict)  # VideoMambaConfig overrides, e.g. {num_frames: 16, img_size: 112}
    pooling: str = "frames"           # cls | cls_mean | frames (release: per-frame cls+mean, averaged over frames)
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)  # input normalisation the model expects
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    init_checkpoint: str | None = None  # optional published VideoMamba checkpoint to start from

    def encoder_config(self) -> VideoMambaConfig:
        return video_encoder_config(self.name, **self.encoder)

    @property
    def num_frames(self) -> int:
        return self.encoder_config().num_frames

    @property
    def img_size(self) -> int:
        return self.encoder_config().img_size


@dataclass
class ModelConfig:
    video: VideoTowerConfig = field(default_factory=VideoTowerConfig)
    text: TextConfig = field(default_factory=TextConfig)
    embed_dim: int = 512              # shared video-text space
    temp_init: float = 0.07           # logits = cos / temp; release init 0.07
    temp_min: float = 0.001           # release clamps temp to [0.001, 0.5] after each step
    temp_max: float = 0.5
    teacher_dim: int = 0              # >0 adds the token decoder for unmasked-token alignment

    def validate(self) -> "ModelConfig":
        if self.video.pooling not in POOLINGS:
            raise ConfigError(f"video.pooling must be one of {POOLINGS}, got {self.video.pooling!r}")
        if not 0 < self.temp_min <= self.temp_init <= self.temp_max:
            raise ConfigError(f"need 0 < temp_min <= temp_init <= temp_max, got "
                              f"{self.temp_min}, {self.temp_init}, {self.temp_max}")
        self.video.encoder_config()  # raises on bad encoder fields
        return self


@dataclass
class CardResult:
    what: str = ""                    # test set and metric, e.g. "synthetic test split, text-to-video R@1 / R@5"
    value: str = ""                   # the measured figure, e.g. "92.9% / 100.0%"
    command: str = ""                 # the command that measured it


@dataclass
class ModelCard:
    """What a model folder says about itself (the `card` section of its config.yaml): shown by `vmr index info` and
    the app, and read by the commands that warn when a model meets footage unlike what it was trained on."""
    domain: str = "unknown"           # synthetic | real | unknown: the kind of video it was trained on
    summary: str = ""                 # its domain in one line: what it can find
    data: str = ""                    # training data (dataset names, split)
    clips: int = 0                    # training clips (0: not recorded)
    steps: int = 0                    # optimizer steps (0: not recorded)
    input: str = ""                   # frames and resolution per segment; save_model fills it from the config
    text_tower: str = ""              # save_model describes the tower when left empty
    results: list[CardResult] = field(default_factory=list)  # measured results, each with its command
    vocabulary: dict = field(default_factory=dict)  # words it was trained on by kind (colours: [...]); synthetic models
    examples: list[str] = field(default_factory=list)  # example queries for the app
    scores: str = ""                  # what a score of a true match looks like, measured

    def validate(self) -> "ModelCard":
        if self.domain not in DOMAINS:
            raise ConfigError(f"card.domain must be one of {DOMAINS}, got {self.domain!r}")
        if not all(isinstance(k, str) and isinstance(v, list) and all(isinstance(w, str) for w in v)
                   for k, v in self.vocabulary.items()):
            raise ConfigError("card.vocabulary maps a kind of word to a list of words")
        return self


def describe_input(cfg: ModelConfig) -> str:
    return f"{cfg.video.num_frames} frames at {cfg.video.img_size} px per segment"


def describe_text_tower(cfg: TextConfig, source: dict | None = None) -> str:
    """One line: which text tower, its size, what was frozen."""
    source = source or {}
    size = f"{cfg.layers} layers x {cfg.width}"
    if cfg.kind == "hf":
        name = source.get("name_or_path") or source.get("hf_folder") or cfg.hf_folder
        where = f" from {source['hf_folder']}" if str(source.get("hf_folder", "")).startswith("pkg:") else ""
        what = f"{name} ({source.get('model_type', 'hf')}, {size}){where}"
    elif cfg.open_clip_model or cfg.init_checkpoint:
        what = f"open_clip {cfg.open_clip_model or 'CLIP'} text transformer ({size})"
    else:
        what = f"CLIP-style text transformer ({size}) trained from scratch"
    if cfg.freeze == "all":
        what += ", frozen"
    elif cfg.freeze == "all_but_last_N":
        what += f", all but the last {cfg.unfrozen_layers} blocks frozen"
    return what


# Where weights and tokenizer files were read from: save_model and load_model rewrite these, embeddings never see them.
_SOURCE_FIELDS = frozenset({"init_checkpoint", "tokenizer_path", "hf_folder"})


def _without_sources(cfg: dict) -> dict:
    return {k: _without_sources(v) if isinstance(v, dict) else v for k, v in cfg.items() if k not in _SOURCE_FIELDS}


def config_weights_id(model: nn.Module) -> str:
    """`model_id` of both model kinds, in memory and after load_model alike (an index built with one opens with the
    other): 16 hex digits of sha256 over `model.config`, less file locations, and every tensor. Not the weights
    file's hash: its bytes change with how a folder stores the same model (a package's tensors referenced, a .pth
    and its converted folder), and the config (pooling, frames) changes embeddings without changing a tensor."""
    h = hashlib.sha256(json.dumps(_without_sources(to_dict(model.config)), sort_keys=True).encode())
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def complete_card(card: ModelCard | None, model: "VideoTextModel", source: dict | None = None) -> ModelCard:
    """The card with what the model itself can tell (input, text tower) filled in where empty."""
    card = dataclasses.replace(card) if card is not None else ModelCard()
    card.input = card.input or describe_input(model.config)
    card.text_tower = card.text_tower or describe_text_tower(model.config.text, source)
    return card.validate()


class RetrievalModule(nn.Module):
    """What both model kinds (VideoTextModel, umt.UMTModel) derive from their temperature and their weights."""

    _model_id: str | None = None  # cached; reset to None whenever the weights change

    @property
    def logit_scale(self) -> torch.Tensor:
        return 1.0 / self.temp

    @property
    def model_id(self) -> str:
        """Stable id of config + weights (config_weights_id), computed on first use."""
        if self._model_id is None:
            self._model_id = config_weights_id(self)
        return self._model_id


class VideoTextModel(RetrievalModule):
    """open_clip-shaped dual encoder: `encode_video`, `encode_text`, `forward` -> features + logit scale."""

    def __init__(self, cfg: ModelConfig, tokenizer=None, pretrained: bool = True):
        """pretrained=False skips the text tower's weight sources (weights then come from a saved model)."""
        super().__init__()
        cfg.validate()
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(cfg.text)
        self.text = create_text_tower(cfg.text, self.tokenizer, pretrained=pretrained)
        check_compatible(self.tokenizer, self.text.config)
        self.config = dataclasses.replace(cfg, text=self.text.config)  # every text size resolved
        self.visual = VideoMamba(cfg.video.encoder_config())
        self.vision_proj = nn.Linear(self.visual.embed_dim, cfg.embed_dim)
        self.text_proj = nn.Linear(self.text.output_dim, cfg.embed_dim)
        self.temp = nn.Parameter(torch.tensor(cfg.temp_init))
        self.token_decoder = None
        if cfg.teacher_dim > 0:
            self.token_decoder = nn.Sequential(nn.Linear(self.visual.embed_dim, cfg.teacher_dim),
                                               nn.LayerNorm(cfg.teacher_dim))
        self.card: ModelCard | None = None  # set by load_model (None: a folder saved before cards existed)

    # -- training hooks ----------------------------------------------------------------------------
    def clamp_temperature(self) -> None:
        """Keep temp in the release's range; call after every optimizer step."""
        with torch.no_grad():
            self.temp.clamp_(self.config.temp_min, self.config.temp_max)
        self._model_id = None

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.visual.set_grad_checkpointing(enable)
        if hasattr(self.text, "set_grad_checkpointing"):
            self.text.set_grad_checkpointing(enable)

    def no_weight_decay(self) -> set[str]:
        names = {f"visual.{n}" for n in self.visual.no_weight_decay()}
        names.add("temp")
        for n, p in self.named_parameters():
            if p.ndim <= 1 or "positional_embedding" in n or "position_embeddings" in n:
                names.add(n)
        return names

    # -- encoders ----------------------------------------------------------------------------------
    def video_tokens(self, video: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 3, T, H, W) -> final-normed tokens (B, 1 + N_vis, D)."""
        return self.visual.forward_features(video, mask)

    def pool_video(self, tokens: torch.Tensor, masked: bool = False) -> torch.Tensor:
        """Tokens -> (B, D) video feature as the config's pooling says."""
        pooling = self.config.video.pooling
        if pooling == "cls":
            return tokens[:, 0]
        if pooling == "cls_mean" or masked:  # masked frames keep unequal token counts: pool over all
            return self.visual.pool_frames(tokens, num_frames=1)[:, 0]
        return self.visual.pool_frames(tokens).mean(1)

    def encode_video(self, video: torch.Tensor, normalize: bool = True,
                     mask: torch.Tensor | None = None) -> torch.Tensor:
        """video (B, 3, T, H, W) float, normalised with config.video.mean/std -> (B, embed_dim)."""
        feats = self.vision_proj(self.pool_video(self.video_tokens(video, mask), masked=mask is not None))
        return F.normalize(feats, dim=-1) if normalize else feats

    def tokenize(self, texts) -> torch.Tensor:
        return self.tokenizer(texts, context_length=self.config.text.context_length)

    def encode_text(self, texts, normalize: bool = True) -> torch.Tensor:
        """texts: a list of strings (tokenised with the model's own tokenizer) or token ids (B, L) -> (B, embed_dim)."""
        if isinstance(texts, str):
            texts = [texts]
        if not torch.is_tensor(texts):
            texts = self.tokenize(list(texts))
        tokens = texts.to(self.text_proj.weight.device)
        feats = self.text_proj(self.text(tokens))
        return F.normalize(feats, dim=-1) if normalize else feats

    def forward(self, video: torch.Tensor | None = None, text=None, mask: torch.Tensor | None = None) -> dict:
        """Features for training: normalised video/text features, the logit scale and (masked) video tokens."""
        out: dict = {"logit_scale": self.logit_scale}
        if video is not None:
            tokens = self.video_tokens(video, mask)
            feats = self.vision_proj(self.pool_video(tokens, masked=mask is not None))
            out["video_features"] = F.normalize(feats, dim=-1)
            out["video_tokens"] = tokens[:, 1:]
            if self.token_decoder is not None:
                out["decoded_tokens"] = self.token_decoder(tokens[:, 1:])
        if text is not None:
            out["text_features"] = self.encode_text(text)
        return out


def create_model(config: ModelConfig | dict | str | Path | None = None, **overrides) -> VideoTextModel:
    """Build a dual encoder from a ModelConfig, a dict, or a YAML file (with optional top-level overrides)."""
    if config is None:
        config = ModelConfig()
    if isinstance(config, (str, Path)):
        config = load_yaml(config)
    if isinstance(config, dict):
        config = from_dict(ModelConfig, {**config, **overrides})
    elif overrides:
        config = dataclasses.replace(config, **overrides)
    model = VideoTextModel(config)
    if config.video.init_checkpoint:
        from .checkpoint import load_video_encoder
        enc = load_video_encoder(config.video.init_checkpoint, **dataclasses.asdict(config.video.encoder_config()))
        model.visual.load_state_dict(enc.state_dict())
    return model


def _weights(model: nn.Module, dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    return {k: v.detach().to(dtype or v.dtype).contiguous().cpu() for k, v in model.state_dict().items()}


def _write_umt_files(model, tmp: Path, dtype: torch.dtype | None) -> None:
    from safetensors.torch import save_file

    model.tokenizer.save(tmp / _TOKENIZER_DIR)
    meta = {"format_version": FORMAT_VERSION, "kind": "umt", "model": to_dict(model.config)}
    source = getattr(getattr(model, "load_report", None), "source", "")
    if source:  # provenance: which release checkpoint this folder was converted from
        meta["converted_from"] = {"checkpoint": str(Path(source).resolve()), "model_id": model.model_id}
    save_file(_weights(model, dtype), str(tmp / "model.safetensors"))
    save_yaml(meta, tmp / "config.yaml")


def _write_dual_files(model: VideoTextModel, tmp: Path, dtype: torch.dtype | None, reference_pretrained: bool,
                      card: ModelCard | None) -> None:
    from safetensors.torch import save_file

    from .text import export_hf_files, text_tower_source

    text = dataclasses.replace(model.config.text, init_checkpoint=None, tokenizer_path=_TOKENIZER_DIR)
    if text.kind == "hf":
        export_hf_files(model.config.text, tmp / _HF_DIR)
        text = dataclasses.replace(text, hf_folder=_HF_DIR)
    video = dataclasses.replace(model.config.video, init_checkpoint=None)
    cfg = dataclasses.replace(model.config, text=text, video=video)
    model.tokenizer.save(tmp / _TOKENIZER_DIR)
    state = _weights(model, dtype)
    source = text_tower_source(model.config.text)
    meta = {"format_version": FORMAT_VERSION, "model": to_dict(cfg), "text_source": source,
            "card": to_dict(complete_card(card or model.card, model, source))}
    if reference_pretrained:
        from .pretrained_ref import split_pretrained

        state, meta["pretrained_ref"] = split_pretrained(model, state, model.config.text.hf_folder)
    save_file(state, str(tmp / "model.safetensors"))
    save_yaml(meta, tmp / "config.yaml")


def save_model(model: VideoTextModel, path: str | Path, dtype: torch.dtype | None = None,
               reference_pretrained: bool = False, card: ModelCard | None = None) -> Path:
    """Write `path/` = config.yaml + model.safetensors + tokenizer/ (+ text_model/ for HF towers), atomically.

    config.yaml carries a `card` (`card`, else the model's own, else a blank one; input and text tower are
    filled in from the config either way).

    Everything needed to rebuild is inside the folder (no network, no original HF folder): the HF
    tower's config and tokenizer files are copied and the config points at them relatively.
    `reference_pretrained=True` (HF towers) leaves out the tower tensors still equal to its source's and
    records a checksummed reference to them instead (see retrieval.pretrained_ref): a much smaller folder
    that then needs that source (e.g. the installed package) to load. The release's multimodal model
    (retrieval.umt.UMTModel) is written the same way, with `kind: umt` in config.yaml.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        if getattr(model.config, "kind", None) == "umt":  # the release's multimodal model (retrieval.umt)
            _write_umt_files(model, tmp, dtype)
        else:
            _write_dual_files(model, tmp, dtype, reference_pretrained, card)
        fsync_tree(tmp)  # durable before it takes the final name (a power loss must not leave empty files there)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # a full disk leaves no half-written folder behind
        raise
    if path.exists():  # swap in the new folder; the old one is removed only after the rename
        old = path.with_name(path.name + ".old")
        if old.exists():
            shutil.rmtree(old)
        path.rename(old)
        tmp.rename(path)
        shutil.rmtree(old)
    else:
        tmp.rename(path)
    fsync_dir(path.parent)
    return path


def load_model(path: str | Path, device: str | torch.device = "cpu") -> VideoTextModel:
    """Load a model folder written by `save_model`, or the release's multimodal checkpoint file (.pth), with no
    network; weights come back in float32."""
    from safetensors.torch import load_file

    path = Path(path)
    if path.is_file():  # a checkpoint file: only the release's multimodal layout carries a text tower
        from .checkpoint import load_retrieval_model

        return load_retrieval_model(path, device=device)
    cfg_file, weights = path / "config.yaml", path / "model.safetensors"
    if not cfg_file.is_file() or not weights.is_file():
        raise FileNotFoundError(f"{path} is not a model folder (needs config.yaml and model.safetensors)")
    data = load_yaml(cfg_file)
    if data.get("format_version") != FORMAT_VERSION:
        raise ConfigError(f"{cfg_file}: format_version {data.get('format_version')!r}, expected {FORMAT_VERSION}")
    if data.get("kind") == "umt":
        from .umt import UMTConfig, UMTModel

        model = UMTModel(from_dict(UMTConfig, data["model"], "model"), load_tokenizer(path / _TOKENIZER_DIR))
        model.load_state_dict({k: v.float() for k, v in load_file(str(weights)).items()}, strict=True)
        return model.to(device).eval()
    cfg = from_dict(ModelConfig, data["model"], "model")
    text = dataclasses.replace(cfg.text, tokenizer_path=str(path / _TOKENIZER_DIR))
    if text.kind == "hf":
        text = dataclasses.replace(text, hf_folder=str(path / _HF_DIR))
    cfg = dataclasses.replace(cfg, text=text)
    tokenizer = load_tokenizer(path / _TOKENIZER_DIR)
    model = VideoTextModel(cfg, tokenizer=tokenizer, pretrained=False)
    state = dict(load_file(str(weights)))
    if "pretrained_ref" in data:
        from .pretrained_ref import load_pretrained

        state.update(load_pretrained(data["pretrained_ref"]))
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    model.card = read_card(path, data)
    return model.to(device).eval()


def read_card(path: str | Path, data: dict | None = None) -> ModelCard | None:
    """The model folder's card, or None for a folder saved before cards existed; a malformed card raises."""
    data = load_yaml(Path(path) / "config.yaml") if data is None else data
    if data.get("card") is None:
        return None
    try:
        return from_dict(ModelCard, data["card"], "card").validate()
    except ValueError as e:
        raise ConfigError(f"{Path(path) / 'config.yaml'}: {e}") from None


def write_card(path: str | Path, card: ModelCard) -> Path:
    """Replace the card of an existing model folder (atomically); weights and config, and so model_id, stay put."""
    cfg_file = Path(path) / "config.yaml"
    data = load_yaml(cfg_file)
    data["card"] = to_dict(card.validate())
    return atomic_write(cfg_file, lambda tmp: save_yaml(data, tmp), durable="full")
