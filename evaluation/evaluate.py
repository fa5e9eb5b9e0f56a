"""Zero-shot evaluation: annotations -> videos -> decode (DataLoader) -> embed (cached) -> metrics -> report."""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from retrieval.data.annotations import DATASETS, MEDIA_EXTENSIONS, find_video_file, load_annotations
from retrieval.data.transforms import IMAGENET_MEAN, IMAGENET_STD, frames_to_tensor
from retrieval.data.video import VideoError, read_frames
from retrieval.data.workers import media_worker_context
from retrieval.errors import VmrError
from retrieval.inference import device_of, encode_clips, encode_texts
from retrieval.io import atomic_write, sha256_file
from retrieval.metrics import TIE_RULE, dual_softmax, t2v_v2t_metrics

from .report import shorten

CACHE_VERSION = 2  # 2: one cache.npz (embeddings and their index in one file)
CACHE_FILE = "cache.npz"


class EvalError(VmrError, RuntimeError):
    """The evaluation cannot give comparable results (missing/unreadable videos, bad arguments)."""


@dataclass(frozen=True)
class Protocol:
    """Everything that changes the numbers; it is printed with them and keys the embedding cache."""

    num_frames: int
    img_size: int
    context_length: int
    paragraph: bool  # ActivityNet: paragraph-to-video (sentences joined) vs sentence queries
    sampling: str = "middle frame of each of num_frames equal segments (VINDLU/UMT formula)"
    resize: str = "short side to img_size (antialiased bilinear), centre crop"
    normalize: tuple = (tuple(IMAGENET_MEAN), tuple(IMAGENET_STD))
    similarity: str = "cosine of L2-normalised embeddings, no re-ranking"
    tie_rule: str = TIE_RULE


@dataclass
class _Video:
    key: str  # video_id[@start-end], or the annotation's file name[@start-end] when the id is shared (x.mp4, x.webm)
    video_id: str
    start: float | None
    end: float | None
    name: str | None = None  # the file as the annotation names it (relative to the videos folder), if it does
    exact: bool = False  # only `name` will do: another entry names a file with the same stem
    file: Path | None = None


# --- queries and files ---------------------------------------------------------------------------

def _media_name(path: str | None) -> str | None:
    """`path` when it ends with a media extension (the annotation named the file), else None."""
    if not path:
        return None
    _, dot, ext = path.rpartition(".")
    return path if dot and ext.lower() in MEDIA_EXTENSIONS else None


def _build(items) -> tuple[list[str], list[int], list[_Video]]:
    """Annotation items -> texts, their video index, unique videos (first-appearance order).

    Entries are the same video when their ids (file name without extension) match, except where the annotation
    names different files for one id (x.mp4 and x.webm): then each file is its own video, keyed by its name.
    """
    names: dict[str, set[str]] = {}
    for item in items:
        if _media_name(item.path):
            names.setdefault(item.video_id, set()).add(item.path)
    texts, text_to_video, videos, index = [], [], [], {}
    for item in items:
        exact = _media_name(item.path) is not None and len(names[item.video_id]) > 1
        ident = item.path if exact else item.video_id
        key = ident if item.start is None else f"{ident}@{item.start:g}-{item.end:g}"
        if key not in index:
            index[key] = len(videos)
            videos.append(_Video(key, item.video_id, item.start, item.end, item.path or None, exact))
        for caption in item.captions:
            texts.append(caption)
            text_to_video.append(index[key])
    return texts, text_to_video, videos


def _same_stem(file: Path, listings: dict[Path, dict[str, list[str]]]) -> list[str]:
    """Names of the media files in `file`'s folder with its stem (itself included), one listing per folder."""
    folder = file.parent
    if folder not in listings:
        by_stem: dict[str, list[str]] = {}
        for entry in os.scandir(folder):
            stem, dot, ext = entry.name.rpartition(".")
            if dot and ext.lower() in MEDIA_EXTENSIONS and entry.is_file():
                by_stem.setdefault(stem, []).append(entry.name)
        listings[folder] = by_stem
    return sorted(listings[folder].get(file.name.rpartition(".")[0], [file.name]))


