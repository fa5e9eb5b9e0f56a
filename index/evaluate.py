"""Zero-shot retrieval evaluation: annotations -> video files -> decode (DataLoader) -> embed (cached) -> metrics -> report."""
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

from retrieval.data import sha256_file
from retrieval.data.annotations import DATASETS, MEDIA_EXTENSIONS, find_video_file, load_annotations
from retrieval.data.transforms import IMAGENET_MEAN, IMAGENET_STD, frames_to_tensor
from retrieval.data.video import VideoError, read_frames
from retrieval.inference import device_of, encode_clips, encode_texts
from retrieval.metrics import TIE_RULE, dual_softmax, t2v_v2t_metrics

CACHE_VERSION = 1
# Published VideoMamba-M zero-shot text-to-video R@1 by pretraining corpus size (VideoMamba paper, as
# quoted in the evaluation issue). They come after the release's re-ranking step, so similarity-only
# numbers (this runner) are expected to be lower.
PUBLISHED_T2V_R1 = {
    "msrvtt": {"5M": 32.0, "17M": 34.7, "25M": 35.6},
    "activitynet": {"5M": 35.9, "17M": 40.1, "25M": 41.0},
    "lsmdc": {"5M": 18.0, "17M": 18.4, "25M": 20.4},
}
# The release's MODEL_ZOO.md (videomamba/video_mm, commit f3427e4), zero-shot, per checkpoint
# videomamba_m16_{5M,17M,25M}_f8_res224.pth: (t2v R@1, R@5, R@10), (v2t R@1, R@5, R@10). Its evaluation reports
# both scores and picks checkpoints by the ITM re-ranked one (k_test 128), so these are re-ranked numbers; it
# publishes no similarity-only figures.
PUBLISHED_RELEASE = {
    "msrvtt": {"5M": ((32.0, 53.1, 63.6), (28.2, 47.6, 56.5)), "17M": ((34.7, 58.9, 68.0), (29.5, 49.9, 60.1)),
               "25M": ((35.6, 58.1, 69.5), (29.1, 51.6, 62.2))},
    "didemo": {"5M": ((36.6, 61.7, 70.3), (38.3, 64.7, 73.3)), "17M": ((42.0, 67.3, 76.8), (42.3, 68.2, 76.9)),
               "25M": ((43.1, 68.1, 77.7), (43.8, 69.7, 77.8))},
    "activitynet": {"5M": ((35.9, 61.1, 72.3), (32.8, 58.8, 69.9)), "17M": ((40.1, 65.7, 76.1), (34.2, 61.8, 73.2)),
                    "25M": ((41.0, 67.5, 77.8), (37.1, 65.0, 75.1))},
    "lsmdc": {"5M": ((18.0, 36.1, 43.4), (15.9, 31.0, 39.2)), "17M": ((18.4, 35.3, 43.0), (16.5, 32.1, 40.0)),
              "25M": ((20.4, 37.1, 45.7), (17.9, 34.6, 42.1))},
    "msvd": {"5M": ((38.0, 68.6, 79.0), (57.5, 79.9, 85.4)), "17M": ((40.3, 70.0, 79.7), (61.8, 81.0, 87.0)),
             "25M": ((42.0, 71.6, 81.2), (62.7, 82.8, 87.6))},
}


class EvalError(RuntimeError):
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


def _locate(videos: list[_Video], videos_dir: Path, dataset: str) -> list[str]:
    """Set each video's file -> keys of the missing ones. The file the annotation names wins; an id without an
    extension is looked up by stem and must match one file only (x.mp4 and x.webm side by side: EvalError)."""
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
        raise EvalError(f"{len(ambiguous)} video id(s) match more than one file: {_shorten(ambiguous, 10)}. "
                        "Name the file with its extension in the annotations (e.g. \"video\": \"x.webm\") "
                        "or remove the other copy.")
    return missing


def _shorten(names: list[str], limit: int = 20) -> str:
    return ", ".join(names[:limit]) + (f" ... (+{len(names) - limit} more)" if len(names) > limit else "")


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


