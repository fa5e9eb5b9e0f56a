"""`vmr demo`: synthetic library -> index with the embedded demo model -> example queries -> Gradio app."""
from __future__ import annotations

import importlib.util
import json
import os
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from retrieval.errors import VmrError

# Shipped inside the package (package data); written by retrieval.save_model.
DEFAULT_MODEL = Path(__file__).resolve().parent / "assets" / "demo_model"
MODEL_FILES = ("config.yaml", "model.safetensors")
META_FILE = "vmr_demo.json"  # inside a demo library: the generation settings and whether generation finished
SPLIT = "test"               # held-out attribute triples: captions the demo model never saw in training
FPS = 8.0
MIN_FRAMES = 16              # rendered frames per clip; the index samples the model's num_frames from them
SEGMENT_SECONDS = 8.0        # longer than any demo clip, so each video is one segment
TOP = 3                      # hits shown per example query
CAPTION_QUERIES = 3
# Worded in the synthetic world's vocabulary, so they have true answers in the library.
FREE_FORM_QUERIES = ("a red circle moves to the left", "a small star spins on a noisy background")


class DemoError(VmrError, RuntimeError):
    """Something the user has to fix (missing model or dependency, a folder that is not a demo library)."""


def default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "vmr" / "demo"


def resolve_model(path: str | os.PathLike | None) -> Path:
    """The model folder to use, or a DemoError saying what is missing and how to get a model."""
    folder = Path(path).expanduser() if path else DEFAULT_MODEL
    missing = [name for name in MODEL_FILES if not (folder / name).is_file()]
    if not missing:
        return folder
    if path:
        raise DemoError(f"{folder} is not a model folder: {', '.join(missing)} missing. Pass a folder written by "
                        "retrieval.save_model (config.yaml + model.safetensors + tokenizer/).")
    raise DemoError(
        f"the embedded demo model is missing: {folder} has no {' / '.join(missing)}.\n"
        "This copy of vmr was installed without it (the model is trained separately and shipped as package data "
        "under app/assets/demo_model/).\nUse a model folder you have, written by retrieval.save_model "
        "(e.g. a pretraining run's export):\n    vmr demo --model PATH/TO/MODEL_FOLDER")


def check_dependencies(app: bool) -> None:
    """Fail before any work when an optional dependency the demo needs is absent."""
    needed = {"av": "video", "faiss": "index"}
    if app:
        needed["gradio"] = "app"
    missing = [(mod, extra) for mod, extra in needed.items() if importlib.util.find_spec(mod) is None]
    if missing:
        extras = ",".join(sorted({extra for _, extra in missing}))
        raise DemoError(f"vmr demo needs {', '.join(m for m, _ in missing)}: "
                        f'pip install "videomamba-retrieval[{extras}]"')


# --- the library ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class LibrarySettings:
    videos: int
    seed: int
    size: int    # rendered frame side (px)
    frames: int  # rendered frames per clip

    @classmethod
    def for_model(cls, model, videos: int, seed: int) -> "LibrarySettings":
        video = model.config.video
        size = int(video.img_size) + int(video.img_size) % 2  # yuv420p needs even sides; >= img_size, no upscaling
        return cls(videos, seed, max(16, size), max(MIN_FRAMES, int(video.num_frames)))

    @property
    def key(self) -> str:
        return f"{SPLIT}-{self.videos}v-seed{self.seed}-{self.size}px-{self.frames}f"

    def to_dict(self) -> dict:
        return {"split": SPLIT, "videos": self.videos, "seed": self.seed, "size": self.size, "frames": self.frames,
                "fps": FPS}


def _read_meta(folder: Path) -> dict | None:
    try:
        return json.loads((folder / META_FILE).read_text())
    except (OSError, ValueError):
        return None


def _complete(folder: Path) -> list[dict] | None:
    """The annotation records when every listed video exists (generate writes annotations.json last)."""
    meta = _read_meta(folder)
    if not meta or not meta.get("complete"):
        return None
    try:
        records = json.loads((folder / "annotations.json").read_text())
    except (OSError, ValueError):
        return None
    if all((folder / "videos" / r["video"]).is_file() for r in records):
        return records
    return None