def _locate(videos: list[_Video], videos_dir: Path, dataset: str, allow_missing: bool) -> list[str]:
    """Set each video's file -> keys of the missing ones (EvalError unless `allow_missing`). The file the annotation
    names wins; an id without an extension is looked up by stem and must match one file only (x.mp4 and x.webm side
    by side: EvalError)."""
    missing, ambiguous = [], []
    listings: dict[Path, dict[str, list[str]]] = {}
    for v in videos:
        v.file = None
        if v.name and (videos_dir / v.name).is_file():
            v.file = videos_dir / v.name
        elif not v.exact:  # no name, or one that is absent (e.g. the id.mp4 a csv implies, for a .webm copy)
            v.file = find_video_file(videos_dir, v.video_id, dataset)
            if v.file is not None and len(same := _same_stem(v.file, listings)) > 1:
                ambiguous.append(f"{v.key!r} matches " + " and ".join(str(v.file.parent / n) for n in same))
        if v.file is None:
            missing.append(v.key)
    if ambiguous:
        raise EvalError(f"{len(ambiguous)} video id(s) match more than one file: {shorten(ambiguous, 10)}. "
                        "Name the file with its extension in the annotations (e.g. \"video\": \"x.webm\") "
                        "or remove the other copy.")
    if missing and not allow_missing:
        raise EvalError(f"{len(missing)} of {len(videos)} videos not found under {videos_dir}: {shorten(missing)}. "
                        "Results would not be comparable with published numbers; pass --allow-missing to "
                        "evaluate the rest anyway.")
    return missing


# --- decoding ------------------------------------------------------------------------------------

class VideoClips(torch.utils.data.Dataset):
    """Decode + transform one video per item; a failure becomes an error string, never an exception."""

    def __init__(self, videos: list[_Video], num_frames: int, img_size: int, mean, std, crop: bool = True,
                 mode: str = "bilinear"):
        self.videos, self.num_frames, self.img_size = videos, num_frames, img_size
        self.mean, self.std = tuple(mean), tuple(std)
        self.crop, self.mode = crop, mode

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, i: int) -> dict:
        v = self.videos[i]
        t = time.perf_counter()
        try:
            frames = read_frames(v.file, self.num_frames, "middle", v.start, v.end)
            video, error = frames_to_tensor(frames, self.img_size, self.mean, self.std, self.crop, self.mode), ""
        except VideoError as e:
            video, error = None, e.reason
        except Exception as e:  # noqa: BLE001 - one bad file must not stop a 5000-video run
            video, error = None, f"{type(e).__name__}: {e}"
        if video is None:
            video = torch.zeros(3, self.num_frames, self.img_size, self.img_size)
        return {"index": i, "video": video, "error": error, "decode_s": time.perf_counter() - t}


def _collate(batch: list[dict]) -> dict:
    return {"index": [b["index"] for b in batch], "video": torch.stack([b["video"] for b in batch]),
            "error": [b["error"] for b in batch], "decode_s": sum(b["decode_s"] for b in batch)}


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # one thread per decode worker; the workers are the parallelism