def _encode_videos(model, videos: list[_Video], protocol: Protocol, batch_size: int, workers: int,
                   progress: bool, timing: dict, tokens: dict | None = None
                   ) -> tuple[dict[int, np.ndarray], dict[int, str]]:
    """-> (row per decoded video, reason per unreadable video). Workers decode while the model encodes.
    With a `tokens` dict (re-ranking) each video's patch tokens are kept there too, as float32 CPU tensors."""
    from tqdm.auto import tqdm

    device = device_of(model)
    mean, std = protocol.normalize
    clips = VideoClips(videos, protocol.num_frames, protocol.img_size, mean, std,
                       crop=getattr(model, "eval_crop", True), mode=getattr(model, "eval_resize_mode", "bilinear"))
    loader = torch.utils.data.DataLoader(
        clips, batch_size=batch_size,
        num_workers=workers, collate_fn=_collate, pin_memory=device.type == "cuda",
        worker_init_fn=_worker_init if workers > 0 else None, prefetch_factor=4 if workers > 0 else None)
    rows: dict[int, np.ndarray] = {}
    errors: dict[int, str] = {}
    bar = tqdm(total=len(videos), desc="videos", unit="video", disable=not progress, dynamic_ncols=True)
    sent: list = []  # [indices of the batch being encoded, when it was handed to the model]

    def readable():  # each batch's decoded clips; unreadable videos are recorded, not encoded
        wait_start = time.perf_counter()
        for batch in loader:
            timing["loader_wait_s"] += time.perf_counter() - wait_start
            timing["decode_s"] += batch["decode_s"]
            errors.update((i, e) for i, e in zip(batch["index"], batch["error"]) if e)
            ok = [j for j, e in enumerate(batch["error"]) if not e]
            if ok:
                sent[:] = [[batch["index"][j] for j in ok], time.perf_counter()]
                yield batch["video"][ok]
            bar.update(len(batch["index"]))
            wait_start = time.perf_counter()

    for out in encode_clips(model, readable(), device, tokens=tokens is not None):
        emb, tok = out if tokens is not None else (out, None)
        emb = emb.cpu().numpy()  # the copy waits for the GPU, so the timing is honest
        tok = None if tok is None else tok.float().cpu()
        timing["encode_video_s"] += time.perf_counter() - sent[1]
        for n, (i, row) in enumerate(zip(sent[0], emb)):
            rows[i] = row
            if tokens is not None:
                tokens[i] = tok[n]
    bar.close()
    return rows, errors


def _encode_texts(model, texts: list[str], context_length: int, default_length: int, states: bool = False):
    """-> (N, E) embeddings; with `states` (re-ranking) also the text states and masks for the matching head."""
    length = None if context_length == default_length else context_length
    try:
        return encode_texts(model, texts, context_length=length, states=states)
    except Exception as e:  # noqa: BLE001 - report which setting failed, not a deep trace
        if length is None or getattr(model, "has_itm", False):  # an ITM model tokenises at any length up to BERT's
            raise
        raise EvalError(f"the model cannot encode texts with context length {context_length} "
                        f"(its default is {default_length}): {type(e).__name__}: {e}") from e


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
        if self.dir is None or not (self.dir / "index.json").is_file():
            return
        try:
            index = json.loads((self.dir / "index.json").read_text())
            self.videos = index["videos"]
            if (self.dir / "videos.npy").is_file():
                self.video_emb = np.load(self.dir / "videos.npy")
            if (self.dir / "texts.npy").is_file():
                self.text_emb = np.load(self.dir / "texts.npy")
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
        # write-then-rename so an interrupted run never leaves a half-written cache behind
        for name, array in (("videos.npy", emb), ("texts.npy", text_emb.astype(np.float32))):
            tmp = self.dir / f".{name}.{os.getpid()}.tmp"
            with open(tmp, "wb") as f:
                np.save(f, array)
            tmp.replace(self.dir / name)
        tmp = self.dir / f".index.json.{os.getpid()}.tmp"
        tmp.write_text(json.dumps({"version": CACHE_VERSION, "videos": entries}))
        tmp.replace(self.dir / "index.json")


