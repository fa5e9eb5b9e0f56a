"""Text towers through open_clip: its CLIP text transformer at any size, or a Hugging Face model from a local folder."""
from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from .config import ConfigError
from .tokenizer import DEFAULT_CONTEXT_LENGTH, Tokenizer, load_tokenizer, resolve_hf_folder

CLIP_POOLERS = ("eos", "argmax", "first", "last")
HF_POOLERS = ("mean_pooler", "cls_pooler", "cls_last_hidden_state_pooler")  # open_clip's max_pooler is broken in 3.3
FREEZE_MODES = ("none", "all", "all_but_last_N")
# open_clip text_cfg keys TextConfig can express; any other key changes the architecture in ways we don't model.
_OPEN_CLIP_SIZE_KEYS = ("width", "layers", "heads", "context_length", "vocab_size", "mlp_ratio")
# Files a Hugging Face folder needs besides weights: model config and every tokenizer format.
HF_CONFIG_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "vocab.txt", "vocab.json", "merges.txt", "spiece.model",
                   "sentencepiece.bpe.model", "tokenizer.model")


@dataclass
class TextConfig:
    kind: str = "clip"                  # "clip": open_clip's CLIP text transformer | "hf": local Hugging Face folder
    width: int | None = None            # clip: model width (unset: open_clip_model's, else 512); hf: the folder's
    layers: int | None = None           # clip: transformer blocks (unset: open_clip_model's, else 12); hf: read
    heads: int | None = None            # clip: attention heads, must divide width (unset: ..., else 8); hf: read
    mlp_ratio: float | None = None      # clip: MLP hidden / width (unset: open_clip_model's, else 4.0)
    context_length: int | None = None   # tokens/caption incl. start/end (unset: open_clip_model's, else 77); UMT: 32-40
    vocab_size: int | None = None       # embedding rows (unset: the tokenizer's; hf: the folder's)
    pad_id: int | None = None           # padding id; hf builds its attention mask from it (unset: the tokenizer's)
    eos_id: int | None = None           # end id; the "eos" pooler reads features there (unset: the tokenizer's)
    causal: bool = True                 # clip: CLIP's causal mask; False = bidirectional + padding mask (allows MLM)
    quick_gelu: bool = False            # clip: QuickGELU activation, as OpenAI's CLIP weights were trained with
    open_clip_model: str | None = None  # clip: open_clip model config (e.g. "ViT-B-32") whose text_cfg sets unset sizes
    hf_folder: str | None = None        # hf: local model folder, or "pkg:<distribution>" (shipped in a package)
    init_checkpoint: str | None = None  # clip: local open_clip checkpoint (.pt/.bin/.safetensors) with the text weights
    freeze: str = "none"                # "none" | "all" | "all_but_last_N" (train last unfrozen_layers blocks + head)
    unfrozen_layers: int = 0            # N for freeze="all_but_last_N"; 1..layers
    pooler: str | None = None           # clip: "eos" (default) | "argmax" | "first" | "last"; hf: "mean_pooler"
                                        # (default) | "cls_pooler" | "cls_last_hidden_state_pooler"
    output_dim: int | None = None       # projection inside the tower; unset/0: none (the dual encoder projects width)
    tokenizer: str | None = None        # "bpe" | "sentencepiece" | "hf" (unset: "hf" for kind hf, else "bpe")
    tokenizer_path: str | None = None   # sentencepiece: .model or saved folder; hf: folder (unset: hf_folder)