def _encode_videos(model, videos: list[_Video], todo: list[int], protocol: Protocol, emb: _Embedded,
                   batch_size: int, workers: int, progress: bool, timing: dict) -> None:
    """Decode + encode videos[i] for i in `todo` into emb.rows (or emb.errors: why it is unreadable); workers decode
    while the model encodes. With emb.tokens (re-ranking) each video's patch tokens go there too (float32, CPU)."""
    from tqdm.auto import tqdm

    device = device_of(model)
    mean, std = protocol.normalize
    clips = VideoClips([videos[i] for i in todo], protocol.num_frames, protocol.img_size, mean, std,
                       crop=getattr(model, "eval_crop", True), mode=getattr(model, "eval_resize_mode", "bilinear"))
    loader = torch.utils.data.DataLoader(
        clips, batch_size=batch_size,
        num_workers=workers, collate_fn=_collate, pin_memory=device.type == "cuda",
        worker_init_fn=_worker_init if workers > 0 else None, prefetch_factor=4 if workers > 0 else None,
        multiprocessing_context=media_worker_context() if workers > 0 else None)
    bar = tqdm(total=len(todo), desc="videos", unit="video", disable=not progress, dynamic_ncols=True)
    wait_start = time.perf_counter()
    for batch in loader:
        timing["loader_wait_s"] += time.perf_counter() - wait_start
        timing["decode_s"] += batch["decode_s"]
        ids = [todo[j] for j in batch["index"]]
        emb.errors.update((i, e) for i, e in zip(ids, batch["error"]) if e)
        ok = [n for n, e in enumerate(batch["error"]) if not e]
        if ok:
            t = time.perf_counter()
            (out,) = encode_clips(model, [batch["video"][ok]], device, tokens=emb.tokens is not None)
            vectors, tok = (out[0], out[1].float().cpu()) if emb.tokens is not None else (out, None)
            vectors = vectors.cpu().numpy()  # the copy waits for the GPU, so the timing is honest
            timing["encode_video_s"] += time.perf_counter() - t
            emb.rows.update(zip([ids[n] for n in ok], vectors))
            if tok is not None:
                emb.tokens.update(zip([ids[n] for n in ok], tok))
        bar.update(len(batch["index"]))
        wait_start = time.perf_counter()
    bar.close()


# --- cache ---------------------------------------------------------------------------------------

def _file_stamp(path: Path) -> list:
    st = path.stat()
    return [str(path), st.st_size, st.st_mtime_ns]


class _Cache:
    """Embeddings per (model_id, dataset, annotation hash, protocol) as .npy + a JSON index of video rows.

    Each video row remembers its file's path/size/mtime, so a changed or newly added video is
    re-encoded while the rest is reused; unreadable videos are remembered with their reason.
    """

    def __init__(self, root: Path | None, model_id: str, dataset: str, anno_sha: str, protocol: Protocol):
        key = json.dumps({"v": CACHE_VERSION, "protocol": asdict(protocol)}, sort_keys=True)
        name = f"{dataset}-{anno_sha[:12]}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
        self.dir = None if root is None else Path(root) / str(model_id) / name
        self.videos: dict[str, dict] = {}
        self.video_emb = None
        self.text_emb = None
        if self.dir is None or not (self.dir / CACHE_FILE).is_file():
            return
        try:
            with np.load(self.dir / CACHE_FILE) as cache:
                self.videos = json.loads(cache["index"].tobytes())["videos"]
                self.video_emb, self.text_emb = cache["videos"], cache["texts"]
        except (OSError, ValueError, KeyError):
            self.videos, self.video_emb, self.text_emb = {}, None, None  # corrupt cache: recompute

    def lookup(self, v: _Video):
        """-> ("row", embedding) | ("error", reason) | None when the file changed or is new."""
        entry = self.videos.get(v.key)
        if entry is None or entry["file"] != _file_stamp(v.file):
            return None
        if entry.get("error"):
            return "error", entry["error"]
        if self.video_emb is None or entry["row"] >= len(self.video_emb):
            return None
        return "row", self.video_emb[entry["row"]]

    def save(self, videos: list[_Video], rows: dict[int, np.ndarray], errors: dict[int, str],
             text_emb: np.ndarray) -> None:
        if self.dir is None:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        order = sorted(rows)
        entries = {videos[i].key: {"file": _file_stamp(videos[i].file), "row": r} for r, i in enumerate(order)}
        entries.update({videos[i].key: {"file": _file_stamp(videos[i].file), "error": e} for i, e in errors.items()})
        emb = np.stack([rows[i] for i in order]).astype(np.float32) if order else np.zeros((0, 0), np.float32)
        index = json.dumps({"version": CACHE_VERSION, "videos": entries}).encode()
        arrays = {"videos": emb, "texts": text_emb.astype(np.float32), "index": np.frombuffer(index, np.uint8)}

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:  # a file object: np.savez(path) would append ".npz" to the temp name
                np.savez(f, **arrays)

        # "none": a cache, recomputed when a crash leaves it unreadable; one file, so the embeddings and the rows
        # their index points at can never come from different runs
        atomic_write(self.dir / CACHE_FILE, write, durable="none")


