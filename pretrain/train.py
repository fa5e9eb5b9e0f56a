"""The pretraining loop: objectives (VTC, masked-video token alignment, MLM) around the model, train steps,
logging (TensorBoard, tqdm, steps.jsonl), the zero-shot retrieval check, checkpoints, resume and export."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import signal
import threading
import time
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from retrieval.config import ConfigError, to_dict
from retrieval.losses import alignment_loss, mlm_loss, mlm_mask_tokens, total_loss, vtc_loss
from retrieval.masking import create_mask_generator, gather_visible

from .config import TrainConfig
from .distributed import DistInfo, all_gather_objects, all_sum, all_true, any_true, barrier
from .engine import Engine, latest_checkpoint, lr_at, prune_checkpoints

log = logging.getLogger(__name__)
CKPT_DIR = "checkpoints"


# ---------------------------------------------------------------- objectives

class MLMHead(nn.Module):
    """BERT-style prediction head over text token states (dropped on export: the retrieval model has no use for it)."""

    def __init__(self, width: int, vocab_size: int):
        super().__init__()
        self.transform = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.LayerNorm(width))
        self.decoder = nn.Linear(width, vocab_size)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.transform(states))  # (B, L, V)


class PretrainModule(nn.Module):
    """What the engine trains: the dual encoder plus objective-only heads; forward returns the weighted loss terms.

    The teacher is not a submodule (it is frozen and must stay out of the optimizer and checkpoints);
    its targets arrive as inputs.
    """

    def __init__(self, model: nn.Module, objectives, use_mlm: bool):
        super().__init__()
        self.model = model
        self.objectives = objectives
        self.mlm_head = MLMHead(model.text.width, model.text.vocab_size) if use_mlm else None
        self.weights = {"vtc": objectives.vtc, "mvm": objectives.mvm, "mlm": objectives.mlm if use_mlm else 0.0}

    def no_weight_decay(self) -> set[str]:
        names = {f"model.{n}" for n in self.model.no_weight_decay()}
        names |= {n for n, p in self.named_parameters() if n.startswith("mlm_head.") and p.ndim <= 1}
        return names

    def forward(self, video, text, video_ids=None, mask=None, teacher_tokens=None, mlm_inputs=None,
                mlm_labels=None) -> dict[str, torch.Tensor]:
        out = self.model(video, text, mask=mask)
        mlm_logits = None
        if self.mlm_head is not None and self.weights["mlm"] > 0:
            states = self.model.text.forward_features(mlm_inputs)[1]  # (B, L, width)
            mlm_logits = self.mlm_head(states)  # (B, L, V)
        terms: dict[str, torch.Tensor] = {}
        with torch.autocast(video.device.type, enabled=False):  # losses in fp32 even under autocast
            if self.weights["vtc"] > 0:
                ids = video_ids if self.objectives.multi_positive else None
                terms["vtc"] = vtc_loss(out["video_features"].float(), out["text_features"].float(),
                                        out["logit_scale"].float(), ids)
            if self.weights["mvm"] > 0:
                target = gather_visible(teacher_tokens, mask) if mask is not None else teacher_tokens
                terms["mvm"] = alignment_loss(out["decoded_tokens"].float(), target)
            if mlm_logits is not None:
                terms["mlm"] = mlm_loss(mlm_logits.float(), mlm_labels)
        return total_loss(terms, self.weights)


def mlm_supported(model) -> tuple[bool, str]:
    """MLM needs a bidirectional text tower and a tokenizer with a mask token."""
    if getattr(model.text, "is_causal", True):
        return False, "the text tower is causal (CLIP-style): every token sees only its left context"
    if getattr(model.tokenizer, "mask_id", None) is None:
        return False, "the tokenizer has no mask token"
    return True, ""


def _seed(*parts) -> int:
    return zlib.crc32("/".join(map(str, parts)).encode()) & 0x7FFFFFFF


def micro_step(engine: Engine, teacher, batch: dict, cfg: TrainConfig, grid, seed: int) -> dict[str, torch.Tensor]:
    """Forward + backward of one micro-batch; masks and MLM picks are drawn from `seed` (same on resume)."""
    dev = engine.dist.device
    o = cfg.objectives
    video = batch["video"].to(dev, non_blocking=True)
    text = batch["text"].to(dev, non_blocking=True)
    ids = batch["video_ids"].to(dev, non_blocking=True)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # drop-path and any other module randomness
    kwargs: dict = {"video_ids": ids}
    if o.mvm > 0:
        teacher_tokens, scores = teacher(video)
        B = video.shape[0]
        mask = create_mask_generator(o.mask_kind)(B, *grid, o.mask_ratio, gen, scores=scores)
        # The mask stays on the CPU: the encoder and the MVM target find the visible positions there and
        # copy them asynchronously, where a GPU mask would make the host wait for the teacher twice a step.
        kwargs.update(mask=mask, teacher_tokens=teacher_tokens)
    module = engine.module
    if module.mlm_head is not None:
        tok = module.model.tokenizer
        inputs, labels = mlm_mask_tokens(text.cpu(), tok.mask_id, module.model.text.vocab_size, tok.special_ids,
                                         o.mlm_prob, gen)
        kwargs.update(mlm_inputs=inputs.to(dev), mlm_labels=labels.to(dev))
    losses = engine(video.to(engine.input_dtype), text, **kwargs)
    engine.backward(losses["loss"])
    engine.step()
    return {k: v.detach() for k, v in losses.items()}


# ---------------------------------------------------------------- zero-shot check

class ZeroShotCheck:
    """Text-to-video R@1/R@5 (retrieval.metrics, every caption a query) on a small annotated set; clips cached."""

    def __init__(self, anno: str, videos: str, max_videos: int, batch_size: int):
        from retrieval.data.annotations import find_video_file, load_annotations, load_folder

        items = load_folder(anno) if Path(anno).is_dir() else load_annotations(anno)
        self.entries = []  # (file, captions)
        for it in items:
            path = Path(it.path) if it.path and Path(it.path).is_absolute() else None
            if path is None:
                path = (Path(videos) / it.path) if it.path and (Path(videos) / it.path).is_file() \
                    else find_video_file(videos, it.video_id)
            if path is None:
                log.warning("val: no file for %s under %s", it.video_id, videos)
                continue
            self.entries.append((path, list(it.captions)))
            if len(self.entries) == max_videos:
                break
        self.batch_size = batch_size
        self._clips: list[torch.Tensor] | None = None

    def _load(self, num_frames: int, size: int, mean, std) -> list[torch.Tensor]:
        from retrieval.data.transforms import frames_to_tensor
        from retrieval.data.video import VideoError, read_frames

        clips, keep = [], []
        for path, captions in self.entries:
            try:
                frames = read_frames(path, num_frames, "middle")
            except VideoError as e:
                log.warning("val: skipping %s (%s)", path, e.reason)
                continue
            clips.append(frames_to_tensor(frames, size, mean, std))
            keep.append((path, captions))
        self.entries = keep
        return clips

    def __call__(self, model, device, dtype) -> dict[str, float]:
        from retrieval.inference import encode_clips, encode_texts
        from retrieval.metrics import retrieval_metrics

        vcfg = model.config.video
        if self._clips is None:
            self._clips = self._load(vcfg.num_frames, vcfg.img_size, vcfg.mean, vcfg.std)
        if not self._clips:
            return {}
        captions = [c for _, caps in self.entries for c in caps]
        text_to_video = [i for i, (_, caps) in enumerate(self.entries) for _ in caps]
        bs = self.batch_size
        was_training = model.training
        model.eval()
        try:
            batches = (torch.stack(self._clips[i:i + bs]) for i in range(0, len(self._clips), bs))
            vfeats = torch.cat(list(encode_clips(model, batches, device, dtype=dtype)))
            tfeats = torch.from_numpy(encode_texts(model, captions, bs)).to(device)  # the same float32 values
        finally:
            model.train(was_training)
        sim = (tfeats @ vfeats.t()).cpu()  # (texts, videos)
        m = retrieval_metrics(sim, text_to_video)
        return {"t2v_r1": m["R1"], "t2v_r5": m["R5"], "t2v_medr": m["MdR"], "videos": float(len(self._clips))}


# ---------------------------------------------------------------- schedule bookkeeping

def count_samples(urls: list[str]) -> int | None:
    """Samples in the listed local shards, from the report.json `vmr shards` writes beside them (None if unknown)."""
    reports: dict[Path, dict] = {}
    total = 0
    for url in urls:
        if url.startswith("pipe:") or "://" in url:
            return None
        folder = Path(url).parent
        if folder not in reports:
            f = folder / "report.json"
            if not f.is_file():
                return None
            reports[folder] = {s["shard"]: s["samples"] for s in json.loads(f.read_text())["shards"]}
        n = reports[folder].get(Path(url).name)
        if n is None:
            return None
        total += n
    return total


def plan_steps(cfg: TrainConfig, sources: list[tuple[list[str], float]], world: int) -> tuple[int, int]:
    """(steps per epoch, total optimizer steps) for the lr schedule."""
    global_batch = cfg.data.batch_size * cfg.engine.grad_accum * world
    if cfg.data.samples_per_epoch > 0:
        samples = cfg.data.samples_per_epoch
    else:
        counts = [count_samples(urls) for urls, _ in sources]
        samples = None if any(c is None for c in counts) else sum(counts)
    if samples is None:
        if cfg.run.max_steps <= 0:
            raise ConfigError("can't tell the epoch size (no report.json beside the shards): "
                              "set data.samples_per_epoch or run.max_steps")
        steps_per_epoch = cfg.run.max_steps
    else:
        steps_per_epoch = max(1, samples // global_batch)
    total = cfg.run.max_steps if cfg.run.max_steps > 0 else max(1, math.ceil(cfg.run.epochs * steps_per_epoch))
    return steps_per_epoch, total


# ---------------------------------------------------------------- the loop

class Logger:
    """Rank-0 outputs: TensorBoard scalars, steps.jsonl (one line per step), tqdm bar."""

    def __init__(self, run_dir: Path, dist: DistInfo, total: int, start: int, progress: bool):
        self.main = dist.is_main
        self.tb = self.bar = self.jsonl = None
        if not self.main:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step drops events a killed run logged after the checkpoint we resume from
            self.tb = SummaryWriter(str(run_dir / "tb"), purge_step=start + 1 if start else None)
        except ImportError:  # tensorboard missing: keep training, say so once
            log.warning("tensorboard is not installed: no TensorBoard logs")
        path = run_dir / "steps.jsonl"
        kept = []
        if start and path.is_file():  # same for the per-step log; a fresh start begins a new one
            kept = [line for line in path.read_text(encoding="utf-8").splitlines()
                    if line.strip() and json.loads(line)["step"] <= start]
        path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        self.jsonl = open(path, "a", encoding="utf-8")
        if progress:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, desc="pretrain", unit="step", dynamic_ncols=True)

    def step(self, record: dict, scalars: dict | None) -> None:
        if not self.main:
            return
        self.jsonl.write(json.dumps(record) + "\n")
        self.jsonl.flush()
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}")
        if scalars and self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(k, v, record["step"])

    def scalars(self, step: int, values: dict) -> None:
        if self.main and self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(k, v, step)
            self.tb.flush()

    def close(self) -> None:
        if self.main:
            if self.bar is not None:
                self.bar.close()
            if self.tb is not None:
                self.tb.close()
            self.jsonl.close()


@contextmanager
def stop_requests(signals=(signal.SIGTERM, signal.SIGUSR1)):
    """A flag set by SIGTERM/SIGUSR1 (cluster preemption, `timeout`): the loop then checkpoints the current
    step and exits cleanly, instead of losing everything since the last periodic checkpoint."""
    flag = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield flag  # handlers can only be installed from the main thread
        return

    def handler(signum, _frame):
        if not flag.is_set():
            log.warning("received %s: checkpointing after this step, then stopping", signal.Signals(signum).name)
        flag.set()

    previous = {s: signal.signal(s, handler) for s in signals}
    try:
        yield flag
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


@dataclass
class Run:
    """What `build_run` sets up and `train_loop` runs: the engine, its data and schedule, and where it continues."""

    cfg: TrainConfig
    run_dir: Path
    dist: DistInfo
    engine: Engine
    teacher: nn.Module | None  # frozen MVM target, outside the engine
    grid: tuple[int, int, int]  # the video encoder's token grid, for masks
    loader: object  # pretrain.data.EpochLoader
    val: ZeroShotCheck | None
    steps_per_epoch: int
    total_steps: int
    warmup: int
    step: int = 0
    epoch: int = 0
    data_state: dict | None = None  # this rank's position in `epoch` when resuming mid-epoch
    resumed_at: int = -1  # the step resumed from, -1 for a fresh start

    @property
    def ckpt_dir(self) -> Path:  # new checkpoints always go to this run
        return self.run_dir / CKPT_DIR

    @property
    def global_batch(self) -> int:
        return self.cfg.data.batch_size * self.cfg.engine.grad_accum * self.dist.world_size


def train(cfg: TrainConfig, run_dir: Path, dist: DistInfo, engine_kind: str, resume: str | None = None) -> dict:
    """Run (or resume) the configured training; returns a summary dict. Every rank calls it."""
    run = build_run(cfg, Path(run_dir), dist, engine_kind, resume)
    with stop_requests() as stop_requested:
        stopped, metrics, skipped = train_loop(run, stop_requested)
        if not stopped:
            export(run, metrics)
    summary = {"step": run.step, "epoch": run.epoch, "total_steps": run.total_steps, "stopped_early": stopped,
               "data_skipped": all_sum(skipped, dist.device), "val": metrics}
    if dist.is_main:
        (run.run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def build_run(cfg: TrainConfig, run_dir: Path, dist: DistInfo, engine_kind: str, resume: str | None) -> Run:
    """Model, teacher and objectives, the data stream and its schedule, the engine, and the checkpoint to resume."""
    from .data import StreamSpec, create_stream, expand_urls

    torch.manual_seed(cfg.run.seed)  # identical initial weights on every rank
    wrapper, teacher, grid = _build_module(cfg, dist)
    vcfg = cfg.model.video
    sources = [(expand_urls(s.urls), s.weight) for s in cfg.data.sources]
    for (urls, _), s in zip(sources, cfg.data.sources):
        if not urls:
            raise ConfigError(f"data source {s.name or s.urls!r} expands to no shard URLs")
    steps_per_epoch, total_steps = plan_steps(cfg, sources, dist.world_size)
    spec = StreamSpec(sources=sources, batch_size=cfg.data.batch_size, num_frames=vcfg.num_frames,
                      img_size=vcfg.img_size, mean=tuple(vcfg.mean), std=tuple(vcfg.std),
                      context_length=wrapper.model.config.text.context_length, train=True,
                      crop_scale=tuple(cfg.data.crop_scale), flip=cfg.data.flip, resampled=cfg.data.resampled,
                      shuffle_buffer=cfg.data.shuffle_buffer, seed=cfg.run.seed + cfg.data.seed_offset,
                      rank=dist.rank, world_size=dist.world_size, reverse_pairs=cfg.data.reverse_pairs)
    loader = create_stream(spec, wrapper.model.tokenizer, cfg.data.num_workers, cfg.data.prefetch_factor,
                           pin_memory=dist.device.type == "cuda")
    warmup = cfg.optim.warmup_steps or int(round(cfg.optim.warmup_epochs * steps_per_epoch))
    run = Run(cfg, run_dir, dist, Engine(wrapper, cfg, dist, engine_kind), teacher, grid, loader, None,
              steps_per_epoch, total_steps, warmup)
    if resume:
        _resume(run, resume)
    if run.resumed_at >= 0 and dist.is_main:  # a kill between a save and its prune can leave one too many
        prune_checkpoints(run.ckpt_dir, cfg.run.keep_checkpoints)
    if cfg.val.anno and dist.is_main:
        run.val = ZeroShotCheck(cfg.val.anno, cfg.val.videos or str(Path(cfg.val.anno).parent),
                                cfg.val.max_videos, cfg.val.batch_size)
    return run


def _build_module(cfg: TrainConfig, dist: DistInfo) -> tuple[PretrainModule, nn.Module | None, tuple[int, int, int]]:
    """-> (the dual encoder inside its objectives, the frozen teacher or None, the video token grid)."""
    from retrieval.model import create_model, load_model

    from .teachers import create_teacher

    model_cfg = cfg.model
    vcfg = model_cfg.video
    grid = vcfg.encoder_config().grid
    teacher = None
    if cfg.objectives.mvm > 0:
        teacher = create_teacher(cfg.teacher, grid, vcfg.mean, vcfg.std)
        if model_cfg.teacher_dim not in (0, teacher.dim):
            raise ConfigError(f"model.teacher_dim={model_cfg.teacher_dim} but the teacher's tokens are {teacher.dim}-d")
        model_cfg = dataclasses.replace(model_cfg, teacher_dim=teacher.dim)
        teacher.to(dist.device)
    model = create_model(model_cfg)
    if cfg.run.init_model:
        init = load_model(cfg.run.init_model)
        missing, unexpected = model.load_state_dict(init.state_dict(), strict=False)
        log.info("initialised from %s (missing %d, unexpected %d keys)", cfg.run.init_model, len(missing),
                 len(unexpected))
        del init
    use_mlm = cfg.objectives.mlm > 0
    if use_mlm:
        ok, why = mlm_supported(model)
        if not ok:
            if dist.is_main:
                log.warning("MLM skipped (objectives.mlm=%g): %s. Use a bidirectional Hugging Face tower "
                            "(text.kind hf) or text.causal=false with a tokenizer that has a mask token.",
                            cfg.objectives.mlm, why)
            use_mlm = False
    if cfg.engine.grad_checkpointing:
        model.set_grad_checkpointing(True)
    wrapper = PretrainModule(model, cfg.objectives, use_mlm)
    if sum(wrapper.weights.values()) == 0:
        raise ConfigError("no objective left to train (MLM was the only one and is unsupported)")
    return wrapper, teacher, grid


def _resume(run: Run, resume: str) -> None:
    """Load the checkpoint `resume` names ("auto": this run's newest, if any; a checkpoint folder; a tag of this run)
    and continue from its step, epoch and this rank's data position."""
    dist = run.dist
    ckpt_dir, tag = run.ckpt_dir, resume
    if resume == "auto":
        tag = latest_checkpoint(ckpt_dir)
    elif Path(resume).is_dir():
        ckpt_dir, tag = Path(resume).parent, Path(resume).name
    if tag is None:
        if dist.is_main:
            log.info("resume auto: no checkpoint in %s, starting fresh", ckpt_dir)
        return
    client = run.engine.load(ckpt_dir, tag)
    run.step, run.epoch = client["step"], client["epoch"]
    states = client.get("data") or []
    if len(states) == dist.world_size:
        run.data_state = states[dist.rank]
    else:
        log.warning("resume: checkpoint has data positions for %d ranks, this run has %d; "
                    "epoch %d restarts from its first sample", len(states), dist.world_size, run.epoch)
    if client.get("total_steps") and client["total_steps"] != run.total_steps:
        log.warning("resume: schedule length changed from %d to %d steps", client["total_steps"], run.total_steps)
    if dist.is_main:
        log.info("resumed from %s/%s at step %d, epoch %d", ckpt_dir, tag, run.step, run.epoch)
    run.resumed_at = run.step


def train_loop(run: Run, stop_requested: threading.Event) -> tuple[bool, dict, int]:
    """Steps from run.step to the schedule's end, or to a stop request (checkpointed there); periodic checkpoints
    and zero-shot checks, and the final ones. -> (stopped early, last check's metrics, samples skipped here)."""
    cfg, dist, engine, loader = run.cfg, run.dist, run.engine, run.loader
    logger = Logger(run.run_dir, dist, run.total_steps, run.step, cfg.run.progress)
    if dist.is_main:
        log.info("training %d steps (%d per epoch, global batch %d, %s engine, %s, ZeRO %d)", run.total_steps,
                 run.steps_per_epoch, run.global_batch, engine.kind, engine.precision, engine.opt["zero_stage"])
    engine.train(True)
    last_ckpt, stopped, metrics, empty_epochs = run.resumed_at, False, {}, 0
    t_last = time.perf_counter()
    skipped_before, skipped_total = 0, 0  # undecodable samples in finished epochs / so far (this rank)
    batches = None
    try:
        while run.step < run.total_steps and not stopped:
            batches = loader.epoch(run.epoch, run.data_state)
            run.data_state = None
            epoch_steps = 0
            while run.step < run.total_steps:
                if cfg.data.resampled and loader.state()["batches"] >= run.steps_per_epoch * cfg.engine.grad_accum:
                    break
                t0 = time.perf_counter()
                micro = [next(batches, None) for _ in range(cfg.engine.grad_accum)]
                if not all_true(all(b is not None for b in micro), dist.device):
                    break  # some rank ran out of data: the epoch ends everywhere
                t_data = time.perf_counter() - t0
                lr = lr_at(run.step, engine.opt["lr"], cfg.optim.min_lr, run.warmup, run.total_steps)
                engine.set_lr(lr)
                terms: dict[str, float] = {}
                for m, batch in enumerate(micro):
                    seed = _seed(cfg.run.seed, run.step, m, dist.rank)
                    out = micro_step(engine, run.teacher, batch, cfg, run.grid, seed)
                    for k, v in out.items():
                        terms[k] = terms.get(k, 0.0) + float(v) / len(micro)
                if dist.device.type == "cuda":
                    torch.cuda.synchronize(dist.device)
                t_now = time.perf_counter()
                t_step, t_last = t_now - t_last, t_now
                run.step += 1
                epoch_steps += 1
                skipped_total = skipped_before + loader.skipped
                _log_step(run, logger, micro, terms, lr, t_data, t_step, skipped_total)
                if cfg.run.ckpt_every > 0 and run.step % cfg.run.ckpt_every == 0 and run.step < run.total_steps:
                    _checkpoint(run)
                    last_ckpt = run.step
                if cfg.val.every > 0 and run.step % cfg.val.every == 0 and run.step < run.total_steps:
                    metrics = _validate(run, logger)
                t_last = time.perf_counter()  # checkpoint and validation time is not step time
                asked = cfg.run.stop_after > 0 and run.step >= cfg.run.stop_after
                if run.step < run.total_steps and any_true(asked or stop_requested.is_set(), dist.device):
                    stopped = True
                    break
            else:
                batches.close()
                continue  # total_steps reached inside the epoch
            batches.close()  # stops this epoch's workers
            skipped_before += loader.skipped
            if stopped:
                break
            if epoch_steps == 0 and not cfg.data.resampled:
                empty_epochs += 1
                if empty_epochs >= 2:
                    raise RuntimeError(f"epoch {run.epoch} produced no batch: the shards hold fewer than "
                                       f"{cfg.data.batch_size} usable samples per worker")
            else:
                empty_epochs = 0
            run.epoch += 1
        if run.step != last_ckpt:
            _checkpoint(run)
        if not stopped:
            metrics = _validate(run, logger)
    finally:
        if batches is not None:  # on an error too: the workers ignore SIGTERM, so exit must not be left to reap them
            batches.close()
        logger.close()
    return stopped, metrics, skipped_total


def _log_step(run: Run, logger: Logger, micro: list[dict], terms: dict, lr: float, t_data: float, t_step: float,
              skipped: int) -> None:
    """steps.jsonl every step; TensorBoard scalars every log_every steps (a collective then: the skip count)."""
    cfg, engine, device = run.cfg, run.engine, run.dist.device
    keys = [k for b in micro for k in b["keys"]]
    record = {"step": run.step, "epoch": run.epoch, "lr": lr, **terms,
              "temp": float(engine.module.model.temp.detach().float()),
              "keys_sha1": hashlib.sha1("\n".join(keys).encode()).hexdigest()[:12],
              "data_time": t_data, "step_time": t_step}
    if device.type == "cuda":  # peak since the start of the run (a host-side read, no sync)
        record["gpu_mem_gb"] = torch.cuda.max_memory_allocated(device) / 2 ** 30
    scalars = None
    if run.step % max(1, cfg.run.log_every) == 0 or run.step == run.total_steps:
        scalars = {f"loss/{k}": v for k, v in terms.items()}
        scalars.update({"lr": lr, "temperature": record["temp"], "samples_per_s": run.global_batch / t_step,
                        "time/data": t_data, "time/step": t_step,
                        "data/skipped": all_sum(skipped, device),  # all ranks
                        "epoch": run.epoch + run.loader.state()["batches"] / max(1, run.steps_per_epoch
                                                                                 * cfg.engine.grad_accum)})
        if engine.last_grad_norm is not None:
            scalars["grad_norm"] = engine.last_grad_norm
        if "gpu_mem_gb" in record:
            scalars["gpu_mem_gb"] = record["gpu_mem_gb"]
    logger.step(record, scalars)


def _checkpoint(run: Run) -> None:
    states = all_gather_objects(run.loader.state())
    client = {"step": run.step, "epoch": run.epoch, "data": states, "steps_per_epoch": run.steps_per_epoch,
              "total_steps": run.total_steps, "world_size": run.dist.world_size, "config": to_dict(run.cfg)}
    run.engine.save(run.ckpt_dir, f"step_{run.step:08d}", client)
    barrier()
    if run.dist.is_main:
        prune_checkpoints(run.ckpt_dir, run.cfg.run.keep_checkpoints)


def _validate(run: Run, logger: Logger) -> dict:
    """The zero-shot check on rank 0 (the others wait at the barrier)."""
    if run.val is None:
        barrier()
        return {}
    metrics = run.val(run.engine.module.model, run.dist.device, run.engine.input_dtype)
    if metrics:
        logger.scalars(run.step, {f"val/{k}": v for k, v in metrics.items()})
        log.info("step %d zero-shot: %s", run.step, " ".join(f"{k}={v:.2f}" for k, v in metrics.items()))
    barrier()
    return metrics


def export(run: Run, metrics: dict) -> None:
    """The trained dual encoder (objective-only heads dropped) with its model card, as run_dir/model."""
    from .card import training_card

    cfg = run.cfg
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg.run.export_dtype]
    run.engine.export(run.run_dir / "model", dtype,
                      reference_pretrained=cfg.run.export_reference_pretrained,
                      card=training_card(cfg, run.step, metrics, run.dist.world_size))
    barrier()
