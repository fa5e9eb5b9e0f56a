"""The optimisation engine: AdamW param groups, warmup+cosine lr, DeepSpeed (ZeRO 0/1/2, bf16/fp16) or plain
PyTorch (single process), gradient accumulation and clipping, temperature clamping, checkpoints and export."""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import shutil
from pathlib import Path

import torch
import torch.nn as nn

from retrieval.config import ConfigError
from retrieval.errors import VmrError
from retrieval.io import atomic_write, failpoint, fsync_dir, fsync_tree

from .distributed import DistInfo, all_true

log = logging.getLogger(__name__)
REPO_ROOT = Path(__file__).resolve().parents[1]
LATEST = "latest"  # file in the checkpoint folder naming the newest complete checkpoint (DeepSpeed's convention)
TMP = ".tmp"  # TAG.tmp: a checkpoint being written; it gets its tag as name only once complete
OLD = ".old"  # TAG.old: a checkpoint being replaced or pruned
_STEP_TAG = re.compile(r"step_\d+")  # the tags train.py gives (step_00000042)


class PeerSaveError(VmrError, RuntimeError):
    """Another rank failed its part of a checkpoint save; its own log says why."""


def resolve_engine_kind(kind: str) -> str:
    if kind != "auto":
        return kind
    try:
        import deepspeed  # noqa: F401
        return "deepspeed"
    except ImportError:
        return "torch"


# ---------------------------------------------------------------- optimizer pieces

def _video_layer_id(name: str, depth: int) -> int:
    """0 for embeddings, i + 1 for block i, depth + 1 for the final norms/head (BEiT-style layer decay)."""
    rest = name.split("visual.", 1)[1]
    if rest.startswith(("patch_embed", "cls_token", "pos_embed", "temporal_pos_embedding")):
        return 0
    if rest.startswith("layers."):
        return int(rest.split(".")[1]) + 1
    return depth + 1


def param_groups(module: nn.Module, no_decay: set[str], weight_decay: float, layer_decay: float = 1.0,
                 text_lr_scale: float = 1.0, depth: int = 0) -> list[dict]:
    """AdamW groups: decay only on matrices not in `no_decay`; `lr_scale` per group (layer decay, text scale)."""
    groups: dict[tuple, dict] = {}
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        decay = 0.0 if name in no_decay else weight_decay
        scale = 1.0
        if ".visual." in f".{name}" and layer_decay != 1.0:
            scale = layer_decay ** (depth + 1 - _video_layer_id(name, depth))
        elif ".text." in f".{name}":
            scale = text_lr_scale
        groups.setdefault((decay, scale), {"params": [], "weight_decay": decay, "lr_scale": scale})["params"].append(p)
    return [groups[k] for k in sorted(groups, key=lambda k: (k[1], k[0]))]


def lr_at(step: int, base_lr: float, min_lr: float, warmup: int, total: int) -> float:
    """Learning rate for optimizer step `step` (0-based): linear warmup from 0, then cosine to min_lr."""
    if warmup > 0 and step < warmup:
        return base_lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


# ---------------------------------------------------------------- DeepSpeed config

def load_deepspeed_json(path: str) -> dict:
    p = Path(path)
    if not p.is_absolute() and not p.is_file():
        p = REPO_ROOT / p
    if not p.is_file():
        raise FileNotFoundError(f"DeepSpeed config not found: {path}")
    return json.loads(p.read_text())


