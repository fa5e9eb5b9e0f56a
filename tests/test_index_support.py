"""Shared by the index/search/app tests: a colour "model" with known embeddings, tiny coloured videos, a CLI shim.

The colour model embeds a segment as the chroma of its mean colour and a query as the chroma of the colour words
it names, so a test can say which video must rank first. Run as a script it is `vmr` with that model installed
(`python tests/test_index_support.py index build ...`), for tests that kill a real process.
"""
from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from helpers_media import write_test_video  # noqa: E402

COLORS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220),
          "yellow": (220, 220, 30), "cyan": (30, 210, 210), "magenta": (210, 30, 210), "grey": (128, 128, 128)}
_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1)
_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1)
DIM = 8


def _chroma(rgb: torch.Tensor) -> torch.Tensor:
    """(B, 3) colours in [0, 1] -> (B, DIM): chroma in the first 3 dims, a small constant so grey is not zero."""
    out = torch.zeros(rgb.shape[0], DIM)
    out[:, :3] = rgb - rgb.mean(dim=1, keepdim=True)
    out[:, 3] = 0.02
    return out


class ColorModel(torch.nn.Module):
    """Stands in for VideoTextModel: same interface, embeddings are a known function of colour."""

    def __init__(self, tag: str = "v1", num_frames: int = 4, img_size: int = 16):
        super().__init__()
        self.config = SimpleNamespace(video=SimpleNamespace(num_frames=num_frames, img_size=img_size))
        self.tag = tag
        self.dummy = torch.nn.Parameter(torch.zeros(1))  # so .to(device) has something to move
        self.text_calls = 0

    @property
    def model_id(self) -> str:
        return f"color-{self.tag}"

    def encode_video(self, video: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        x = video.float().flatten(2) * _STD + _MEAN  # (B, 3, T*H*W) back in [0, 1]
        e = _chroma(x.mean(dim=2))
        return torch.nn.functional.normalize(e, dim=-1) if normalize else e

    def encode_text(self, texts, normalize: bool = True) -> torch.Tensor:
        self.text_calls += 1
        rows = []
        for text in texts:
            words = [w.strip(".,!?") for w in text.lower().split()]
            cols = [COLORS[w] for w in words if w in COLORS] or [COLORS["grey"]]
            rows.append(np.mean(cols, axis=0) / 255.0)
        e = _chroma(torch.tensor(np.array(rows), dtype=torch.float32))
        return torch.nn.functional.normalize(e, dim=-1) if normalize else e


def color_frames(colors: list[str], frames_per_color: int, size=(32, 24)):
    """pattern callable for write_test_video: colour i holds for frames_per_color frames."""
    w, h = size

    def frame(i: int) -> np.ndarray:
        return np.full((h, w, 3), COLORS[colors[min(i // frames_per_color, len(colors) - 1)]], np.uint8)
    return frame


def write_color_video(path, colors: list[str] | str, seconds_per_color: float = 1.0, fps: int = 4,
                      size=(32, 24)) -> Path:
    colors = [colors] if isinstance(colors, str) else colors
    per = max(1, int(round(seconds_per_color * fps)))
    return write_test_video(path, num_frames=per * len(colors), size=size, fps=fps,
                            pattern=color_frames(colors, per, size))


def make_library(root: Path) -> dict[str, Path]:
    """A small library: one clip per colour (mixed containers) and a long red-then-blue video in a sub-folder."""
    root.mkdir(parents=True, exist_ok=True)
    files = {
        "red": write_color_video(root / "red.mp4", "red"),
        "green": write_color_video(root / "green.webm", "green"),
        "blue": write_color_video(root / "sub" / "blue.mkv", "blue"),
        "yellow": write_color_video(root / "yellow.mov", "yellow"),
        "redblue": write_color_video(root / "sub" / "redblue.mp4", ["red", "red", "blue", "blue"], 1.0),
    }
    (root / "notes.txt").write_text("not a video")
    return files


def install_fake_loader(monkeypatch=None) -> None:
    """Make `retrieval.load_model(path)` return a ColorModel tagged with the folder name of `path`."""
    import retrieval

    def load(path, device="cpu"):
        name = Path(path).name
        return ColorModel(tag=name.split("color-", 1)[-1] if name.startswith("color-") else name)
    if monkeypatch is not None:
        monkeypatch.setattr(retrieval, "load_model", load)
    else:
        retrieval.load_model = load


def model_dir(tmp_path: Path, tag: str = "v1") -> Path:
    d = tmp_path / f"color-{tag}"
    d.mkdir(parents=True, exist_ok=True)
    return d


def index_contents(index_dir) -> list[tuple[str, float, float]]:
    """Sorted (path, start, end) of every committed segment, after checking the FAISS ids match the rows 1:1."""
    import faiss

    from index.store import IndexStore

    store = IndexStore.open(index_dir)
    try:
        st = store.state()
        rows = store.conn.execute('SELECT id, path, start, "end" FROM segment_rows').fetchall()
    finally:
        store.close()
    ids = sorted(r[0] for r in rows)
    if st.get("faiss_file"):
        index = faiss.read_index(str(Path(index_dir) / "faiss" / st["faiss_file"]))
        if hasattr(index, "id_map"):
            stored = sorted(faiss.vector_to_array(index.id_map).tolist())
        else:
            ivf = faiss.extract_index_ivf(index)
            stored = sorted(i for lst in range(ivf.nlist) for i in
                            faiss.rev_swig_ptr(ivf.invlists.get_ids(lst), ivf.invlists.list_size(lst)).tolist())
        assert stored == ids, "FAISS ids and metadata rows disagree"
    else:
        assert not ids
    out = sorted((r[1], r[2], r[3]) for r in rows)
    assert len(out) == len(set(out)), f"duplicate segments: {out}"
    return out


LIBRARY_SEGMENTS = sorted([("red.mp4", 0.0, 1.0), ("green.webm", 0.0, 1.0), ("sub/blue.mkv", 0.0, 1.0),
                           ("yellow.mov", 0.0, 1.0), ("sub/redblue.mp4", 0.0, 2.0), ("sub/redblue.mp4", 2.0, 4.0)])


if __name__ == "__main__":
    install_fake_loader()
    from app.cli import main

    sys.exit(main(sys.argv[1:]))
