"""Tests for the synthetic captioned-video world (pretrain/synth) and the `vmr synth` command."""
from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from pretrain.synth import captions as C
from pretrain.synth import generate, render_video, scene, world
from pretrain.synth.dataset import annotate
from retrieval.data.video import one_thread

av = pytest.importorskip("av")


def _decode(path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24", **one_thread()) for f in container.decode(video=0)])


def test_render_video_is_deterministic_uint8():
    spec = world.plan("train", 1, seed=5, size=32, frames=8)[0].spec
    a, b = render_video(spec), render_video(spec)
    assert a.dtype == np.uint8 and a.shape == (8, 32, 32, 3)
    assert np.array_equal(a, b)
    assert a.reshape(-1, 3).std(0).max() > 5  # something drawn on the background


def test_generate_reproducible_across_runs_and_workers(tmp_path):
    """The same world from the same seed, in-process or in worker processes (twice): records, annotations, mp4 bytes.
    (x264's AVX-512 code made 5 of 240 files differ across 15 such pairs of worlds; retrieval.data.video.x264_options
    caps it at AVX2.)"""
    kwargs = dict(num_videos=16, split="train", seed=3, size=48, frames=8, fps=8, progress=False)
    r1 = generate(tmp_path / "one", workers=1, **kwargs)
    r2 = generate(tmp_path / "two", workers=2, **kwargs)
    generate(tmp_path / "three", workers=2, **kwargs)
    assert r1 == r2
    for run in ("two", "three"):
        assert [(tmp_path / run / "videos" / r["video"]).read_bytes() for r in r1] == \
            [(tmp_path / "one/videos" / r["video"]).read_bytes() for r in r1], f"run {run}: different mp4 bytes"
    assert (tmp_path / "one/annotations.json").read_bytes() == (tmp_path / "two/annotations.json").read_bytes()
    specs = {p.spec.id: p.spec for p in world.plan("train", 16, seed=3, size=48, frames=8)}
    for rec in r1:
        decoded = _decode(tmp_path / "one/videos" / rec["video"]).astype(int)
        rendered = render_video(specs[rec["video"][:-4]])
        assert np.abs(decoded - rendered).mean() < 8  # the mp4 holds what was rendered
        assert 2 <= len(rec["caption"]) <= 3 and len(set(rec["caption"])) == len(rec["caption"])
        assert rec["duration"] == 1.0
    other = world.plan("train", 4, seed=4)
    assert [p.spec.attributes for p in other] != [rec["attributes"] for rec in r1]


def test_held_out_rule_keeps_every_single_attribute_and_pair_in_train():
    valid = [(c, s, m) for c, s, m in itertools.product(world.COLOUR_NAMES, world.SHAPES, world.MOTIONS)
             if m in world.valid_motions(s)]
    held = [t for t in valid if world.is_held_out(*t)]
    assert 0.15 <= len(held) / len(valid) <= 0.25
    seen = [t for t in valid if not world.is_held_out(*t)]
    for i, j in itertools.combinations(range(3), 2):  # every pair of attributes, hence every single one
        assert {(t[i], t[j]) for t in valid} == {(t[i], t[j]) for t in seen}


def test_splits_are_disjoint_and_test_tuples_unique():
    for item in world.plan("train", 400, seed=0):
        assert not any(world.is_held_out(*t) for t in world.triples(item.spec.attributes))
    test = world.plan("test", 1000, seed=0)
    attrs = [p.spec.attributes for p in test]
    assert all(world.is_held_out(a["colour"], a["shape"], a["events"][0]) for a in attrs)
    assert len({world.attribute_key(a) for a in attrs}) == len(attrs)
    caps = [C.caption(a, np.random.default_rng(i)) for i, a in enumerate(attrs)]
    assert len(set(caps)) == len(caps)  # each caption names its whole tuple
    assert [p.spec.attributes for p in world.plan("test", 100, seed=0)] == attrs[:100]  # longer plans extend shorter


def test_too_many_test_videos_names_the_maximum():
    top = world.max_test_videos()
    assert top >= 1000
    with pytest.raises(ValueError, match=str(top)):
        world.plan("test", top + 1)


def test_temporal_pairs_differ_only_in_time():
    items = world.plan("temporal", 24, seed=2, size=32, frames=8)
    records = annotate(items, "temporal", "template", 8)  # captions without rendering
    kinds = set()
    for p in range(0, len(items), 2):
        a, b = items[p], items[p + 1]
        assert a.spec.id == f"{a.pair}_a" and b.spec.id == f"{a.pair}_b" and a.pair == b.pair
        assert records[p]["twin_caption"] == records[p + 1]["caption"] != records[p]["caption"]
        kinds.add(a.pair_kind)
        fa, fb = render_video(a.spec), render_video(b.spec)
        if a.pair_kind == "reverse":
            assert np.array_equal(fb, fa[::-1])
            assert b.spec.attributes == world.reverse_attributes(a.spec.attributes)
        else:
            assert b.spec.attributes["events"] == a.spec.attributes["events"][::-1]
            assert {**b.spec.attributes, "events": None} == {**a.spec.attributes, "events": None}
            assert not np.array_equal(fa, fb)
        assert world.attribute_key(a.spec.attributes) != world.attribute_key(b.spec.attributes)
    assert kinds == {"reverse", "order"}
    with pytest.raises(ValueError, match="even"):
        world.plan("temporal", 3)


def test_unseen_paraphrases_share_no_content_word_with_templates():
    attrs = [p.spec.attributes for split, n in (("train", 300), ("test", 300), ("temporal", 100))
             for p in world.plan(split, n, seed=1)]
    rng = np.random.default_rng(0)
    used = set()
    for a in attrs:
        for _ in range(3):
            template, unseen = C.caption(a, rng, "template"), C.caption(a, rng, "unseen")
            assert set(C.words(template)) <= C.TEMPLATE_VOCAB | C.FUNCTION_WORDS
            assert not C.content_words(unseen) & C.TEMPLATE_VOCAB, unseen
            used |= C.content_words(unseen)
    assert len(used) > 60
    documented = set(C.words(C.__doc__))
    assert C.TEMPLATE_VOCAB - C.FUNCTION_WORDS <= documented  # the module docstring lists the vocabulary


def test_backgrounds_keep_away_from_object_colours():
    for i, item in enumerate(world.plan("train", 200, seed=7)):
        a = item.spec.attributes
        sc = scene.build_scene(a, np.random.default_rng(i), 4)
        objects = np.concatenate([tr.rgb for tr in sc.tracks])
        for bg in sc.bg_colours:
            assert np.linalg.norm(objects - np.array(bg), axis=1).min() >= scene.MIN_CONTRAST - 1e-6


def test_cli_writes_videos_pyav_can_open(tmp_path, capsys):
    from app.cli import main

    out = tmp_path / "synth"
    assert main(["synth", "--out", str(out), "--videos", "3", "--split", "test", "--size", "32", "--frames", "8",
                 "--paraphrase", "unseen", "--seed", "1"]) == 0
    records = json.loads((out / "annotations.json").read_text())
    assert len(records) == 3
    for rec in records:
        assert isinstance(rec["caption"], str) and rec["duration"] == 1.0
        frames = _decode(out / "videos" / rec["video"])
        assert frames.shape == (8, 32, 32, 3)
    assert main(["synth", "--out", str(out), "--videos", "2", "--size", "33"]) == 2
    assert "even" in capsys.readouterr().err


def test_train_reverse_captions_describe_the_clip_backwards_and_never_leak_the_test():
    items = world.plan("train", 300, seed=0)
    records = annotate(items, "train", "template", fps=8)
    with_reverse = [(it, r) for it, r in zip(items, records) if "reverse_caption" in r]
    assert 0.3 * len(items) < len(with_reverse) < len(items)  # palindromes (a lone spin, swap, ...) get none
    for it, rec in with_reverse:
        backwards = world.reverse_attributes(it.spec.attributes)
        assert world.attribute_key(backwards) != world.attribute_key(it.spec.attributes)
        assert not any(world.is_held_out(*t) for t in world.triples(backwards))
        assert len(rec["reverse_caption"]) == len(rec["caption"])
        assert not set(rec["reverse_caption"]) & set(rec["caption"])
    for it, rec in zip(items, records):
        if "reverse_caption" not in rec:
            backwards = world.reverse_attributes(it.spec.attributes)
            assert (world.attribute_key(backwards) == world.attribute_key(it.spec.attributes)
                    or any(world.is_held_out(*t) for t in world.triples(backwards)))
