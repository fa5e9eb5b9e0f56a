"""Generate one split of the synthetic world: plan, caption, render + encode (optionally in parallel), annotate."""
from __future__ import annotations

import copy
import json
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from retrieval.data.workers import media_worker_context
from retrieval.errors import UsageError
from retrieval.io import atomic_write

from .captions import STYLES, caption, captions
from .render import render_video
from .world import VideoSpec, plan, trainable_reversal
from .writer import write_mp4

TRAIN_CAPTIONS = (2, 3)  # paraphrases per train video, min and max


def _render_and_write(job: tuple[VideoSpec, str, float]) -> str:
    spec, path, fps = job
    write_mp4(path, render_video(spec), fps)
    return spec.id


def annotate(items, split: str, paraphrase: str, fps: float) -> list[dict]:
    """VINDLU/UMT-style records: video, caption, duration, plus fields other loaders ignore.

    Train records whose clip reads differently backwards also get `reverse_caption`: the same phrasings
    describing the frames in reverse order (for `data.reverse_pairs` in pretraining)."""
    records = []
    for item in items:
        spec, rng = item.spec, np.random.default_rng(list(item.caption_seed))
        extra = {}
        if split == "train":
            k = TRAIN_CAPTIONS[0] + int(rng.integers(TRAIN_CAPTIONS[1] - TRAIN_CAPTIONS[0] + 1))
            same_phrasing = copy.deepcopy(rng)  # the reverse captions draw the same phrasings
            text = captions(spec.attributes, rng, k, paraphrase)
            backwards = trainable_reversal(spec.attributes)
            if backwards is not None:
                extra["reverse_caption"] = captions(backwards, same_phrasing, k, paraphrase)
        else:
            text = caption(spec.attributes, rng, paraphrase)
        records.append({"video": f"{spec.id}.mp4", "caption": text, **extra, "duration": spec.frames / fps,
                        "split": split, "attributes": spec.attributes})
    for item, rec in zip(items, records):
        if item.pair is not None:
            rec.update(pair=item.pair, pair_kind=item.pair_kind, twin=records[item.twin]["video"],
                       twin_caption=records[item.twin]["caption"])
    return records


def generate(out_dir: str | os.PathLike, num_videos: int, split: str, seed: int = 0, size: int = 224,
             frames: int = 32, fps: float = 8, paraphrase: str = "template", workers: int = 1,
             progress: bool = True) -> list[dict]:
    """Write out_dir/videos/<id>.mp4 and out_dir/annotations.json; return the annotation records.
    Output depends only on the arguments other than workers/progress."""
    if size < 16 or size % 2:
        raise UsageError(f"--size must be an even number >= 16 (yuv420p), got {size}")
    if frames < 4:
        raise UsageError(f"--frames must be >= 4, got {frames}")
    if fps <= 0:
        raise UsageError(f"--fps must be > 0, got {fps}")
    if paraphrase not in STYLES:
        raise UsageError(f"unknown paraphrase style {paraphrase!r}; choose from {', '.join(STYLES)}")
    items = plan(split, num_videos, seed, size, frames)
    records = annotate(items, split, paraphrase, fps)
    out_dir = Path(out_dir)
    (out_dir / "videos").mkdir(parents=True, exist_ok=True)
    jobs = [(it.spec, str(out_dir / "videos" / f"{it.spec.id}.mp4"), fps) for it in items]

    from tqdm import tqdm

    bar = tqdm(total=len(jobs), desc=f"synth {split}", unit="video", disable=not progress)
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=media_worker_context()) as pool:
            for _ in pool.map(_render_and_write, jobs, chunksize=max(1, len(jobs) // (8 * workers))):
                bar.update()
    else:
        for job in jobs:
            _render_and_write(job)
            bar.update()
    bar.close()
    # last, so its presence means the videos are complete; "none": the world is regenerated from its seed
    atomic_write(out_dir / "annotations.json", json.dumps(records, indent=1, ensure_ascii=False) + "\n", durable="none")
    return records