def prepare_library(folder: Path, settings: LibrarySettings, workers: int = 1,
                    progress: bool = True) -> tuple[list[dict], bool]:
    """Generate the demo library into `folder` unless a complete one with these settings is there.

    Returns (annotation records, reused). A folder holding anything else is refused rather than written into.
    """
    from pretrain.synth import generate

    meta = _read_meta(folder)
    wanted = settings.to_dict()
    if meta is not None and {k: meta.get(k) for k in wanted} != wanted:
        got = ", ".join(f"{k}={meta.get(k)}" for k in wanted if meta.get(k) != wanted[k])
        raise DemoError(f"{folder} holds a demo library made with other settings ({got}); "
                        "choose another --library or delete that folder")
    if meta is None and folder.is_dir() and any(folder.iterdir()):
        raise DemoError(f"{folder} is not empty and is not a vmr demo library; choose another --library")
    if meta is not None:
        records = _complete(folder)
        if records is not None:
            return records, True
    folder.mkdir(parents=True, exist_ok=True)
    (folder / META_FILE).write_text(json.dumps({**wanted, "complete": False}, indent=2) + "\n")
    # Same arguments give identical files, so finishing an interrupted generation is just generating again.
    records = generate(folder, settings.videos, SPLIT, seed=settings.seed, size=settings.size,
                       frames=settings.frames, fps=FPS, workers=workers, progress=progress)
    (folder / META_FILE).write_text(json.dumps({**wanted, "complete": True}, indent=2) + "\n")
    return records, False


# --- index and queries ---------------------------------------------------------------------------

def build_index(library: Path, model, model_path: Path, device: str, workers: int, progress: bool):
    """Index the library's annotated videos into library/index-<model id>/ (resumes; skips what is indexed)."""
    from index import ingest

    index_dir = library / f"index-{model.model_id}"
    cfg = ingest.IngestConfig(segment_seconds=SEGMENT_SECONDS, workers=workers, device=device, progress=progress)
    report = ingest.build(library / "annotations.json", index_dir, model=model, model_path=str(model_path),
                          config=cfg, video_root=library / "videos")
    if report.failures:
        path, reason = report.failures[0]
        raise DemoError(f"{len(report.failures)} demo videos could not be indexed (first: {path}: {reason})")
    return index_dir, report


def example_queries(records: list[dict], seed: int) -> list[tuple[str, str | None]]:
    """(query, video it was written for or None): a few real captions spread over the library, then free-form ones."""
    import numpy as np

    picks = np.random.default_rng(seed).choice(len(records), min(CAPTION_QUERIES, len(records)), replace=False)
    captions = [(records[i]["caption"], records[i]["video"]) for i in sorted(picks)]
    return captions + [(q, None) for q in FREE_FORM_QUERIES]


def own_video_ranks(searcher, records: list[dict]) -> tuple[list[int | None], list[tuple[float, float]]]:
    """Rank of each caption's own video among all videos (None: not found), and (its score, the best other
    video's score)."""
    hits = searcher.search_batch([r["caption"] for r in records], k=len(records))
    ranks, scores = [], []
    for row, r in zip(hits, records):
        own = next((h for h in row if h.path == r["video"]), None)
        ranks.append(own.rank if own else None)
        other = next((h.score for h in row if h.path != r["video"]), float("nan"))
        scores.append((own.score if own else float("nan"), other))
    return ranks, scores


def scores_line(scores: list[tuple[float, float]]) -> str:
    """What a true match scores here, against the best wrong video."""
    import numpy as np

    own, other = np.array(scores).T
    return (f"score of a caption's own video: median {np.nanmedian(own):.2f} (10th-90th percentile "
            f"{np.nanpercentile(own, 10):.2f}-{np.nanpercentile(own, 90):.2f}); of the best other video: median "
            f"{np.nanmedian(other):.2f}")