# --- the runner ----------------------------------------------------------------------------------

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
    has_itm = bool(getattr(model, "has_itm", False))
    if rerank < 0:
        raise EvalError(f"--rerank must be >= 0 (0 = off), got {rerank}")
    if rerank and not has_itm:
        raise EvalError("--rerank needs a model with a video-text matching (ITM) head, e.g. the release's "
                        "videomamba_m16_25M_f8_res224.pth; this model is a dual encoder: evaluate without --rerank")
    anno, videos_dir = Path(anno), Path(videos_dir)
    if not videos_dir.is_dir():
        raise EvalError(f"videos folder not found: {videos_dir}")
    items = load_annotations(anno, dataset, paragraph=paragraph)
    texts, text_to_video, videos = _build(items)
    missing = _locate(videos, videos_dir, dataset)
    if missing and not allow_missing:
        raise EvalError(f"{len(missing)} of {len(videos)} videos not found under {videos_dir}: {_shorten(missing)}. "
                        "Results would not be comparable with published numbers; pass --allow-missing to "
                        "evaluate the rest anyway.")

    cfg = model.config
    default_length = int(cfg.text.context_length)
    mean = tuple(getattr(cfg.video, "mean", IMAGENET_MEAN))
    std = tuple(getattr(cfg.video, "std", IMAGENET_STD))
    if context_length is None and has_itm:
        from retrieval.umt import RELEASE_CONTEXT_LENGTH

        context_length = RELEASE_CONTEXT_LENGTH.get(dataset)
    extra = {}
    if not getattr(model, "eval_crop", True):
        extra["resize"] = f"whole frame squashed to img_size ({getattr(model, 'eval_resize_mode', 'bilinear')}, antialiased)"
    if getattr(model, "similarity", None):
        extra["similarity"] = str(model.similarity)
    protocol = Protocol(num_frames=int(num_frames or cfg.video.num_frames), img_size=int(cfg.video.img_size),
                        context_length=int(context_length or default_length),
                        paragraph=paragraph and dataset == "activitynet", normalize=(mean, std), **extra)
    anno_sha = sha256_file(anno)
    cache = _Cache(cache_dir, model.model_id, dataset, anno_sha, protocol)
    timing = {"decode_s": 0.0, "loader_wait_s": 0.0, "encode_video_s": 0.0, "encode_text_s": 0.0}

    # Videos: reuse cached rows, decode + encode the rest.
    present = [i for i, v in enumerate(videos) if v.file is not None]
    rows: dict[int, np.ndarray] = {}
    errors: dict[int, str] = {}
    todo = []
    video_tokens: dict[int, torch.Tensor] | None = {} if rerank else None
    for i in present:
        hit = None if rerank else cache.lookup(videos[i])  # re-ranking needs every video's tokens: no reuse
        if hit is None:
            todo.append(i)
        elif hit[0] == "row":
            rows[i] = hit[1]
        else:
            errors[i] = hit[1]
    if todo:
        log(f"encoding {len(todo)} videos ({len(present) - len(todo)} cached) with {workers} decode workers")
        new_tokens = {} if rerank else None
        new_rows, new_errors = _encode_videos(model, [videos[i] for i in todo], protocol, batch_size, workers,
                                              progress, timing, new_tokens)
        if rerank:
            video_tokens.update({todo[j]: t for j, t in new_tokens.items()})
        rows.update({todo[j]: r for j, r in new_rows.items()})
        errors.update({todo[j]: e for j, e in new_errors.items()})

    # Texts: all at once (cheap next to video), cached with the videos.
    text_cached = not rerank and cache.text_emb is not None and len(cache.text_emb) == len(texts)
    if text_cached:
        text_emb = cache.text_emb
    elif rerank:  # the fusion layers start from every text's layer states
        t = time.perf_counter()
        text_emb, text_states, text_masks = _encode_texts(model, texts, protocol.context_length, default_length, True)
        timing["encode_text_s"] = time.perf_counter() - t
    else:
        t = time.perf_counter()
        text_emb = _encode_texts(model, texts, protocol.context_length, default_length)
        timing["encode_text_s"] = time.perf_counter() - t
    reused = len(present) - len(todo)
    cache_state = "hit" if not todo and text_cached else "partial" if reused or text_cached else "miss"
    if todo or not text_cached:
        cache.save(videos, rows, errors, text_emb)

    unreadable = [{"video": videos[i].key, "file": str(videos[i].file), "reason": errors[i]} for i in sorted(errors)]
    if unreadable and not allow_missing:
        shown = "; ".join(f"{u['video']}: {u['reason']}" for u in unreadable[:20])
        raise EvalError(f"{len(unreadable)} of {len(videos)} videos could not be decoded: {shown}"
                        + (" ..." if len(unreadable) > 20 else "")
                        + ". Pass --allow-missing to evaluate the rest anyway (embeddings are cached).")

    # Keep readable videos and the queries that point at them.
    keep = sorted(rows)
    if not keep:
        raise EvalError("no video could be evaluated")
    new_index = {i: j for j, i in enumerate(keep)}
    query_idx = [q for q, v in enumerate(text_to_video) if v in new_index]
    video_emb = np.stack([rows[i] for i in keep]).astype(np.float32)
    sim = text_emb[query_idx].astype(np.float32) @ video_emb.T  # (texts, videos)
    t2v_idx = [new_index[text_to_video[q]] for q in query_idx]
    metrics = t2v_v2t_metrics(sim, t2v_idx)

    report = {
        "dataset": dataset,
        "annotations": str(anno),
        "annotations_sha256": anno_sha,
        "videos_dir": str(videos_dir),
        "model": str(model_dir) if model_dir is not None else None,
        "model_id": str(model.model_id),
        "protocol": asdict(protocol),
        "num_queries": len(query_idx),
        "num_videos": len(keep),
        "num_queries_total": len(texts),
        "num_videos_total": len(videos),
        "num_missing": len(missing),
        "missing": missing,
        "num_unreadable": len(unreadable),
        "unreadable": unreadable,
        "allow_missing": allow_missing,
        "complete": not missing and not unreadable,
        "t2v": metrics["t2v"],
        "v2t": metrics["v2t"],
        "cache": {"dir": str(cache.dir) if cache.dir else None, "state": cache_state},
    }
    if rerank:
        report["rerank"] = _rerank_metrics(model, sim, t2v_idx, text_states[query_idx], text_masks[query_idx],
                                           torch.stack([video_tokens[i] for i in keep]), rerank, rerank_batch,
                                           progress, timing)
    if use_dual_softmax:
        scale = getattr(model, "logit_scale", 100.0)  # the model's own softmax sharpness when it has one
        temperature = float(scale.detach()) if torch.is_tensor(scale) else float(scale)
        report["dual_softmax"] = {
            "note": "TRANSDUCTIVE re-scoring over all test queries (not comparable with similarity-only numbers)",
            "temperature": temperature,
            "t2v": t2v_v2t_metrics(dual_softmax(sim, temperature), t2v_idx)["t2v"],
            "v2t": t2v_v2t_metrics(dual_softmax(sim.T, temperature).T, t2v_idx)["v2t"],
        }
    timing["total_s"] = time.perf_counter() - t_start
    timing["videos_encoded"] = len(todo)
    report["timing"] = {k: round(v, 4) if isinstance(v, float) else v for k, v in timing.items()}
    return report


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


