"""A model's card in words (terminal lines, app markdown, example queries) and the synthetic-model warning."""
from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

NO_CARD = "no model card (this model folder was saved before cards existed)"
MAX_ANNOTATIONS_BYTES = 64 << 20  # a `vmr synth` annotations.json larger than this is not looked into
INSTEAD = ("index real footage with a model trained on real videos (pretrain/run.py on your own shards: README, "
           "\"Your own data\") or with a published checkpoint")


def _field(data, name: str, default=None):
    """Cards arrive as a ModelCard (CLI) or as a dict (the app's /info JSON)."""
    return data.get(name, default) if isinstance(data, dict) else getattr(data, name, default)


def as_dict(card) -> dict | None:
    if card is None:
        return None
    if isinstance(card, dict):
        return card
    import dataclasses

    return dataclasses.asdict(card)


def trained_on(card) -> str:
    data = _field(card, "data") or "not recorded"
    extra = [f"{n:,} clips" if k == "clips" else f"{n:,} steps" for k in ("clips", "steps")
             if (n := _field(card, k))]
    return data + (f" ({', '.join(extra)})" if extra else "")


def vocabulary_lines(card) -> list[str]:
    return [f"{kind}: {', '.join(words)}" for kind, words in (_field(card, "vocabulary") or {}).items()]


def card_lines(card, width: int = 80) -> list[str]:
    """The card for a terminal, wrapped to `width`."""
    if card is None:
        return [NO_CARD]
    c = as_dict(card)
    rows = [("domain", f"{c['domain']}" + (f": {c['summary']}" if c.get("summary") else "")),
            ("trained on", trained_on(c)), ("input", c.get("input") or "not recorded"),
            ("text tower", c.get("text_tower") or "not recorded")]
    rows += [("result", f"{r['what']}: {r['value']}" + (f" ({r['command']})" if r.get("command") else ""))
             for r in c.get("results") or []]
    if c.get("scores"):
        rows.append(("scores", c["scores"]))
    rows += [("knows", line) for line in vocabulary_lines(c)]
    return [line for name, text in rows
            for line in textwrap.wrap(text, width, initial_indent=f"  {name + ':':<12}", subsequent_indent=" " * 14,
                                      break_on_hyphens=False)]


def card_markdown(card) -> str:
    """The "what this model knows" panel of the app."""
    if card is None:
        return f"*{NO_CARD}: nothing is known about what it was trained on.*"
    c = as_dict(card)
    md = [f"**Domain:** {c['domain']}" + (f" — {c['summary']}" if c.get("summary") else "")]
    if c["domain"] == "synthetic":
        md.append("It was trained on rendered shapes only: on real footage its scores mean little.")
    md += [f"**Trained on:** {trained_on(c)}", f"**Input:** {c.get('input') or 'not recorded'}",
           f"**Text tower:** {c.get('text_tower') or 'not recorded'}"]
    if c.get("vocabulary"):
        md.append("**Words it was trained on** (queries built from them work best):\n\n" +
                  "\n".join(f"- {line}" for line in vocabulary_lines(c)))
    if c.get("results"):
        md.append("**Measured results:**\n\n" + "\n".join(
            f"- {r['what']}: **{r['value']}**" + (f" (`{r['command']}`)" if r.get("command") else "")
            for r in c["results"]))
    if c.get("scores"):
        md.append(f"**Scores:** {c['scores']}")
    return "\n\n".join(md)


def example_queries(card, limit: int = 8) -> list[str]:
    return list(_field(card, "examples") or [])[:limit] if card is not None else []


# --- the synthetic-model warning ------------------------------------------------------------------

def is_synth_library(root: str | os.PathLike) -> bool:
    """True when `root` (or the folder above it, for D/videos) holds a `vmr synth` output: an annotations.json
    whose records carry the synthetic world's attributes."""
    root = Path(root)
    for folder in (root, root.parent):
        anno = folder / "annotations.json"
        try:
            if not anno.is_file() or anno.stat().st_size > MAX_ANNOTATIONS_BYTES:
                continue
            records = json.loads(anno.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        first = records[0] if isinstance(records, list) and records else None
        attrs = first.get("attributes") if isinstance(first, dict) else None
        if isinstance(attrs, dict) and {"colour", "shape", "events", "background"} <= set(attrs):
            return True
    return False


def library_root(videos: str | os.PathLike, video_root: str | os.PathLike | None = None) -> str:
    """The folder a `--videos` argument stands for: itself, or the folder of a list / annotation file."""
    if video_root:
        return os.fspath(video_root)
    videos = os.fspath(videos)
    return videos if os.path.isdir(videos) else os.path.dirname(os.path.abspath(videos))


def domain_warning(card, roots, command: str) -> str | None:
    """One line for stderr when a synthetic-only model meets a library that is not a `vmr synth` output."""
    if card is None or _field(card, "domain") != "synthetic":
        return None
    real = [str(r) for r in roots if not is_synth_library(r)]
    if not real:
        return None
    knows = _field(card, "summary") or "synthetic videos"
    return (f"vmr {command}: warning: this model was trained on synthetic videos only ({knows}); "
            f"{', '.join(real)} is not a `vmr synth` library, so its scores there mean little: {INSTEAD}.")