# --- the runner: locate -> embed (cached) -> score -> report -------------------------------------------

def evaluate(model, dataset: str, anno, videos_dir, *, num_frames: int | None = None,
             context_length: int | None = None, allow_missing: bool = False, batch_size: int = 16,
             workers: int = 4, cache_dir=None, use_dual_softmax: bool = False, paragraph: bool = True,
             progress: bool = True, model_dir=None, log: Callable[[str], Any] = print, rerank: int = 0,
             rerank_batch: int = 32) -> dict:
    """Zero-shot text-to-video and video-to-text retrieval of `model` on one annotation file -> report dict.

    model: any object with `encode_video((B, 3, T, H, W), normalize=True)`, `encode_text(list[str],
    normalize=True)`, `config.video.num_frames/img_size`, `config.text.context_length`, `model_id`
    (and `tokenizer(texts, context_length=)` when `context_length` overrides the model's).
    Missing or unreadable videos raise EvalError listing them unless `allow_missing`, which drops
    them (and their queries) and says so in the report.
    `rerank=K` (models with an ITM head: the release's multimodal checkpoints) also re-scores each query's top K
    by the matching head, both directions, as the release does; those metrics go to report["rerank"], while
    report["t2v"/"v2t"] stay similarity-only. A model with an ITM head defaults to the release's per-dataset
    caption length (MSRVTT 32, ActivityNet 150, LSMDC 96) and frame transform (squash, bicubic).
    """
    t_start = time.perf_counter()
    if dataset not in DATASETS:
        raise EvalError(f"unknown dataset {dataset!r}; choose from {', '.join(DATASETS)}")
    if rerank < 0:
        raise EvalError(f"--rerank must be >= 0 (0 = off), got {rerank}")
    if rerank and not getattr(model, "has_itm", False):
        raise EvalError("--rerank needs a model with a video-text matching (ITM) head, e.g. the release's "
                        "videomamba_m16_25M_f8_res224.pth; this model is a dual encoder: evaluate without --rerank")
    anno, videos_dir = Path(anno), Path(videos_dir)
    if not videos_dir.is_dir():
        raise EvalError(f"videos folder not found: {videos_dir}")
    texts, text_to_video, videos = _build(load_annotations(anno, dataset, paragraph=paragraph))
    missing = _locate(videos, videos_dir, dataset, allow_missing)

    protocol = _protocol(model, dataset, num_frames, context_length, paragraph)
    anno_sha = sha256_file(anno)
    cache = _Cache(cache_dir, model.model_id, dataset, anno_sha, protocol)
    timing = {"decode_s": 0.0, "loader_wait_s": 0.0, "encode_video_s": 0.0, "encode_text_s": 0.0}
    emb = _embed(model, videos, texts, protocol, cache, bool(rerank), batch_size, workers, progress, log, timing)
    unreadable = [{"video": videos[i].key, "file": str(videos[i].file), "reason": emb.errors[i]}
                  for i in sorted(emb.errors)]
    if unreadable and not allow_missing:
        shown = "; ".join(f"{u['video']}: {u['reason']}" for u in unreadable[:20])
        raise EvalError(f"{len(unreadable)} of {len(videos)} videos could not be decoded: {shown}"
                        + (" ..." if len(unreadable) > 20 else "")
                        + ". Pass --allow-missing to evaluate the rest anyway (embeddings are cached).")

    scores = _score(model, emb, text_to_video, rerank, rerank_batch, use_dual_softmax, progress, timing)
    report = {
        "dataset": dataset,
        "annotations": str(anno),
        "annotations_sha256": anno_sha,
        "videos_dir": str(videos_dir),
        "model": str(model_dir) if model_dir is not None else None,
        "model_id": str(model.model_id),
        "protocol": asdict(protocol),
        "num_queries": scores.pop("num_queries"),
        "num_videos": scores.pop("num_videos"),
        "num_queries_total": len(texts),
        "num_videos_total": len(videos),
        "num_missing": len(missing),
        "missing": missing,
        "num_unreadable": len(unreadable),
        "unreadable": unreadable,
        "allow_missing": allow_missing,
        "complete": not missing and not unreadable,
        "t2v": scores.pop("t2v"),
        "v2t": scores.pop("v2t"),
        "cache": {"dir": str(cache.dir) if cache.dir else None, "state": emb.cache_state},
        **scores,  # rerank, dual_softmax
    }
    timing["total_s"] = time.perf_counter() - t_start
    timing["videos_encoded"] = emb.encoded
    report["timing"] = {k: round(v, 4) if isinstance(v, float) else v for k, v in timing.items()}
    return report