# --- output --------------------------------------------------------------------------------------

def _row(name: str, m: dict) -> str:
    return f"| {name} | {m['R1']:.1f} | {m['R5']:.1f} | {m['R10']:.1f} | {m['MdR']:g} | {m['MnR']:.1f} |"


def format_report(report: dict) -> str:
    """Markdown: metrics table for both directions + counts + the exact protocol."""
    p = report["protocol"]
    lines = [f"### Zero-shot retrieval: {report['dataset']} (model {report['model_id']})", "",
             "| direction | R@1 | R@5 | R@10 | MdR | MnR |", "|---|---|---|---|---|---|",
             _row("text-to-video (similarity only)", report["t2v"]),
             _row("video-to-text (similarity only)", report["v2t"])]
    if "rerank" in report:
        r = report["rerank"]
        lines += [_row(f"text-to-video, ITM re-ranked top {r['k']}", r["t2v"]),
                  _row(f"video-to-text, ITM re-ranked top {r['k']}", r["v2t"])]
    if "dual_softmax" in report:
        d = report["dual_softmax"]
        lines += [_row("t2v + dual softmax (transductive)", d["t2v"]), _row("v2t + dual softmax (transductive)",
                                                                            d["v2t"])]
    lines += ["",
              f"- queries: {report['num_queries']} of {report['num_queries_total']}; videos: "
              f"{report['num_videos']} of {report['num_videos_total']}; missing: {report['num_missing']}; "
              f"unreadable: {report['num_unreadable']}"
              + ("" if report["complete"] else " — INCOMPLETE (--allow-missing): not comparable with published numbers"),
              f"- protocol: {p['num_frames']} frames, sampling = {p['sampling']}; {p['img_size']} px, {p['resize']}; "
              f"text context length {p['context_length']}"
              + ("; ActivityNet paragraph-to-video" if p["paragraph"] else ""),
              f"- similarity: {p['similarity']}; ties: {p['tie_rule']}",
              *([f"- re-ranking: {report['rerank']['note']}; MdR/MnR count a target outside the top k behind every "
                 "-100 entry (pessimistic ties); R@1/5/10 are exact for k >= 10"] if "rerank" in report else []),
              f"- annotations: {report['annotations']} (sha256 {report['annotations_sha256'][:12]})"]
    t = report["timing"]
    lines.append(f"- time: decode {t['decode_s']:.1f} s (summed over workers; main waited {t['loader_wait_s']:.1f} s), "
                 f"encode video {t['encode_video_s']:.1f} s, encode text {t['encode_text_s']:.1f} s, "
                 + (f"re-rank {t['rerank_s']:.1f} s, " if "rerank_s" in t else "")
                 + f"total {t['total_s']:.1f} s; cache {report['cache']['state']}")
    if report["unreadable"]:
        lines.append("- unreadable: " + "; ".join(f"{u['video']} ({u['reason']})" for u in report["unreadable"][:20]))
    if report["missing"]:
        lines.append(f"- missing: {_shorten(report['missing'])}")
    return "\n".join(lines) + "\n"


