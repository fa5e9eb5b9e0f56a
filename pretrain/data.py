"""WebDataset video-text stream: seeded shard order per epoch, node/worker split, source mixing, shuffling,
PyAV decoding, augmentation, tokenisation and batching in workers; a fixed batch order that resumes exactly.

Order of one epoch, per rank: each source's shard list is shuffled with (seed, epoch, source) and split
by rank then by DataLoader worker ("role"); a role reads its shards in turn, mixes sources by weight,
shuffles raw samples in a buffer, then decodes and batches. Every random choice comes from an RNG seeded
by (seed, epoch, rank, role) or (seed, epoch, sample key), so the batch sequence is a pure function of
the seed and the epoch. Batches leave the workers tagged with their role and the count of raw samples
that role has consumed; `EpochLoader` serves them in a fixed round-robin over roles and its `state()`
(those counts + the round-robin position) lets a resumed run skip consumed samples without decoding them.
"""
from __future__ import annotations

import hashlib
import json
import logging
import random
import zlib
from collections import deque
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from retrieval.data.annotations import MEDIA_EXTENSIONS

log = logging.getLogger(__name__)
WARN_FIRST = 5          # warnings printed per worker before only counting
WARN_EVERY = 100        # then one warning every N skipped samples


def expand_urls(spec: str) -> list[str]:
    """"a/shard-{000..009}.tar::b/x.tar" -> URLs (braces, '::' lists, $WDS_ env vars); pipe: URLs pass through."""
    from webdataset.shardlists import expand_urls as _expand

    return [u for u in _expand(spec) if u]


@dataclass
class StreamSpec:
    """What a stream needs to know; built from TrainConfig + model config by `create_stream`."""

    sources: list[tuple[list[str], float]]  # (shard URLs, weight) per source
    batch_size: int
    num_frames: int
    img_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    context_length: int
    train: bool = True                    # rand frames, crop/flip, random caption; else middle frames, centre crop
    crop_scale: tuple[float, float] = (0.5, 1.0)
    flip: bool = True
    resampled: bool = False
    shuffle_buffer: int = 256
    seed: int = 0
    rank: int = 0
    world_size: int = 1
    drop_last: bool = True                # training drops a role's last partial batch (equal batches on every rank)
    reverse_pairs: float = 0.0            # chance a clip with a reverse_caption is joined by itself played backwards