def resolve_optimization(cfg, world_size: int, kind: str = "deepspeed") -> tuple[dict, dict]:
    """(DeepSpeed config dict, resolved optimizer/precision settings): the JSON with the YAML's values on top."""
    ds = load_deepspeed_json(cfg.engine.deepspeed_config)
    opt = ds.pop("optimizer", {"type": "AdamW", "params": {}})
    if str(opt.get("type", "AdamW")).lower() not in ("adam", "adamw"):
        raise ConfigError(f"{cfg.engine.deepspeed_config}: optimizer type {opt.get('type')!r}; only Adam/AdamW work")
    params = dict(opt.get("params", {}))
    if ds.pop("scheduler", None) is not None:
        log.warning("deepspeed config: 'scheduler' ignored; the lr schedule comes from optim.* in the YAML")
    o = cfg.optim
    lr = o.lr if o.lr is not None else params.get("lr", 1e-4)
    wd = o.weight_decay if o.weight_decay is not None else params.get("weight_decay", 0.05)
    betas = tuple(o.betas if o.betas is not None else params.get("betas", (0.9, 0.999)))
    eps = o.eps if o.eps is not None else params.get("eps", 1e-8)
    clip = o.grad_clip if o.grad_clip is not None else ds.get("gradient_clipping", 0.0)
    # DeepSpeed's torch_autocast section: fp32 weights and optimizer, forward under torch.autocast (the torch
    # engine's numerics) instead of bf16/fp16 weights behind DeepSpeed's mixed-precision optimizer wrapper
    autocast_section = ds.pop("torch_autocast", {})
    precision = cfg.engine.precision
    if precision is None and autocast_section.get("enabled"):
        precision = {"bfloat16": "bf16", "bf16": "bf16", "float16": "fp16", "fp16": "fp16"}.get(
            str(autocast_section.get("dtype", "bfloat16")).replace("torch.", ""), "bf16")
    if precision is None:
        precision = next((p for p in ("bf16", "fp16") if ds.get(p, {}).get("enabled")), "fp32")
    autocast = bool(autocast_section.get("enabled")) and precision != "fp32"
    zero = ds.setdefault("zero_optimization", {})
    if cfg.engine.zero_stage is not None:
        zero["stage"] = cfg.engine.zero_stage
    zero.setdefault("stage", 0)
    if zero["stage"] not in (0, 1, 2):
        raise ConfigError(f"ZeRO stage {zero['stage']}: only 0, 1, 2 are supported (stage 3 partitions weights)")
    if kind == "deepspeed" and precision == "fp16" and zero["stage"] == 0 and not autocast:
        raise ConfigError("fp16 needs ZeRO stage 1 or 2 here (the temperature is clamped in its fp32 master copy)")
    ds["bf16"] = {**ds.get("bf16", {}), "enabled": precision == "bf16" and not autocast}
    fp16 = ds.get("fp16", {})
    ds["fp16"] = {"loss_scale": 0, "initial_scale_power": 16, "loss_scale_window": 1000, "hysteresis": 2,
                  "min_loss_scale": 1, **fp16, "enabled": precision == "fp16" and not autocast}
    if autocast:
        ds["torch_autocast"] = {**autocast_section, "enabled": True,
                                "dtype": {"bf16": "bfloat16", "fp16": "float16"}[precision]}
    ds["train_micro_batch_size_per_gpu"] = cfg.data.batch_size
    ds["gradient_accumulation_steps"] = cfg.engine.grad_accum
    ds["train_batch_size"] = cfg.data.batch_size * cfg.engine.grad_accum * world_size
    ds["gradient_clipping"] = float(clip or 0.0)
    ds.setdefault("steps_per_print", 10 ** 9)
    ds.setdefault("wall_clock_breakdown", False)
    resolved = {"lr": float(lr), "weight_decay": float(wd), "betas": [float(b) for b in betas], "eps": float(eps),
                "grad_clip": float(clip or 0.0), "precision": precision, "zero_stage": zero["stage"],
                "autocast": autocast}
    return ds, resolved


# ---------------------------------------------------------------- the engine