TABLE_HEADER = ("| model | pretraining | dataset | t2v R@1 | t2v R@5 | t2v R@10 | t2v MdR | v2t R@1 "
                "| t2v R@1 re-ranked | t2v R@5 re-ranked | t2v R@10 re-ranked | v2t R@1 re-ranked "
                "| queries | videos | missing | frames | size | ctx | note |\n"
                "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
TABLE_NOTE = ("Columns without 're-ranked' are similarity only (dual encoder); 're-ranked' columns re-score each "
              "query's top k with the ITM head (the release's protocol, k 128).\n\n")


def _published_rows() -> str:
    rows = []
    for dataset, by_size in PUBLISHED_RELEASE.items():
        for size, ((r1, r5, r10), (v1, _, _)) in by_size.items():
            rows.append(f"| VideoMamba-M (published) | {size} | {dataset} | n/p | n/p | n/p | n/p | n/p | {r1:.1f} "
                        f"| {r5:.1f} | {r10:.1f} | {v1:.1f} | | | | 8 | 224 | | release MODEL_ZOO.md, "
                        f"videomamba_m16_{size}_f8_res224.pth; n/p = not published |\n")
    return "".join(rows)


def append_table(report: dict, path, label: str | None = None) -> Path:
    """Append the result as a row of a Markdown table; a new file starts with the release's published rows."""
    path = Path(path)
    p, t2v, v2t = report["protocol"], report["t2v"], report["v2t"]
    note = "" if report["complete"] else "INCOMPLETE (--allow-missing)"
    rr = report.get("rerank")
    re_cols = (f"{rr['t2v']['R1']:.1f} | {rr['t2v']['R5']:.1f} | {rr['t2v']['R10']:.1f} | {rr['v2t']['R1']:.1f}"
               if rr else " | | | ")
    if rr:
        note = "; ".join(x for x in (note, f"re-ranked top {rr['k']}") if x)
    if "dual_softmax" in report:
        note = "; ".join(x for x in (note, f"dual softmax t2v R@1 {report['dual_softmax']['t2v']['R1']:.1f} "
                                           "(transductive)") if x)
    row = (f"| {label or report.get('model') or report['model_id']} | | {report['dataset']} | {t2v['R1']:.1f} "
           f"| {t2v['R5']:.1f} | {t2v['R10']:.1f} | {t2v['MdR']:g} | {v2t['R1']:.1f} | {re_cols} "
           f"| {report['num_queries']} | {report['num_videos']} | {report['num_missing'] + report['num_unreadable']} "
           f"| {p['num_frames']} | {p['img_size']} | {p['context_length']} | {note} |\n")
    if not path.is_file() or not path.read_text().strip():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("# Zero-shot retrieval results\n\n" + TABLE_NOTE + TABLE_HEADER + _published_rows())
    with open(path, "a", encoding="utf-8") as f:
        f.write(row)
    return path


def write_report(report: dict, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    return path