def _protocol(model, dataset: str, num_frames: int | None, context_length: int | None, paragraph: bool) -> Protocol:
    """The settings this run uses: the model's own unless overridden (ITM models: the release's caption lengths)."""
    cfg = model.config
    if context_length is None and getattr(model, "has_itm", False):
        from retrieval.umt import RELEASE_CONTEXT_LENGTH

        context_length = RELEASE_CONTEXT_LENGTH.get(dataset)
    extra = {}
    if not getattr(model, "eval_crop", True):
        mode = getattr(model, "eval_resize_mode", "bilinear")
        extra["resize"] = f"whole frame squashed to img_size ({mode}, antialiased)"
    if getattr(model, "similarity", None):
        extra["similarity"] = str(model.similarity)
    mean, std = tuple(getattr(cfg.video, "mean", IMAGENET_MEAN)), tuple(getattr(cfg.video, "std", IMAGENET_STD))
    return Protocol(num_frames=int(num_frames or cfg.video.num_frames), img_size=int(cfg.video.img_size),
                    context_length=int(context_length or cfg.text.context_length),
                    paragraph=paragraph and dataset == "activitynet", normalize=(mean, std), **extra)


@dataclass
class _Embedded:
    """What `_embed` found: rows/errors per video index, every text's embedding, and how much the cache gave."""

    rows: dict[int, np.ndarray]
    errors: dict[int, str]
    tokens: dict[int, torch.Tensor] | None  # re-ranking: patch tokens per video (then text_states/masks too)
    text_emb: np.ndarray | None = None
    text_states: torch.Tensor | None = None
    text_masks: torch.Tensor | None = None
    encoded: int = 0
    cache_state: str = "miss"


def _embed(model, videos: list[_Video], texts: list[str], protocol: Protocol, cache: _Cache, rerank: bool,
           batch_size: int, workers: int, progress: bool, log: Callable[[str], Any], timing: dict) -> _Embedded:
    """Videos: cached rows where the file is unchanged, decode + encode the rest; texts: all at once (cheap next to
    video), cached with the videos. Re-ranking needs every video's tokens and every text's states: no reuse."""
    present = [i for i, v in enumerate(videos) if v.file is not None]
    emb = _Embedded({}, {}, {} if rerank else None)
    todo = []
    for i in present:
        hit = None if rerank else cache.lookup(videos[i])
        if hit is None:
            todo.append(i)
        elif hit[0] == "row":
            emb.rows[i] = hit[1]
        else:
            emb.errors[i] = hit[1]
    if todo:
        log(f"encoding {len(todo)} videos ({len(present) - len(todo)} cached) with {workers} decode workers")
        _encode_videos(model, videos, todo, protocol, emb, batch_size, workers, progress, timing)
    text_cached = not rerank and cache.text_emb is not None and len(cache.text_emb) == len(texts)
    if text_cached:
        emb.text_emb = cache.text_emb
    else:
        t, default = time.perf_counter(), int(model.config.text.context_length)
        length = None if protocol.context_length == default else protocol.context_length
        try:
            out = encode_texts(model, texts, context_length=length, states=rerank)
        except Exception as e:  # noqa: BLE001 - report which setting failed, not a deep trace
            if length is None or getattr(model, "has_itm", False):  # ITM models take any length up to BERT's
                raise
            raise EvalError(f"the model cannot encode texts with context length {length} (its default is "
                            f"{default}): {type(e).__name__}: {e}") from e
        emb.text_emb, emb.text_states, emb.text_masks = out if rerank else (out, None, None)
        timing["encode_text_s"] = time.perf_counter() - t
    reused = len(present) - len(todo)
    emb.encoded = len(todo)
    emb.cache_state = "hit" if not todo and text_cached else "partial" if reused or text_cached else "miss"
    if todo or not text_cached:
        cache.save(videos, emb.rows, emb.errors, emb.text_emb)
    return emb