def video_id(source: int, key: str) -> int:
    """Stable signed 64-bit id of a sample (multi-positive VTC compares ids across ranks)."""
    digest = hashlib.blake2b(f"{source}/{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


def _seeded(*parts) -> random.Random:
    # random.Random(str) hashes the string with sha512: identical in every process, unlike hash().
    return random.Random("/".join(map(str, parts)))


def _np_rng(*parts) -> np.random.Generator:
    return np.random.default_rng([zlib.crc32(str(p).encode()) for p in parts])


def role_shards(urls: list[str], seed: int, epoch: int, source: int, rank: int, world: int,
                role: int, roles: int) -> list[str]:
    """The shards one (rank, worker role) reads in a finite epoch: a seeded shuffle, then rank and role splits."""
    order = list(urls)
    _seeded(seed, epoch, "shards", source).shuffle(order)
    return order[rank::world][role::roles]


def _tar_samples(url: str, errors: list) -> Iterator[dict]:
    from webdataset.tariterators import tarfile_samples

    def handler(exn: Exception) -> bool:
        errors.append(f"{url}: {exn}")
        log.warning("data: read error in %s: %s", url, exn)
        return True  # keep going with the next member / shard

    yield from tarfile_samples([{"url": url}], handler=handler)


def _mix(streams: list[Iterator], weights: list[float], rng: random.Random) -> Iterator[tuple[int, dict]]:
    """Weighted interleaving; an exhausted source drops out and the rest keep their relative weights."""
    live = list(range(len(streams)))
    while live:
        i = live[0] if len(live) == 1 else rng.choices(live, weights=[weights[j] for j in live])[0]
        try:
            yield i, next(streams[i])
        except StopIteration:
            live.remove(i)


def _shuffle(items: Iterator, size: int, rng: random.Random) -> Iterator:
    """Buffer shuffle: keep `size` items, emit a random one as each new one arrives."""
    if size <= 1:
        yield from items
        return
    buf = []
    for x in items:
        if len(buf) < size:
            buf.append(x)
            continue
        k = rng.randrange(size)
        yield buf[k]
        buf[k] = x
    rng.shuffle(buf)
    yield from buf


def sample_captions(raw: dict) -> list[str]:
    if "json" in raw:
        meta = json.loads(raw["json"])
        caps = meta.get("captions", meta.get("caption"))
        caps = [caps] if isinstance(caps, str) else list(caps or [])
        if caps:
            return [str(c) for c in caps]
    if "txt" in raw:
        return [line for line in raw["txt"].decode("utf-8").splitlines() if line.strip()]
    return []


def _train_frames(frames: np.ndarray, spec: StreamSpec, rng: np.random.Generator) -> torch.Tensor:
    """One crop box and flip for the whole clip, on uint8, then normalise -> (3, T, S, S)."""
    from retrieval.data.transforms import frames_to_tensor, random_resized_crop_flip

    g = torch.Generator().manual_seed(int(rng.integers(2 ** 62)))
    frames = random_resized_crop_flip(frames, spec.img_size, scale=spec.crop_scale,
                                      flip_p=0.5 if spec.flip else 0.0, generator=g)
    return frames_to_tensor(frames, spec.img_size, spec.mean, spec.std)


def reverse_captions(raw: dict) -> list[str]:
    """Captions of the clip played backwards, when the annotation gave them (json "reverse_caption")."""
    if "json" not in raw:
        return []
    caps = json.loads(raw["json"]).get("reverse_caption") or []
    return [caps] if isinstance(caps, str) else [str(c) for c in caps]


def _time_reversed(sample: dict, raw: dict, spec: StreamSpec, epoch: int, source: int,
                   caption_index: int) -> dict | None:
    """A hard negative for temporal order: the same clip backwards with its reverse caption (same phrasing
    when the lists align), under its own video id so the forward caption counts it as a negative."""
    if spec.reverse_pairs <= 0:
        return None
    backwards = reverse_captions(raw)
    if not backwards:
        return None
    rng = _np_rng(spec.seed, epoch, sample["key"], source, "reverse")
    if rng.random() >= spec.reverse_pairs:
        return None
    if caption_index >= len(backwards):
        caption_index = int(rng.integers(len(backwards)))
    caption = backwards[caption_index]
    key = sample["key"] + "#reversed"
    return {"video": sample["video"].flip(1), "caption": caption, "key": key, "video_id": video_id(source, key)}


def decode_sample(raw: dict, spec: StreamSpec, epoch: int, source: int) -> dict:
    """Raw tar sample -> {video (3, T, S, S) float, caption, key, video_id, reversed}; raises on unusable media.
    `reversed` is the clip's time-reversed twin (see StreamSpec.reverse_pairs) or None."""
    from retrieval.data.transforms import frames_to_tensor
    from retrieval.data.video import VideoError, read_frames_bytes

    key = raw["__key__"]
    ext = next((e for e in MEDIA_EXTENSIONS if e in raw), None)
    if ext is None:
        raise VideoError(f"no media entry (has {sorted(k for k in raw if not k.startswith('__'))})", key)
    captions = sample_captions(raw)
    if not captions:
        raise VideoError("no caption", key)
    rng = _np_rng(spec.seed, epoch, key, source)
    if spec.train:
        index = int(rng.integers(len(captions)))
        frames = read_frames_bytes(raw[ext], spec.num_frames, "rand", rng=rng, name=key)
        video = _train_frames(frames, spec, rng)
    else:
        index = 0
        frames = read_frames_bytes(raw[ext], spec.num_frames, "middle", name=key)
        video = frames_to_tensor(frames, spec.img_size, spec.mean, spec.std)
    sample = {"video": video, "caption": captions[index], "key": key, "video_id": video_id(source, key)}
    sample["reversed"] = _time_reversed(sample, raw, spec, epoch, source, index) if spec.train else None
    return sample


class ShardStream(IterableDataset):
    """Batches of {video (B, 3, T, S, S), text (B, L), keys, video_ids} plus bookkeeping fields (_role, _raw, ...).

    Call `set_epoch(epoch, skip, done)` before iterating (EpochLoader does). Each role ends its stream with
    a sentinel {"_end": True} so the consumer knows it is exhausted.
    """

    def __init__(self, spec: StreamSpec, tokenizer: Callable):
        super().__init__()
        self.spec = spec
        self.tokenizer = tokenizer
        self.epoch = 0
        self.skip: list[int] = []  # per role: raw samples already consumed this epoch
        self.skipped_before: list[int] = []  # per role: undecodable samples among those (for the running count)
        self.done: set[int] = set()

    def set_epoch(self, epoch: int, skip: list[int] | None = None, done=(), skipped: list[int] | None = None) -> None:
        self.epoch, self.skip, self.done = epoch, list(skip or []), set(done)
        self.skipped_before = list(skipped or [])

    # -- the per-role raw sample stream ----------------------------------------------------------
    def raw_samples(self, role: int, roles: int) -> Iterator[tuple[int, dict]]:
        """(source index, raw sample) in this role's order for the current epoch, before skipping."""
        s, errors = self.spec, self._read_errors
        streams, weights = [], []
        for i, (urls, weight) in enumerate(s.sources):
            if s.resampled:
                rng = _seeded(s.seed, self.epoch, "resample", i, s.rank, role)
                shard_iter = (rng.choice(urls) for _ in iter(int, 1))  # endless draws with replacement
            else:
                shard_iter = iter(role_shards(urls, s.seed, self.epoch, i, s.rank, s.world_size, role, roles))
            streams.append(x for url in shard_iter for x in _tar_samples(url, errors))
            weights.append(weight)
        mixed = _mix(streams, weights, _seeded(s.seed, self.epoch, "mix", s.rank, role))
        if not s.train:
            return mixed
        return _shuffle(mixed, s.shuffle_buffer, _seeded(s.seed, self.epoch, "shuffle", s.rank, role))

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        role, roles = (info.id, info.num_workers) if info is not None else (0, 1)
        self._read_errors: list[str] = []
        skip = self.skip[role] if role < len(self.skip) else 0
        skipped = self.skipped_before[role] if role < len(self.skipped_before) else 0
        raw_count, batch = 0, []

        def tag(item: dict) -> dict:
            item.update(_role=role, _raw=raw_count, _skipped=skipped, _read_errors=len(self._read_errors))
            return item

        if role in self.done:
            raw_count = skip
            yield tag({"_end": True})
            return
        for source, raw in self.raw_samples(role, roles):
            raw_count += 1
            if raw_count <= skip:
                continue  # consumed before the checkpoint: no decoding
            try:
                sample = decode_sample(raw, self.spec, self.epoch, source)
                twin = sample.pop("reversed")
                batch.append(sample)
                if twin is not None and len(batch) < self.spec.batch_size:  # never split a pair across batches
                    batch.append(twin)
            except Exception as e:  # noqa: BLE001 - one bad file must never end a multi-day run; it is counted
                skipped += 1
                if skipped <= WARN_FIRST or skipped % WARN_EVERY == 0:
                    log.warning("data: skipped sample %s (%s) [%d skipped by rank %d worker %d so far]",
                                raw.get("__key__"), getattr(e, "reason", None) or f"{type(e).__name__}: {e}",
                                skipped, self.spec.rank, role)
                continue
            if len(batch) == self.spec.batch_size:
                yield tag(self.collate(batch))
                batch = []
        if batch and not self.spec.drop_last:
            yield tag(self.collate(batch))
        yield tag({"_end": True})

    def collate(self, samples: list[dict]) -> dict:
        captions = [s["caption"] for s in samples]
        return {
            "video": torch.stack([s["video"] for s in samples]),  # (B, 3, T, S, S)
            "text": self.tokenizer(captions, context_length=self.spec.context_length),  # (B, L)
            "captions": captions,
            "keys": [s["key"] for s in samples],
            "video_ids": torch.tensor([s["video_id"] for s in samples], dtype=torch.long),
        }


def _ignore_stop_signals(_worker_id: int) -> None:
    """Schedulers (SLURM, `timeout`) send SIGTERM to the whole process group: the workers must outlive it so the
    trainer can finish its step and checkpoint; they exit with the trainer."""
    import signal

    for sig in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, signal.SIG_IGN)