class Engine:
    """Same calls for both backends: forward, backward, step (True at an optimizer step), save, load, export."""

    def __init__(self, wrapper: nn.Module, cfg, dist_info: DistInfo, kind: str):
        self.cfg, self.dist, self.kind = cfg, dist_info, kind
        if kind == "torch" and dist_info.world_size > 1:
            raise ConfigError("engine.kind torch runs one process only; launch multi-process runs with deepspeed")
        self.ds_config, self.opt = resolve_optimization(cfg, dist_info.world_size, kind)
        self.precision = self.opt["precision"]
        self.accum = cfg.engine.grad_accum
        self._micro = 0
        self._grad_norm: torch.Tensor | float | None = None  # read through last_grad_norm
        wrapper.to(dist_info.device)
        # DeepSpeed broadcasts every parameter through a uint8 view, which a 0-dim tensor can't take:
        # train scalars (the temperature) as shape (1,) and give them back their shape on export.
        self.scalar_params = set()
        for name, p in wrapper.named_parameters():
            if p.ndim == 0:
                p.data = p.data.reshape(1)
                self.scalar_params.add(name)
        depth = wrapper.model.visual.cfg.depth
        groups = param_groups(wrapper, wrapper.no_weight_decay(), self.opt["weight_decay"], cfg.optim.layer_decay,
                              cfg.optim.text_lr_scale, depth)
        fused = dist_info.device.type == "cuda"
        optimizer = torch.optim.AdamW(groups, lr=self.opt["lr"], betas=tuple(self.opt["betas"]), eps=self.opt["eps"],
                                      fused=fused)
        if kind == "deepspeed":
            import deepspeed

            self.ds, self.optimizer, _, _ = deepspeed.initialize(model=wrapper, optimizer=optimizer,
                                                                 config=self.ds_config)
            self.module = self.ds.module
            _sync_deepspeed_writes(self.ds)
            self.scaler = None
        else:
            self.ds, self.optimizer, self.module = None, optimizer, wrapper
            self.scaler = torch.amp.GradScaler(dist_info.device.type) if self.precision == "fp16" else None

    # -- compute ------------------------------------------------------------------------------------
    @property
    def input_dtype(self) -> torch.dtype:
        """DeepSpeed casts the model to bf16/fp16, so inputs must match; under autocast the inputs stay fp32."""
        if self.kind == "deepspeed" and not self.opt["autocast"]:
            return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision, torch.float32)
        return torch.float32

    def autocast(self):
        if self.kind == "deepspeed" or self.precision == "fp32":  # DeepSpeed's forward enters its own autocast
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.dist.device.type, dtype=dtype)

    def __call__(self, *args, **kwargs):
        with self.autocast():
            return (self.ds if self.ds is not None else self.module)(*args, **kwargs)

    def train(self, mode: bool = True) -> None:
        (self.ds if self.ds is not None else self.module).train(mode)

    def set_lr(self, lr: float) -> None:
        for g in self.optimizer.param_groups:
            g["lr"] = lr * g.get("lr_scale", 1.0)

    def backward(self, loss: torch.Tensor) -> None:
        if self.ds is not None:
            self.ds.backward(loss)  # DeepSpeed divides by the accumulation steps itself
            return
        loss = loss / self.accum
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def step(self) -> bool:
        """Call after every backward; returns True when an optimizer step happened (then clamps the temperature)."""
        self._micro += 1
        boundary = self._micro % self.accum == 0
        if self.ds is not None:
            self.ds.step()
            if boundary:
                norm = self.ds.get_global_grad_norm()
                self._grad_norm = norm
        elif boundary:
            if self.scaler is not None:
                self.scaler.unscale_(self.optimizer)
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            clip = self.opt["grad_clip"]
            norm = torch.nn.utils.clip_grad_norm_(params, clip if clip > 0 else float("inf"))
            self._grad_norm = norm.detach()  # a tensor until read: float() here would stall the host every step
            if self.scaler is not None:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        if boundary:
            self.clamp_temperature()
        return boundary

    @property
    def last_grad_norm(self) -> float | None:
        """The gradient norm of the last optimizer step (before clipping); None before the first."""
        return None if self._grad_norm is None else float(self._grad_norm)

    def clamp_temperature(self) -> None:
        """Clamp the model's temperature and, under DeepSpeed mixed precision / ZeRO, its fp32 master copy too."""
        model = self.module.model
        temp = model.temp
        lo, hi = model.config.temp_min, model.config.temp_max
        mapping = getattr(temp, "_hp_mapping", None)
        if mapping is not None:  # this rank owns the master fragment (ZeRO 1/2, bf16 optimizer)
            with torch.no_grad():
                mapping.get_hp_fragment().clamp_(lo, hi)
        model.clamp_temperature()

    # -- checkpoints --------------------------------------------------------------------------------
    def save(self, ckpt_dir: Path, tag: str, client_state: dict) -> None:
        """Every rank calls this (ZeRO partitions are per rank); the rest is written by rank 0.

        The checkpoint is written to TAG.tmp, flushed to disk, renamed to TAG, and only then named in `latest`,
        so a kill or a full disk at any moment leaves the previous checkpoint complete and the one `--resume auto`
        picks. A failed write removes TAG.tmp and raises OSError naming the file, the disk's free space and the
        checkpoint that is still there; the other ranks raise PeerSaveError rather than wait for it.
        """
        ckpt_dir = Path(ckpt_dir)
        tmp, final = ckpt_dir / (tag + TMP), ckpt_dir / tag
        main = self.dist.is_main

        def prepare():
            if main:
                ckpt_dir.mkdir(parents=True, exist_ok=True)
                if tmp.exists():  # left by a killed run
                    shutil.rmtree(tmp)

        def write():
            if self.ds is not None:
                self.ds.save_checkpoint(str(ckpt_dir), tag=tmp.name, client_state=client_state, save_latest=False)
            else:
                tmp.mkdir()
                _write_torch({"module": self.module.state_dict(), "optimizer": self.optimizer.state_dict(),
                              "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                              "micro": self._micro, "client_state": client_state}, tmp / "state.pt")

        def publish():
            if main:
                fsync_tree(tmp)  # (DeepSpeed's own small files; the tensors were synced as written)
                failpoint("ckpt_before_rename")
                if final.exists():  # the same step again, by a run resumed from an older checkpoint
                    shutil.rmtree(ckpt_dir / (tag + OLD), ignore_errors=True)
                    final.rename(ckpt_dir / (tag + OLD))
                tmp.rename(final)
                fsync_dir(ckpt_dir)
                failpoint("ckpt_before_latest")
                atomic_write(ckpt_dir / LATEST, tag, durable="full")  # the checkpoint it names is on disk
                shutil.rmtree(ckpt_dir / (tag + OLD), ignore_errors=True)

        # Every stage ends with all ranks agreeing it went well everywhere (in place of a barrier): a rank that
        # fails, e.g. rank 0 on a full disk, makes the others fail too instead of leaving them waiting forever.
        error = None
        for stage in (prepare, write, publish):
            if error is None:
                try:
                    stage()
                except BaseException as e:  # noqa: BLE001 - re-raised below, after the other ranks know
                    error = e
            if not all_true(error is None, self.dist.device) and error is None:
                error = PeerSaveError(f"checkpoint {tag} was not saved: another rank failed to write its part "
                                      "(its log says why); the previous checkpoint is still there")
        if error is None:
            return
        if main:
            shutil.rmtree(tmp, ignore_errors=True)  # gives the partial write's space back
        if isinstance(error, OSError):  # a full disk, a read-only or vanished folder: say which, keep what was there
            reported = _save_error(error, ckpt_dir, tag)
            log.error("%s", reported)
            raise reported from error
        raise error

    def load(self, ckpt_dir: Path, tag: str) -> dict:
        """Restore weights, optimizer (and loss scaler) state; returns the client state saved with them.
        (What a killed save or prune left, TAG.tmp / TAG.old, is swept by prune_checkpoints, which a resume runs.)"""
        ckpt_dir = Path(ckpt_dir)
        if self.ds is not None:
            saved_world = _deepspeed_dp_world_size(ckpt_dir / tag)
            if saved_world not in (None, self.dist.world_size) and self.opt["zero_stage"] > 0:
                return self._load_resharded(ckpt_dir, tag, saved_world)
            path, client = self.ds.load_checkpoint(str(ckpt_dir), tag=tag, load_optimizer_states=True,
                                                   load_lr_scheduler_states=False)
            if path is None:
                raise FileNotFoundError(f"no DeepSpeed checkpoint {tag!r} in {ckpt_dir}")
            self._micro = 0
            return client
        state = torch.load(ckpt_dir / tag / "state.pt", map_location=self.dist.device, weights_only=False)
        self.module.load_state_dict(state["module"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self._micro = state.get("micro", 0)
        return state["client_state"]

    def _load_resharded(self, ckpt_dir: Path, tag: str, saved_world: int) -> dict:
        """Resume a ZeRO checkpoint written by a different number of ranks: DeepSpeed cannot re-partition its
        optimizer state, so the fp32 master weights are consolidated from every saved partition and set on this
        run's partitions; AdamW moments restart from zero (logged). Step, schedule and data position carry over."""
        from deepspeed.utils import safe_set_full_fp32_param
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        full = get_fp32_state_dict_from_zero_checkpoint(str(ckpt_dir), tag=tag)
        for name, p in self.ds.module.named_parameters():
            value = full[name].to(p.device).reshape(p.shape)
            if hasattr(p, "_hp_mapping"):
                safe_set_full_fp32_param(p, value)
            with torch.no_grad():
                p.copy_(value.to(p.dtype))
        client = torch.load(ckpt_dir / tag / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)
        log.warning("resume: checkpoint %s was written by %d ranks, this run has %d; weights restored in fp32, "
                    "optimizer moments restart from zero", tag, saved_world, self.dist.world_size)
        self._micro = 0
        return client

    def fp32_state(self) -> dict[str, torch.Tensor]:
        """Full-precision weights of the wrapped model (collective under DeepSpeed: every rank must call it)."""
        out = {}
        if self.ds is not None:
            from deepspeed.utils import safe_get_full_fp32_param
        for name, p in self.module.model.named_parameters():
            full = safe_get_full_fp32_param(p) if self.ds is not None and hasattr(p, "_hp_mapping") else None
            value = (full if full is not None else p.detach()).float().cpu()
            out[name] = value.reshape(()) if f"model.{name}" in self.scalar_params else value
        return out

    def export(self, path: Path, dtype: torch.dtype | None = None, reference_pretrained: bool = False,
               card=None) -> Path | None:
        """RUN/model via retrieval.save_model from the fp32 master weights (+ its model card); collective, rank 0
        writes."""
        from retrieval.model import save_model

        state = self.fp32_state()
        if not self.dist.is_main:
            return None
        model = self.module.model
        params = dict(model.named_parameters())
        saved = {n: p.data for n, p in params.items()}
        buffers = dict(model.named_buffers())
        saved_buf = {n: b.data for n, b in buffers.items()}
        try:
            for n, p in params.items():  # swap the master weights in for the save, then put the live ones back
                p.data = state[n].to(p.device)
            for b in buffers.values():
                if b.is_floating_point():
                    b.data = b.data.float()
            failpoint("export_start")
            save_model(model, path, dtype=dtype, reference_pretrained=reference_pretrained,  # RUN/model.tmp, renamed
                       card=card)
            failpoint("export_saved")
        finally:
            for n, p in params.items():
                p.data = saved[n]
            for n, b in buffers.items():
                b.data = saved_buf[n]
            model._model_id = None
        return Path(path)


def _complete(tag_dir: Path) -> bool:
    """A finished checkpoint folder: its weights file is there (only complete folders are renamed to a tag)."""
    return (tag_dir / "state.pt").is_file() or (tag_dir / "mp_rank_00_model_states.pt").is_file()


def _step_checkpoints(ckpt_dir: Path) -> list[Path]:
    """The step_N folders, oldest first; TAG.tmp (being written) and TAG.old (being removed) are not checkpoints."""
    return sorted(p for p in Path(ckpt_dir).glob("step_*") if _STEP_TAG.fullmatch(p.name) and p.is_dir())


def latest_checkpoint(ckpt_dir: Path) -> str | None:
    """The tag named in ckpt_dir/latest when that checkpoint is complete; without a usable `latest`, the newest
    complete step_N folder (logged); None when there is none."""
    ckpt_dir = Path(ckpt_dir)
    f = ckpt_dir / LATEST
    tag = f.read_text().strip() if f.is_file() else ""
    if tag and "/" not in tag and tag not in (".", "..") and _complete(ckpt_dir / tag):
        return tag
    done = [p for p in _step_checkpoints(ckpt_dir) if _complete(p)]
    if done:
        log.warning("%s: %s; using the newest complete checkpoint, %s", ckpt_dir,
                    f"'latest' names {tag!r}, which is not a complete checkpoint" if tag else "no 'latest' file",
                    done[-1].name)
        return done[-1].name
    return None


def prune_checkpoints(ckpt_dir: Path, keep: int) -> None:
    """Delete all but the newest `keep` step checkpoints, and what killed saves left (TAG.tmp, TAG.old, `latest` temps).

    Rank 0 only, after every rank has saved. A pruned folder is renamed before it is deleted, so a kill half-way
    through the deletion never leaves a partial folder under a checkpoint's name."""
    ckpt_dir = Path(ckpt_dir)
    failpoint("prune_start")
    latest = (ckpt_dir / LATEST).read_text().strip() if (ckpt_dir / LATEST).is_file() else None
    tags = _step_checkpoints(ckpt_dir)
    for old in tags[:-keep] if keep > 0 else []:
        if old.name == latest:  # never the one resume would pick
            continue
        trash = old.with_name(old.name + OLD)
        shutil.rmtree(trash, ignore_errors=True)
        old.rename(trash)
        failpoint("prune_renamed")
        shutil.rmtree(trash, ignore_errors=True)
    for left in ckpt_dir.glob("step_*"):
        if left.is_dir() and left.name.endswith((TMP, OLD)):
            shutil.rmtree(left, ignore_errors=True)
    for left in ckpt_dir.glob(f".{LATEST}.*.tmp"):  # atomic_write's temp file of a `latest` killed mid-write
        left.unlink(missing_ok=True)


# ---------------------------------------------------------------- writing checkpoints to disk

def _write_torch(obj, path: Path, **kwargs) -> None:
    """torch.save through a file object, flushed to disk. A failed write raises OSError with the file's name:
    given a path, torch writes in C++ and reports a full disk as 'unexpected pos N vs M'; through a file object
    the OSError comes out, or sits under the RuntimeError torch raises while closing the zip."""
    try:
        with open(path, "wb") as f:
            torch.save(obj, f, **kwargs)
            f.flush()
            os.fsync(f.fileno())
    except (OSError, RuntimeError) as e:
        cause = e
        while cause is not None and not isinstance(cause, OSError):
            cause = cause.__context__
        if cause is None:
            raise
        raise OSError(cause.errno, cause.strerror, cause.filename or str(path)) from e


def _sync_deepspeed_writes(ds) -> None:
    """Route DeepSpeed's checkpoint files through _write_torch (its default engine calls torch.save(path))."""
    from deepspeed.runtime.checkpoint_engine import TorchCheckpointEngine

    engine = getattr(ds, "checkpoint_engine", None)
    if type(engine) is TorchCheckpointEngine:  # not Nebula / decoupled / fast engines: they write their own way
        engine.save = lambda state_dict, path: _write_torch(
            state_dict, Path(path), _use_new_zipfile_serialization=engine.zipfile_serialization)


def _save_error(e: OSError, ckpt_dir: Path, tag: str) -> OSError:
    """The same errno, with what a user needs: which file, how full the disk is, what is still there."""
    try:
        free = f"{shutil.disk_usage(ckpt_dir).free / 2 ** 20:.1f} MiB free"
    except OSError:
        free = "free space unknown"
    previous = latest_checkpoint(ckpt_dir)
    kept = (f"the previous checkpoint {ckpt_dir / previous} is intact and `--resume auto` starts from it"
            if previous else "there is no earlier checkpoint")
    return OSError(e.errno, f"{e.strerror or e} while writing checkpoint {tag} to {ckpt_dir} ({free} on that "
                            f"disk); {kept}", e.filename if e.filename is not None else str(ckpt_dir / (tag + TMP)))


def _deepspeed_dp_world_size(tag_dir: Path) -> int | None:
    """How many data-parallel ranks wrote a DeepSpeed checkpoint (from its model-states file)."""
    states = tag_dir / "mp_rank_00_model_states.pt"
    if not states.is_file():
        return None
    return int(torch.load(states, map_location="cpu", weights_only=False).get("dp_world_size", 0)) or None
