"""Temporal two-way score: exact values with fake models that do / do not see frame order, and a tiny real model."""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("av")

from helpers_media import write_test_video  # noqa: E402

from evaluation.temporal import clip_embeddings, frame_orders, load_pairs, temporal_two_way, two_way_scores  # noqa: E402

T = 8
# Caption -> direction in a 4-d space: brightness up/down (reverse pair), red-then-blue / blue-then-red (order pair).
CAPTIONS = {"it gets brighter": 0, "it gets darker": 1, "red, then blue": 2, "blue, then red": 3}


def _ramp(up: bool):
    def frame(i):
        level = 30 + 25 * (i if up else T - 1 - i)
        return np.full((32, 32, 3), level, np.uint8)
    return frame


def _two_colours(red_first: bool):
    def frame(i):
        red = (i < T // 2) == red_first
        return np.zeros((32, 32, 3), np.uint8) + np.array((200, 0, 0) if red else (0, 0, 200), np.uint8)
    return frame


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """Two time-twin pairs in the temporal split's record format: a reversed ramp, and two events swapped."""
    root = tmp_path_factory.mktemp("temporal_fake")
    clips = {"ramp_a": (_ramp(True), "it gets brighter", "reverse"),
             "ramp_b": (_ramp(False), "it gets darker", "reverse"),
             "col_a": (_two_colours(True), "red, then blue", "order"),
             "col_b": (_two_colours(False), "blue, then red", "order")}
    records = []
    for name, (pattern, caption, kind) in clips.items():
        write_test_video(root / "videos" / f"{name}.mp4", num_frames=T, size=(32, 32), pattern=pattern)
        twin = name[:-1] + ("b" if name.endswith("a") else "a")
        records.append({"video": f"{name}.mp4", "caption": caption, "pair": name[:-2], "pair_kind": kind,
                        "twin": f"{twin}.mp4", "twin_caption": clips[twin][1]})
    (root / "annotations.json").write_text(json.dumps(records))
    return root


class _Fake:
    """Duck-typed model: what temporal_two_way uses (config.video, encode_video, encode_text)."""

    config = SimpleNamespace(video=SimpleNamespace(num_frames=T, img_size=32, mean=(0.5,) * 3, std=(0.5,) * 3))

    def encode_text(self, texts, normalize=True):
        return F.one_hot(torch.tensor([CAPTIONS[t] for t in texts]), 4).float()

    def encode_video(self, x, normalize=True):  # x (B, 3, T, H, W)
        frames = x.mean(dim=(3, 4))                      # (B, 3, T) mean colour per frame
        return F.normalize(self.features(frames), dim=-1)


class OrderAware(_Fake):
    """Reads time: brightness trend and whether red comes before blue."""

    def features(self, frames):
        half = frames.shape[-1] // 2
        light = frames.mean(1)                            # (B, T)
        slope = light[:, half:].mean(1) - light[:, :half].mean(1)
        red_minus_blue = frames[:, 0] - frames[:, 2]      # (B, T)
        first = red_minus_blue[:, :half].mean(1) - red_minus_blue[:, half:].mean(1)
        return torch.stack([slope.relu(), (-slope).relu(), first.relu(), (-first).relu()], 1) + 1e-3


class OrderBlind(_Fake):
    """Sees only what is in the frames, not when: colourful clips point at both order captions, grey ones at both
    brightness captions, so the two captions of a pair always score the same."""

    def features(self, frames):
        colourful = ((frames[:, 0] - frames[:, 2]).abs().mean(1) > 0.5).float()  # time-averaged, order-free
        return torch.stack([1 - colourful, 1 - colourful, colourful, colourful], 1)


def test_order_aware_fake_scores_one(pairs):
    r = temporal_two_way(OrderAware(), pairs / "annotations.json", pairs / "videos")
    assert (r["accuracy"], r["t2v_accuracy"], r["n_pairs"], r["n_videos"], r["ties"]) == (1.0, 1.0, 2, 4, 0)
    assert r["per_kind"] == {"reverse": 1.0, "order": 1.0}


@pytest.mark.parametrize("order", ["true", "shuffled"])
def test_order_blind_fake_ties_at_chance(pairs, order):
    r = temporal_two_way(OrderBlind(), pairs / "annotations.json", pairs / "videos", order=order, permutations=3)
    assert r["accuracy"] == r["t2v_accuracy"] == 0.5 and r["ties"] == r["t2v_ties"] == 4
    assert r["per_kind"] == {"reverse": 0.5, "order": 0.5}


def test_shuffling_takes_the_order_away(pairs):
    """Averaged over many random frame orders a clip and its reversed twin embed alike; in true order they don't."""
    items = load_pairs(pairs / "annotations.json", pairs / "videos")
    ramps = [i for i, it in enumerate(items) if it.kind == "reverse"]
    true = clip_embeddings(OrderAware(), items, T, "true")[ramps]
    shuffled = clip_embeddings(OrderAware(), items, T, "shuffled", seed=3, permutations=256)[ramps]
    assert float(true[0] @ true[1]) < 0.1 and float(shuffled[0] @ shuffled[1]) > 0.95
    r = temporal_two_way(OrderAware(), pairs / "annotations.json", pairs / "videos", order="shuffled",
                         permutations=16, seed=3)
    assert r["order"] == "shuffled" and r["permutations"] == 16 and 0.0 <= r["accuracy"] <= 1.0
    assert temporal_two_way(OrderAware(), pairs / "annotations.json", pairs / "videos", order="shuffled",
                            permutations=16, seed=3) == r  # seeded


def test_frame_orders():
    assert [o.tolist() for o in frame_orders(5, "true", 0, 0, 8)] == [[0, 1, 2, 3, 4]]
    perms = frame_orders(5, "shuffled", 1, 2, 4)
    assert len(perms) == 4 and all(sorted(p.tolist()) == list(range(5)) for p in perms)
    assert [p.tolist() for p in perms] == [p.tolist() for p in frame_orders(5, "shuffled", 1, 2, 4)]
    with pytest.raises(ValueError):
        frame_orders(5, "backwards", 0, 0, 1)


def test_ties_count_half():
    items = SimpleNamespace
    its = [items(video="a", twin="b", pair="p", kind="reverse"), items(video="b", twin="a", pair="p", kind="reverse")]
    same = np.ones((2, 2), np.float32) / np.sqrt(2)
    r = two_way_scores(same, np.eye(2, dtype=np.float32), its)
    assert r["accuracy"] == 0.5 and r["ties"] == 2 and r["t2v_accuracy"] == 0.5


def test_load_pairs_rejects_files_without_pairs(tmp_path):
    from evaluation.temporal import TemporalError

    (tmp_path / "a.json").write_text(json.dumps([{"video": "x.mp4", "caption": "c"}]))
    with pytest.raises(TemporalError, match="split temporal"):
        load_pairs(tmp_path / "a.json", tmp_path)


def test_tiny_real_model_and_cli(tmp_path, capsys):
    retrieval = pytest.importorskip("retrieval")
    from app.cli import main
    from pretrain.synth import generate

    generate(tmp_path / "data", 4, "temporal", size=32, frames=8, progress=False)
    encoder = {"embed_dim": 32, "depth": 2, "img_size": 32, "num_frames": 4}
    cfg = {"video": {"name": "videomamba_tiny", "encoder": encoder},
           "text": {"kind": "clip", "width": 32, "layers": 1, "heads": 2, "context_length": 32}, "embed_dim": 16}
    model = retrieval.create_model(cfg).eval()
    for order in ("true", "shuffled"):
        r = temporal_two_way(model, tmp_path / "data" / "annotations.json", tmp_path / "data" / "videos",
                             order=order, permutations=2)
        assert (r["n_pairs"], r["n_videos"]) == (2, 4) and set(r["per_kind"]) == {"reverse", "order"}
        assert all(0.0 <= v <= 1.0 for v in [r["accuracy"], r["t2v_accuracy"], *r["per_kind"].values()])
    model_dir = retrieval.save_model(model, tmp_path / "model")
    out = tmp_path / "report.json"
    assert main(["eval", "--dataset", "temporal", "--anno", str(tmp_path / "data" / "annotations.json"),
                 "--videos", str(tmp_path / "data" / "videos"), "--model", str(model_dir), "--device", "cpu",
                 "--shuffle-frames", "--permutations", "2", "--no-progress", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| true order |" in printed and "| shuffled, mean of 2 orders |" in printed and "chance is 50.0%" in printed
    assert [r["order"] for r in json.loads(out.read_text())["results"]] == ["true", "shuffled"]