def format_examples(searcher, queries: list[tuple[str, str | None]], n_videos: int) -> str:
    """One block per query: its top hits as `vmr search` prints them, and for captions where their own video ranks."""
    from app.table import SCORE_HELP, hits_table

    lines = []
    for q, (text, target) in enumerate(queries, 1):
        hits = searcher.search(text, k=n_videos if target else TOP)
        kind = f"caption of {target}" if target else "free-form"
        marks = {h.rank: "*" for h in hits[:TOP] if h.path == target} if target else None
        lines += textwrap.wrap(f'query {q} ({kind}): "{text}"', 80, subsequent_indent="    ")
        lines += hits_table(hits[:TOP], marks=marks, legend=False)
        if target:
            rank = next((h.rank for h in hits if h.path == target), None)
            lines.append(f"its own video ranks {rank if rank else 'nowhere'} of {n_videos}")
        lines.append("")
    lines += textwrap.wrap(SCORE_HELP + " * marks the video a caption was written for.", 80)
    return "\n".join(lines)


def recall_line(ranks: list[int | None]) -> str:
    n = len(ranks)
    r1 = sum(r == 1 for r in ranks) / n
    r5 = sum(r is not None and r <= 5 for r in ranks) / n
    return (f"all {n} captions as queries: own video at rank 1 for {100 * r1:.1f}%, in the top 5 for {100 * r5:.1f}% "
            f"(chance {100 / n:.1f}% / {100 * min(5, n) / n:.1f}%)")


def run_demo(videos: int = 200, library: str | os.PathLike | None = None, model: str | os.PathLike | None = None,
             seed: int = 0, device: str = "auto", workers: int | None = None, progress: bool = True,
             app: bool = True, host: str = "127.0.0.1", port: int = 7860,
             say: Callable[[str], None] = print) -> int:
    """The whole demo; returns the exit code. Raises DemoError for problems the user must fix."""
    if videos < 1:
        raise DemoError(f"--videos must be >= 1, got {videos}")
    model_path = resolve_model(model)
    check_dependencies(app)
    from index.embedder import resolve_device
    from index.ingest import default_workers
    from index.searcher import Searcher
    from retrieval import load_model

    workers = default_workers() if workers is None else workers
    phases: dict[str, float] = {}
    t0 = time.time()
    try:
        net = load_model(model_path, resolve_device(device))
    except (FileNotFoundError, ValueError) as e:  # e.g. the demo model's text tower package is not installed
        raise DemoError(f"cannot load the model {model_path}: {e}") from e
    settings = LibrarySettings.for_model(net, videos, seed)
    folder = Path(library).expanduser() if library else default_cache() / settings.key
    say(f"model {model_path} ({net.model_id}): {net.config.video.num_frames} frames at "
        f"{net.config.video.img_size}px; library {folder}")
    if getattr(net, "card", None) is not None and net.card.summary:
        say(f"it knows ({net.card.domain}): {net.card.summary}")
    t1 = phases["model load"] = time.time()
    records, reused = prepare_library(folder, settings, workers=max(1, workers), progress=progress)
    t2 = phases["render"] = time.time()
    index_dir, report = build_index(folder, net, model_path, device, workers, progress)
    searcher = Searcher(index_dir, model=net, device=device)
    t3 = phases["index"] = time.time()
    say(f"\n{'reused' if reused else 'generated'} {len(records)} videos ({t2 - t1:.1f}s); indexed "
        f"{report.encoded} new, {report.skipped} already indexed ({t3 - t2:.1f}s)\n")
    say(format_examples(searcher, example_queries(records, seed), len(records)))
    ranks, scores = own_video_ranks(searcher, records)
    say(recall_line(ranks))
    say(scores_line(scores))
    phases["queries"] = time.time()
    start, split = t0, []
    for name, at in phases.items():
        split.append(f"{name} {at - start:.1f}s")
        start = at
    say(f"done in {time.time() - t0:.1f}s ({', '.join(split)}). Index: {index_dir}\nreopen the app later with: "
        f"vmr app --index {index_dir}")
    if not app:
        return 0
    from app.ui import launch

    say(f"\nserving the app on http://{host}:{port} (Ctrl+C stops it)")
    sys.stdout.flush()
    launch(searcher, host=host, port=port, block=True)
    return 0