class EpochLoader:
    """Serves a ShardStream's batches in a fixed round-robin over worker roles; `state()` resumes mid-epoch exactly.

    The DataLoader itself also cycles over workers, but restarts at worker 0 after a resume; serving by
    role from small per-role queues makes the order independent of where the last run stopped.
    """

    def __init__(self, dataset: ShardStream, num_workers: int = 0, prefetch_factor: int = 2,
                 pin_memory: bool = False):
        self.dataset = dataset
        self.num_workers = num_workers
        self.prefetch_factor = prefetch_factor
        self.pin_memory = pin_memory
        self.roles = max(1, num_workers)
        self._state: dict = self.fresh_state(0)

    def fresh_state(self, epoch: int) -> dict:
        r = self.roles
        return {"epoch": epoch, "batches": 0, "next": 0, "raw": [0] * r, "skipped": [0] * r,
                "read_errors": [0] * r, "ended": []}

    def state(self) -> dict:
        """Position after the last batch handed out: epoch, batches, next role, raw samples consumed per role."""
        return json.loads(json.dumps(self._state))

    @property
    def skipped(self) -> int:
        """Undecodable samples skipped so far in this epoch (all roles of this rank)."""
        return sum(self._state["skipped"]) + sum(self._state["read_errors"])

    def epoch(self, epoch: int, state: dict | None = None) -> Iterator[dict]:
        """Batches of `epoch`, continuing from `state` (a previous `state()` of the same epoch) if given."""
        st = self.fresh_state(epoch) if state is None else json.loads(json.dumps(state))
        if st["epoch"] != epoch or len(st["raw"]) != self.roles:
            raise ValueError(f"loader state is for epoch {st['epoch']} with {len(st['raw'])} workers; "
                             f"asked for epoch {epoch} with {self.roles}")
        self._state = st
        self.dataset.set_epoch(epoch, st["raw"], st["ended"], st["skipped"])
        kwargs = {}
        if self.num_workers > 0:
            kwargs = dict(prefetch_factor=self.prefetch_factor, persistent_workers=False,
                          worker_init_fn=_ignore_stop_signals)
        loader = DataLoader(self.dataset, batch_size=None, num_workers=self.num_workers,
                            pin_memory=self.pin_memory, **kwargs)
        it = iter(loader)
        queues = {r: deque() for r in range(self.roles)}
        ended = set(st["ended"])
        p = st["next"]
        try:
            while len(ended) < self.roles:
                if p in ended:
                    p = (p + 1) % self.roles
                    continue
                while not queues[p]:
                    item = next(it)
                    queues[item["_role"]].append(item)
                item = queues[p].popleft()
                for k_state, k_item in (("raw", "_raw"), ("skipped", "_skipped"), ("read_errors", "_read_errors")):
                    st[k_state][p] = item[k_item]
                p = (p + 1) % self.roles
                st["next"] = p
                if item.get("_end"):
                    ended.add(item["_role"])
                    st["ended"] = sorted(ended)
                    continue
                st["batches"] += 1
                yield item
        finally:
            del it  # shuts the workers down when the consumer stops early


def create_stream(spec: StreamSpec, tokenizer: Callable, num_workers: int = 0, prefetch_factor: int = 2,
                  pin_memory: bool = False) -> EpochLoader:
    """A resumable loader over the spec's sources; warns when a source has too few shards for every worker."""
    roles = max(1, num_workers)
    if not spec.resampled:
        for urls, _ in spec.sources:
            if len(urls) < spec.world_size * roles:
                log.warning("data: %d shards for %d ranks x %d workers: some workers read nothing "
                            "(write smaller shards or use fewer workers)", len(urls), spec.world_size, roles)
    return EpochLoader(ShardStream(spec, tokenizer), num_workers, prefetch_factor, pin_memory)