def _score(model, emb: _Embedded, text_to_video: list[int], rerank: int, rerank_batch: int, use_dual_softmax: bool,
           progress: bool, timing: dict) -> dict:
    """Readable videos and the queries that point at them -> counts and metrics (t2v, v2t, rerank, dual_softmax)."""
    keep = sorted(emb.rows)
    if not keep:
        raise EvalError("no video could be evaluated")
    new_index = {i: j for j, i in enumerate(keep)}
    query_idx = [q for q, v in enumerate(text_to_video) if v in new_index]
    video_emb = np.stack([emb.rows[i] for i in keep]).astype(np.float32)
    sim = emb.text_emb[query_idx].astype(np.float32) @ video_emb.T  # (texts, videos)
    t2v_idx = [new_index[text_to_video[q]] for q in query_idx]
    scores = {"num_queries": len(query_idx), "num_videos": len(keep), **t2v_v2t_metrics(sim, t2v_idx)}
    if rerank:
        scores["rerank"] = _rerank_metrics(model, sim, t2v_idx, emb.text_states[query_idx], emb.text_masks[query_idx],
                                           torch.stack([emb.tokens[i] for i in keep]), rerank, rerank_batch,
                                           progress, timing)
    if use_dual_softmax:
        scale = getattr(model, "logit_scale", 100.0)  # the model's own softmax sharpness when it has one
        temperature = float(scale.detach()) if torch.is_tensor(scale) else float(scale)
        scores["dual_softmax"] = {
            "note": "TRANSDUCTIVE re-scoring over all test queries (not comparable with similarity-only numbers)",
            "temperature": temperature,
            "t2v": t2v_v2t_metrics(dual_softmax(sim, temperature), t2v_idx)["t2v"],
            "v2t": t2v_v2t_metrics(dual_softmax(sim.T, temperature).T, t2v_idx)["v2t"],
        }
    return scores


def _rerank_metrics(model, sim: np.ndarray, t2v_idx: list[int], states, masks, tokens, k: int, batch: int,
                    progress: bool, timing: dict) -> dict:
    """ITM re-ranking of the top k in both directions (retrieval.umt.itm_rerank) -> metrics for the report."""
    from tqdm.auto import tqdm

    from retrieval.umt import itm_rerank

    t = time.perf_counter()
    device = device_of(model)
    if device.type == "cuda":  # every query reads k videos' tokens: keep them on the GPU (MSRVTT: 3.6 GB fp32)
        tokens, states, masks = tokens.to(device), states.to(device), masks.to(device)
    sim_t = torch.from_numpy(np.ascontiguousarray(sim))
    k = min(k, max(sim.shape))
    bar = tqdm(total=sim.shape[0] + sim.shape[1], desc=f"re-rank top {k} (ITM)", unit="query",
               disable=not progress, dynamic_ncols=True)
    t2v = itm_rerank(model, sim_t, states, masks, tokens, k, "t2v", batch, bar.update)  # (texts, videos)
    v2t = itm_rerank(model, sim_t, states, masks, tokens, k, "v2t", batch, bar.update)  # (videos, texts)
    bar.close()
    timing["rerank_s"] = time.perf_counter() - t
    return {"k": k, "note": f"ITM re-ranked: each query's top {k} by similarity re-scored by the matching head "
                            "(raw logit), every other candidate -100 (the release's protocol)",
            "t2v": t2v_v2t_metrics(t2v.numpy(), t2v_idx)["t2v"],
            "v2t": t2v_v2t_metrics(v2t.numpy().T, t2v_idx)["v2t"]}