class TextTower(nn.Module):
    """Uniform face over an open_clip text module: tokens (B, L) -> pooled (B, output_dim), plus per-token states."""

    def __init__(self, body: nn.Module, config: TextConfig):
        super().__init__()
        self.body = body  # open_clip TextTransformer or HFTextEncoder
        self.config = config  # resolved: every size filled in
        self.kind = config.kind
        self.width = config.width
        self.output_dim = config.output_dim or config.width
        self.context_length = config.context_length
        self.vocab_size = config.vocab_size
        self.pad_id = config.pad_id
        # Causal towers see only the left context, so MLM would be next-token guessing; callers skip it.
        self.is_causal = config.kind == "clip" and config.causal

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.forward_features(tokens)[0]  # (B, output_dim)

    def forward_features(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens (B, L) -> (pooled (B, output_dim), token states (B, L, width)) for MLM heads."""
        if tokens.dim() != 2:
            raise ValueError(f"text tokens must be (B, L), got {tuple(tokens.shape)}")
        if tokens.shape[1] > self.context_length:
            raise ValueError(f"{tokens.shape[1]} tokens per caption but the text tower has {self.context_length} "
                             "positions; tokenize with its context_length")
        if self.kind == "clip":
            length = tokens.shape[1]
            if length < self.context_length:
                # open_clip slices its causal mask only together with a padding mask, so feed full
                # length; trailing pads can't reach earlier tokens or the pooled end token.
                tokens = nn.functional.pad(tokens, (0, self.context_length - length), value=self.pad_id)
            pooled, states = self.body(tokens)  # built with output_tokens=True
            return pooled, states[:, :length]
        # HFTextEncoder.forward drops the CLS position from its token output; MLM labels need all positions.
        mask = (tokens != self.pad_id).long()  # (B, L)
        out = self.body.transformer(input_ids=tokens, attention_mask=mask)
        pooled = self.body.proj(self.body.pooler(out, mask))
        return pooled, out.last_hidden_state

    def blocks(self) -> nn.ModuleList:
        """The transformer blocks, input side first."""
        if self.kind == "clip":
            return self.body.transformer.resblocks
        encoder = getattr(self.body.transformer, "encoder", self.body.transformer)
        for attr in ("layer", "layers", "block"):
            if isinstance(getattr(encoder, attr, None), nn.ModuleList):
                return getattr(encoder, attr)
        raise AttributeError(f"can't find the layer list of {type(self.body.transformer).__name__}")

    def head_modules(self) -> list[nn.Module]:
        """What sits after the blocks: final norm and projection (clip); pooler and projection (hf)."""
        if self.kind == "clip":
            mods = [self.body.ln_final]
            proj = self.body.text_projection
            if isinstance(proj, nn.Module):
                mods.append(proj)
            return mods
        return [m for m in (getattr(self.body.transformer, "pooler", None), self.body.proj) if m is not None]

    def get_input_embeddings(self) -> nn.Embedding:
        """Token embedding table (an MLM head may tie its output weights to it)."""
        if self.kind == "clip":
            return self.body.token_embedding
        return self.body.transformer.get_input_embeddings()

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        if self.kind == "clip":
            self.body.set_grad_checkpointing(enable)
            return
        # Non-reentrant checkpointing keeps gradients flowing when the embeddings are frozen;
        # open_clip's own switch ignores `enable` and uses the reentrant default.
        model = self.body.transformer
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5 renamed the switch
            if enable:
                model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                model.activation_checkpointing_disable()
        elif enable:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_disable()

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        if self.kind == "clip":
            return {"body.positional_embedding"}
        return set()


def _open_clip_text_cfg(name: str) -> tuple[dict, bool]:
    """(text_cfg, quick_gelu) of an open_clip model config; reads JSON shipped with open_clip, downloads nothing."""
    import open_clip

    cfg = open_clip.get_model_config(name)
    if cfg is None:
        raise ConfigError(f"unknown open_clip model config {name!r}; see open_clip.list_models()")
    text_cfg = dict(cfg.get("text_cfg", {}))
    if "hf_model_name" in text_cfg:
        raise ConfigError(f"open_clip model {name!r} has a Hugging Face text tower ({text_cfg['hf_model_name']}); "
                         "use kind 'hf' with a local folder instead")
    # Tokenizer-only keys don't change the tower; anything else (cls token, bidirectional, ...) does.
    harmless = {"tokenizer_kwargs", "clean"}
    unknown = sorted(set(text_cfg) - set(_OPEN_CLIP_SIZE_KEYS) - harmless)
    if unknown:
        raise ConfigError(f"open_clip model {name!r}: text_cfg keys {unknown} are not expressible in TextConfig; "
                         "pick a plain CLIP config (e.g. ViT-B-32) or set the sizes yourself")
    return text_cfg, bool(cfg.get("quick_gelu", False))


def _hf_config(folder: Path):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(str(folder), local_files_only=True)


def _fill(cfg: TextConfig, name: str, value, source: str, strict: bool) -> None:
    """Set cfg.<name> to value when unset; when `strict`, an explicit different value is an error."""
    current = getattr(cfg, name)
    if current is None:
        setattr(cfg, name, value)
    elif strict and current != value:
        raise ConfigError(f"text.{name}={current} contradicts {source} ({value}); leave it unset")


def resolve_text_config(cfg: TextConfig, tokenizer: Tokenizer | None = None) -> TextConfig:
    """A copy of `cfg` with every size filled (open_clip_model, HF folder, tokenizer, defaults); validates choices.

    Idempotent, so a resolved config saved with a model resolves to itself on reload. The tokenizer
    is loaded from the config when needed and not given.
    """
    c = dataclasses.replace(cfg)
    if c.kind not in ("clip", "hf"):
        raise ConfigError(f"text.kind must be 'clip' or 'hf', got {c.kind!r}")
    if c.freeze not in FREEZE_MODES:
        raise ConfigError(f"text.freeze must be one of {FREEZE_MODES}, got {c.freeze!r}")
    if c.tokenizer is None:
        c.tokenizer = "hf" if c.kind == "hf" else "bpe"
    if c.kind == "clip":
        if c.hf_folder is not None:
            raise ConfigError("text.hf_folder is only for kind 'hf'")
        if c.open_clip_model:
            text_cfg, quick_gelu = _open_clip_text_cfg(c.open_clip_model)
            for key in _OPEN_CLIP_SIZE_KEYS:
                if key in text_cfg:
                    _fill(c, key, text_cfg[key], c.open_clip_model, strict=False)
            c.quick_gelu = c.quick_gelu or quick_gelu
        for key, default in (("width", 512), ("layers", 12), ("heads", 8), ("mlp_ratio", 4.0),
                             ("context_length", DEFAULT_CONTEXT_LENGTH)):
            _fill(c, key, default, "default", strict=False)
        if c.width % c.heads:
            raise ConfigError(f"text.heads={c.heads} must divide text.width={c.width}")
        c.pooler = c.pooler or "eos"
        if c.pooler not in CLIP_POOLERS:
            raise ConfigError(f"text.pooler for kind clip must be one of {CLIP_POOLERS}, got {c.pooler!r}")
    else:
        if not c.hf_folder:
            raise ConfigError("text.kind 'hf' needs text.hf_folder (a local folder or 'pkg:<distribution>')")
        if c.init_checkpoint:
            raise ConfigError("text.init_checkpoint is for kind 'clip'; an hf tower's weights come from hf_folder")
        if c.open_clip_model:
            raise ConfigError("text.open_clip_model is for kind 'clip'")
        hf = _hf_config(resolve_hf_folder(c.hf_folder))
        where = f"the Hugging Face config in {c.hf_folder}"
        for key, value in (("width", hf.hidden_size), ("layers", hf.num_hidden_layers),
                           ("heads", hf.num_attention_heads), ("vocab_size", hf.vocab_size)):
            _fill(c, key, value, where, strict=True)
        if getattr(hf, "pad_token_id", None) is not None:
            _fill(c, "pad_id", hf.pad_token_id, where, strict=True)
        _fill(c, "context_length", DEFAULT_CONTEXT_LENGTH, "default", strict=False)
        max_pos = getattr(hf, "max_position_embeddings", None)
        if max_pos and c.context_length > max_pos:
            raise ConfigError(f"text.context_length={c.context_length} exceeds the model's {max_pos} positions")
        c.pooler = c.pooler or "mean_pooler"
        if c.pooler not in HF_POOLERS:
            raise ConfigError(f"text.pooler for kind hf must be one of {HF_POOLERS}, got {c.pooler!r}")
    if c.freeze == "all_but_last_N" and not 1 <= c.unfrozen_layers <= c.layers:
        raise ConfigError(f"text.unfrozen_layers must be in 1..{c.layers} for freeze=all_but_last_N, "
                         f"got {c.unfrozen_layers}")
    if None in (c.vocab_size, c.pad_id, c.eos_id):
        tok = tokenizer if tokenizer is not None else load_tokenizer(c)
        _fill(c, "vocab_size", tok.vocab_size, "the tokenizer", strict=False)
        _fill(c, "pad_id", tok.pad_id, "the tokenizer", strict=False)
        _fill(c, "eos_id", tok.eot_id, "the tokenizer", strict=False)
    return c


def _build_clip(c: TextConfig) -> nn.Module:
    from open_clip.transformer import QuickGELU, TextTransformer

    return TextTransformer(
        context_length=c.context_length, vocab_size=c.vocab_size, width=c.width, heads=c.heads,
        layers=c.layers, mlp_ratio=c.mlp_ratio, output_dim=c.output_dim or None,
        no_causal_mask=not c.causal, use_pad_mask=not c.causal, pad_id=c.pad_id, eos_id=c.eos_id,
        pool_type=c.pooler, act_layer=QuickGELU if c.quick_gelu else nn.GELU, output_tokens=True,
    )


def _build_hf(c: TextConfig, pretrained: bool) -> nn.Module:
    from open_clip.hf_model import HFTextEncoder

    folder = resolve_hf_folder(c.hf_folder)
    out_dim = c.output_dim or c.width
    # HFTextEncoder never builds a projection when proj_type is None and the sizes differ (then fails in
    # forward), so ask for a linear one explicitly.
    proj_type = None if out_dim == c.width else "linear"
    return HFTextEncoder(str(folder), output_dim=out_dim, pooler_type=c.pooler, proj_type=proj_type,
                         pretrained=pretrained)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    sd = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):  # open_clip training checkpoints
        sd = sd["state_dict"]
    return sd


def load_open_clip_text_weights(tower: TextTower, path: str | Path) -> dict[str, list[str]]:
    """Copy the text-tower weights of a local open_clip checkpoint into a clip-kind tower; returns a report.

    Accepts CLIP (top-level keys) and CustomTextCLIP ("text." keys), with or without DDP's "module.".
    A longer positional table is cut to the tower's context length (as UMT does with CLIP's 77).
    Every tower weight must be found; a checkpoint projection the tower doesn't have is skipped.
    """
    if tower.kind != "clip":
        raise ValueError("open_clip checkpoints only initialise kind 'clip' text towers")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"text init checkpoint not found: {path}")
    sd = {k.removeprefix("module."): v for k, v in _read_state_dict(path).items()}
    if any(k.startswith("text.") for k in sd):
        sd = {k[len("text."):]: v for k, v in sd.items() if k.startswith("text.")}
    prefixes = ("token_embedding.", "positional_embedding", "transformer.", "ln_final.", "text_projection")
    src = {k: v for k, v in sd.items() if k.startswith(prefixes)}
    if not src:
        raise ValueError(f"{path}: no open_clip text-tower weights (token_embedding, transformer.*, ...) found")
    target = tower.body.state_dict()
    missing = sorted(set(target) - set(src))
    if missing:
        raise ValueError(f"{path}: checkpoint lacks text weights {missing[:8]}{' ...' if len(missing) > 8 else ''}")
    ignored = sorted(set(src) - set(target))
    load = {}
    for key, want in target.items():
        have = src[key]
        if key == "positional_embedding" and have.shape[0] > want.shape[0] and have.shape[1:] == want.shape[1:]:
            have = have[: want.shape[0]]
        if have.shape != want.shape:
            raise ValueError(f"{path}: {key} is {tuple(have.shape)} in the checkpoint but {tuple(want.shape)} in the "
                             "tower; match width/layers/heads/vocab_size/context_length (or set open_clip_model)")
        load[key] = have
    tower.body.load_state_dict(load, strict=True)
    return {"loaded": sorted(load), "ignored": ignored}


def apply_freeze(tower: TextTower, mode: str, unfrozen_layers: int = 0) -> None:
    """Set requires_grad: "none" trains all, "all" nothing, "all_but_last_N" the last N blocks and the head."""
    if mode not in FREEZE_MODES:
        raise ValueError(f"freeze must be one of {FREEZE_MODES}, got {mode!r}")
    for p in tower.parameters():
        p.requires_grad = mode == "none"
    if mode == "all_but_last_N":
        blocks = tower.blocks()
        if not 1 <= unfrozen_layers <= len(blocks):
            raise ValueError(f"unfrozen_layers must be in 1..{len(blocks)}, got {unfrozen_layers}")
        for module in [*blocks[len(blocks) - unfrozen_layers:], *tower.head_modules()]:
            for p in module.parameters():
                p.requires_grad = True
        if tower.kind == "clip" and isinstance(tower.body.text_projection, nn.Parameter):
            tower.body.text_projection.requires_grad = True


def create_text_tower(cfg: TextConfig, tokenizer: Tokenizer | None = None, pretrained: bool = True) -> TextTower:
    """Build the text tower `cfg` describes; `tower.config` is the resolved config to save with the model.

    pretrained=False skips every weight source (HF folder weights, init_checkpoint): use it when the
    weights come from a saved model's safetensors, e.g. on a folder written by export_hf_files.
    """
    c = resolve_text_config(cfg, tokenizer)
    body = _build_clip(c) if c.kind == "clip" else _build_hf(c, pretrained)
    tower = TextTower(body, c)
    if pretrained and c.init_checkpoint:
        load_open_clip_text_weights(tower, c.init_checkpoint)
    apply_freeze(tower, c.freeze, c.unfrozen_layers)
    return tower


def text_tower_source(cfg: TextConfig) -> dict:
    """Where a tower's starting weights came from, for the model folder's provenance record."""
    if cfg.kind == "clip":
        return {"kind": "clip", "open_clip_model": cfg.open_clip_model, "init_checkpoint": cfg.init_checkpoint}
    folder = resolve_hf_folder(cfg.hf_folder)
    hf = _hf_config(folder)
    # AutoConfig overwrites _name_or_path with the local path; the raw file keeps the Hub origin.
    raw = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    source = {"kind": "hf", "hf_folder": cfg.hf_folder, "resolved_folder": str(folder.resolve()),
              "model_type": hf.model_type, "name_or_path": raw.get("_name_or_path")}
    if cfg.hf_folder.startswith("pkg:"):
        from importlib.metadata import PackageNotFoundError, version

        try:
            source["package_version"] = version(cfg.hf_folder[4:])
        except PackageNotFoundError:
            pass
    return source


def export_hf_files(cfg: TextConfig, dest_dir: str | Path) -> list[Path]:
    """Copy an hf tower's config.json and tokenizer files (not weights) into `dest_dir`; returns the copies.

    A saved model then rebuilds offline without the original folder:
    create_text_tower(dataclasses.replace(cfg, hf_folder=str(dest_dir)), pretrained=False),
    then load the model's own weights.
    """
    if cfg.kind != "hf":
        raise ValueError("export_hf_files is for kind 'hf' text towers")
    src = resolve_hf_folder(cfg.hf_folder)
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    copied = []
    for name in HF_CONFIG_FILES:
        if (src / name).is_file():
            shutil.copyfile(src / name, dest / name)
            copied.append(dest / name)
    return copied
