"""TrainConfig: every knob of a pretraining run as dataclasses, filled strictly from YAML plus dotted overrides."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from retrieval.config import ConfigError, apply_overrides, from_dict, load_yaml
from retrieval.model import ModelConfig

MASK_KINDS = ("random", "tube", "row", "attention")
PRECISIONS = ("fp32", "bf16", "fp16")
ENGINES = ("deepspeed", "torch", "auto")
TEACHERS = ("none", "open_clip", "model")


@dataclass
class SourceConfig:
    urls: str = ""                 # shard URLs: braces expand ("shards/webvid/shard-{000000..000999}.tar"), "::" joins,
                                   # "pipe:cmd" streams
    weight: float = 1.0            # relative sampling weight when several sources are mixed
    name: str = ""                 # label in logs (default: source index)


@dataclass
class DataConfig:
    sources: list[SourceConfig] = field(default_factory=list)  # training shards; empty only when synth generates them
    batch_size: int = 8            # micro-batch per process (per GPU); global batch = batch_size * grad_accum * world
    num_workers: int = 4           # DataLoader worker processes per rank (0 = decode in the training process)
    prefetch_factor: int = 2       # batches each worker keeps ready
    shuffle_buffer: int = 1000     # samples held for in-stream shuffling (raw bytes; ~1-5 MB each at 224 px)
    resampled: bool = False        # infinite stream: shards drawn with replacement; epoch length = samples_per_epoch
    samples_per_epoch: int = 0     # resampled mode: nominal epoch size (global samples); 0 with resampled is an error
    crop_scale: tuple[float, float] = (0.5, 1.0)  # random resized crop area range (UMT: 0.5-1.0)
    flip: bool = True              # random horizontal flip; turn off when captions say "left"/"right" (synthetic world)
    seed_offset: int = 0           # added to run.seed for the data order only (re-shuffle without changing init)
    reverse_pairs: float = 0.0     # chance a clip whose annotation has "reverse_caption" is joined in its batch by
                                   # itself played backwards with that caption: a hard negative for time order


@dataclass
class SynthConfig:
    train_videos: int = 0          # >0: render this many synthetic train videos into RUN/synth, sharded (CI smoke runs)
    val_videos: int = 0            # >0: also a held-out test split used as the zero-shot validation set
    size: int = 64                 # frame side in pixels (even)
    frames: int = 16               # frames per synthetic clip
    shard_size: int = 8            # videos per shard
    seed: int = 0                  # world seed (independent of the training seed)
    workers: int = 0               # processes rendering and sharding (0 = all CPU cores); the same world for any value


@dataclass
class ObjectiveConfig:
    vtc: float = 1.0               # weight of video-text contrastive loss (gathered over all ranks)
    mvm: float = 0.0               # weight of unmasked-token alignment to a frozen teacher (masked video modelling)
    mlm: float = 0.0               # weight of masked language modelling; bidirectional (hf or causal=false) towers only
    mask_kind: str = "tube"        # random | tube | row | attention (attention keeps the teacher's most salient tokens)
    mask_ratio: float = 0.8        # fraction of video tokens dropped before the encoder when mvm > 0 (UMT: 0.8)
    mlm_prob: float = 0.15         # fraction of caption tokens MLM predicts
    multi_positive: bool = True    # captions of one video id are all positives (they can meet across sources/epochs)


@dataclass
class TeacherConfig:
    kind: str = "none"             # none | open_clip (frozen image CLIP per frame) | model (self-distillation)
    open_clip_model: str = "ViT-B-16"  # open_clip architecture for kind open_clip
    checkpoint: str | None = None  # local open_clip checkpoint file (.pt/.bin/.safetensors); never downloaded
    image_size: int | None = None  # open_clip input side (unset: the architecture's); frames are resized to it
    model_path: str | None = None  # kind model: folder written by retrieval.save_model
    precision: str = "bf16"        # teacher compute dtype on CUDA (fp32 on CPU regardless)


@dataclass
class OptimConfig:
    lr: float | None = None        # peak learning rate (unset: the DeepSpeed JSON's); release 4e-4 at global batch 4096
    min_lr: float = 1e-6           # cosine floor
    weight_decay: float | None = None  # AdamW decay on matrices (not norms, biases, pos embeddings, A_log, D, temp);
                                       # unset: the JSON's
    betas: tuple[float, float] | None = None  # AdamW betas (unset: JSON's; release 0.9, 0.98)
    eps: float | None = None       # AdamW epsilon (unset: JSON's)
    warmup_steps: int = 0          # linear warmup optimizer steps (takes precedence over warmup_epochs)
    warmup_epochs: float = 0.0     # warmup length in epochs when warmup_steps is 0 (release: 1)
    layer_decay: float = 1.0       # layer-wise lr decay for the video encoder (1.0 = off; 0.75-0.95 when fine-tuning)
    grad_clip: float | None = None  # max global grad norm (unset: JSON's gradient_clipping; 0 = off)
    text_lr_scale: float = 1.0     # lr multiplier for the text tower (e.g. 0.1 for a pretrained tower)


@dataclass
class EngineConfig:
    kind: str = "auto"             # deepspeed | torch (plain PyTorch, one process) | auto (deepspeed when importable)
    deepspeed_config: str = "configs/deepspeed/zero1_bf16.json"  # JSON base; relative to the repo root
    zero_stage: int | None = None  # 0 | 1 | 2 (unset: the JSON's)
    precision: str | None = None   # fp32 | bf16 | fp16 (unset: the JSON's bf16/fp16 sections, else fp32)
    grad_accum: int = 1            # micro-batches per optimizer step
    grad_checkpointing: bool = False  # recompute encoder blocks in backward (less memory, ~30% slower)


@dataclass
class ValConfig:
    anno: str | None = None        # annotation file (VINDLU json / MSRVTT csv) for the zero-shot check; unset: none
    videos: str | None = None      # folder the annotation's video paths are relative to
    every: int = 0                 # optimizer steps between checks (0 = only at the end)
    max_videos: int = 256          # use the first N videos
    batch_size: int = 16           # videos per encoder call


@dataclass
class RunConfig:
    out: str = "runs/pretrain"     # run folder: config.yaml, tb/, checkpoints/, model/, steps.jsonl
    epochs: float = 1.0            # training length in epochs (fractional allowed) unless max_steps is set
    max_steps: int = 0             # >0: total optimizer steps (overrides epochs for the schedule)
    stop_after: int = 0            # >0: stop cleanly after this many steps, schedule unchanged (SIGTERM/SIGUSR1 too)
    seed: int = 0                  # init, data order, masks and augmentation derive from it
    log_every: int = 10            # optimizer steps between TensorBoard scalars
    ckpt_every: int = 0            # optimizer steps between checkpoints (0 = only at the end)
    keep_checkpoints: int = 2      # resumable checkpoints kept on disk (older ones deleted by rank 0)
    export_dtype: str = "fp32"     # weights dtype of RUN/model (fp32 | bf16 | fp16)
    export_reference_pretrained: bool = False  # hf towers: RUN/model references the untouched pretrained tensors
    progress: bool = True          # tqdm bar on rank 0
    init_model: str | None = None  # start from this model folder's weights (config must match)


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    synth: SynthConfig = field(default_factory=SynthConfig)
    objectives: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    val: ValConfig = field(default_factory=ValConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def validate(self) -> "TrainConfig":
        o, t, e, d = self.objectives, self.teacher, self.engine, self.data
        if o.mask_kind not in MASK_KINDS:
            raise ConfigError(f"objectives.mask_kind must be one of {MASK_KINDS}, got {o.mask_kind!r}")
        if not 0.0 <= o.mask_ratio < 1.0:
            raise ConfigError(f"objectives.mask_ratio must be in [0, 1), got {o.mask_ratio}")
        if min(o.vtc, o.mvm, o.mlm) < 0 or o.vtc + o.mvm + o.mlm == 0:
            raise ConfigError("objective weights must be >= 0 and at least one > 0")
        if t.kind not in TEACHERS:
            raise ConfigError(f"teacher.kind must be one of {TEACHERS}, got {t.kind!r}")
        if o.mvm > 0 and t.kind == "none":
            raise ConfigError("objectives.mvm > 0 needs a teacher (teacher.kind open_clip or model)")
        if o.mask_kind == "attention" and o.mvm > 0 and t.kind == "none":
            raise ConfigError("mask_kind attention needs a teacher for its token scores")
        if t.kind == "open_clip" and not t.checkpoint:
            raise ConfigError("teacher.kind open_clip needs teacher.checkpoint (a local file; nothing is downloaded)")
        if t.kind == "model" and not t.model_path:
            raise ConfigError("teacher.kind model needs teacher.model_path")
        if e.kind not in ENGINES:
            raise ConfigError(f"engine.kind must be one of {ENGINES}, got {e.kind!r}")
        if e.precision is not None and e.precision not in PRECISIONS:
            raise ConfigError(f"engine.precision must be one of {PRECISIONS}, got {e.precision!r}")
        if e.zero_stage not in (None, 0, 1, 2):
            raise ConfigError(f"engine.zero_stage must be 0, 1 or 2, got {e.zero_stage}")
        if e.grad_accum < 1 or d.batch_size < 1:
            raise ConfigError("engine.grad_accum and data.batch_size must be >= 1")
        if d.resampled and d.samples_per_epoch <= 0:
            raise ConfigError("data.resampled needs data.samples_per_epoch > 0 (an infinite stream has no epoch)")
        if not d.sources and self.synth.train_videos <= 0:
            raise ConfigError("data.sources is empty (and synth.train_videos is 0): nothing to train on")
        if not 0.0 <= d.reverse_pairs <= 1.0:
            raise ConfigError(f"data.reverse_pairs is a probability in [0, 1], got {d.reverse_pairs}")
        if any(s.weight <= 0 for s in d.sources):
            raise ConfigError("data.sources[].weight must be > 0")
        if self.run.epochs <= 0 and self.run.max_steps <= 0:
            raise ConfigError("set run.epochs > 0 or run.max_steps > 0")
        if self.run.export_dtype not in ("fp32", "bf16", "fp16"):
            raise ConfigError(f"run.export_dtype must be fp32, bf16 or fp16, got {self.run.export_dtype!r}")
        if self.run.export_reference_pretrained and self.model.text.kind != "hf":
            raise ConfigError("run.export_reference_pretrained is for Hugging Face text towers (model.text.kind: hf)")
        self.model.validate()
        return self


def load_train_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """YAML file (optional) + dotted overrides -> validated TrainConfig; unknown keys raise ConfigError."""
    data = load_yaml(path) if path else {}
    apply_overrides(data, list(overrides or []))
    return from_dict(TrainConfig, data).validate()
