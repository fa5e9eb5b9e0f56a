"""Bad inputs: every command finishes over a corpus of broken media/annotations, names each bad item with a
reason and processes every good one; fuzzed annotation files and queries raise only the documented errors."""
from __future__ import annotations

import json
import os
import string
import tarfile
from pathlib import Path

import pytest

pytest.importorskip("av")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from reliability_corpus import (  # noqa: E402
    bad_annotation_files,
    corrupt_tar_member,
    make_corpus,
    truncation_survivors,
    write_captions,
    write_generic_annotations,
)
from test_demo import TINY_MODEL  # noqa: E402
from test_index_support import index_contents  # noqa: E402

FUZZ = settings(max_examples=int(os.environ.get("VMR_FUZZ_EXAMPLES", 150)), deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    c = make_corpus(root / "media")
    write_captions(c)
    anno = root / "anno.json"
    write_generic_annotations(c, anno)
    return c, anno


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    import retrieval

    return retrieval.save_model(retrieval.create_model(TINY_MODEL).eval(), tmp_path_factory.mktemp("m") / "model")


def _check_partition(good, bad, maybe, processed: set[str], rejected: dict[str, str]) -> None:
    """Every good item processed, every bad one rejected with a non-empty reason, nothing dropped silently."""
    assert not processed & set(rejected), processed & set(rejected)
    assert set(good) <= processed, sorted(set(good) - processed)
    strict_bad = set(bad) - set(maybe)
    assert strict_bad <= set(rejected), sorted(strict_bad - set(rejected))
    everything = set(good) | set(bad)
    assert processed | set(rejected) == everything, sorted(everything ^ (processed | set(rejected)))
    assert all(r and r.strip() for r in rejected.values()), rejected


@pytest.fixture(scope="module")
def built_index(corpus, tiny_model, tmp_path_factory):
    from app.cli import main

    c, _ = corpus
    out = tmp_path_factory.mktemp("idx") / "index"
    argv = ["index", "build", "--videos", str(c.root), "--model", str(tiny_model), "--out", str(out),
            "--segment-seconds", "2", "--workers", "0", "--device", "cpu", "--no-progress"]
    assert main(argv) == 0
    return out


def test_index_build_over_the_corpus(corpus, built_index, capsys):
    from index.ingest import info

    c, _ = corpus
    data = info(built_index)
    rejected = {os.path.basename(p): r for p, r in data["failures_list"]}
    processed = {p for p, _, _ in index_contents(built_index)}
    _check_partition(c.good, c.bad, truncation_survivors(c), processed, rejected)
    print(f"index build: {len(processed)} indexed, {len(rejected)} rejected: {rejected}")


def test_shards_over_the_corpus(corpus, tmp_path, capsys):
    from app.cli import main

    c, _ = corpus
    out = tmp_path / "shards"
    assert main(["shards", "--videos", str(c.root), "--out", str(out), "--shard-size", "4", "--quiet"]) == 0
    assert "skipped" in capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    rejected = {s["video"]: s["reason"] for s in report["skipped"]}
    processed = set()
    for p in sorted(out.glob("shard-*.tar")):
        with tarfile.open(p) as t:
            processed |= {json.loads(t.extractfile(m).read())["video"] for m in t.getmembers()
                          if m.name.endswith(".json")}
    _check_partition(c.good, c.bad, truncation_survivors(c), processed, rejected)
    assert report["samples"] == len(processed) and report["items"] == len(c.good) + len(c.bad)


def test_eval_allow_missing_over_the_corpus(corpus, tiny_model, tmp_path, capsys):
    from app.cli import main

    c, anno = corpus
    out = tmp_path / "report.json"
    argv = ["eval", "--dataset", "generic", "--anno", str(anno), "--videos", str(c.root), "--model", str(tiny_model),
            "--allow-missing", "--workers", "0", "--device", "cpu", "--out", str(out),
            "--cache-dir", str(tmp_path / "cache"), "--no-progress"]
    assert main(argv) == 0
    report = json.loads(out.read_text())
    assert sorted(report["missing"]) == ["missing_0", "missing_1"]
    rejected = {Path(u["file"]).name: u["reason"] for u in report["unreadable"]}
    n_processed = report["num_videos"]
    maybe = truncation_survivors(c)
    assert set(c.bad) - set(maybe) <= set(rejected) and not set(c.good) & set(rejected)
    assert n_processed + len(rejected) == len(c.good) + len(c.bad)
    assert not report["complete"]
    # without --allow-missing the same run refuses, naming the problem
    assert main(argv[:argv.index("--allow-missing")] + argv[argv.index("--allow-missing") + 1:]) == 2
    assert "missing_0" in capsys.readouterr().err


def test_corrupt_and_truncated_shards_skip_only_the_bad_samples(corpus, tmp_path):
    """A shard whose video members are garbage or whose tail is cut: the stream skips and counts, never stops."""
    import torch

    from pretrain.data import ShardStream, StreamSpec
    from pretrain.shards import ShardOptions, read_annotations, write_shards

    c, _ = corpus
    items = [it for it in read_annotations(None, c.root) if it.name in c.good]
    write_shards(items, c.root, tmp_path / "s", ShardOptions(shard_size=len(items)), progress=False)
    good_shard = tmp_path / "s" / "shard-000000.tar"
    corrupted = corrupt_tar_member(good_shard, tmp_path / "corrupt.tar")
    data = good_shard.read_bytes()
    (tmp_path / "cut.tar").write_bytes(data[:len(data) * 2 // 3])

    def keys(url):
        spec = StreamSpec(sources=[([str(url)], 1.0)], batch_size=1, num_frames=2, img_size=16,
                          mean=(0.5,) * 3, std=(0.5,) * 3, context_length=8, train=False, drop_last=False)
        stream = ShardStream(spec, lambda t, context_length: torch.zeros(len(t), context_length, dtype=torch.long))
        stream.set_epoch(0)
        out = [k for b in stream if not b.get("_end") for k in b["keys"]]
        return out, stream._read_errors

    all_keys, errors = keys(good_shard)
    assert len(all_keys) == len(items) and not errors
    got, _ = keys(tmp_path / "corrupt.tar")
    assert got == [k for k in all_keys if k not in corrupted] and corrupted
    got, _ = keys(tmp_path / "cut.tar")   # the samples before the cut come through
    assert got == all_keys[:len(got)]


# -------------------------------------------------------------------------------- annotation files

def test_bad_annotation_files_raise_annotation_error(tmp_path):
    from retrieval.data.annotations import AnnotationError, load_annotations

    files = bad_annotation_files(tmp_path)
    for name, path in files.items():
        dataset = "msrvtt" if name == "duplicate_ids.json" else "auto"  # generic allows a video several times
        with pytest.raises(AnnotationError) as e:
            load_annotations(path, dataset)
        assert str(path) in str(e.value) or name == "duplicate_ids.json", (name, e.value)


def test_bad_annotation_files_through_vmr_shards(tmp_path, capsys):
    """`vmr shards --anno BAD` exits 2 with a one-line reason, or (lenient reader) lists every item as skipped."""
    from app.cli import main

    for name, path in bad_annotation_files(tmp_path / "anno").items():
        out = tmp_path / "o" / name
        rc = main(["shards", "--anno", str(path), "--videos", str(tmp_path), "--out", str(out), "--quiet"])
        err = capsys.readouterr().err
        if rc == 2:
            assert err.startswith("vmr shards:") and len(err.strip().splitlines()) == 1, (name, err)
        else:
            assert rc == 0, name
            report = json.loads((out / "report.json").read_text())
            assert report["samples"] == 0 and len(report["skipped"]) == report["items"], (name, report)


_json_leaf = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=8))
_json = st.recursive(_json_leaf, lambda inner: st.one_of(
    st.lists(inner, max_size=4),
    st.dictionaries(st.sampled_from(["video", "caption", "captions", "image", "sentences", "timestamps",
                                     "duration", "video_id", "sentence", "start", "end", "x"]) | st.text(max_size=5),
                    inner, max_size=5)), max_leaves=12)
_records = st.lists(st.fixed_dictionaries({}, optional={
    "video": _json_leaf, "caption": _json_leaf | st.lists(_json_leaf, max_size=3), "image": _json_leaf,
    "duration": _json_leaf, "start": _json_leaf, "end": _json_leaf}), max_size=4)
_csvish = st.lists(st.lists(st.text(alphabet=string.printable, max_size=6), max_size=5), max_size=4).map(
    lambda rows: "\n".join(",".join(r) for r in rows))


def _write_payload(path, payload):
    """Fuzz payloads are bytes or (possibly surrogate-bearing) text; write either as raw bytes."""
    path.write_bytes(payload.encode("utf-8", "surrogatepass") if isinstance(payload, str) else payload)
    return path


@FUZZ
@given(payload=st.one_of(st.binary(max_size=200), _json.map(json.dumps), _records.map(json.dumps), _csvish),
       dataset=st.sampled_from(["auto", "generic", "msrvtt", "activitynet", "lsmdc"]),
       suffix=st.sampled_from([".json", ".csv", ".txt"]))
def test_fuzz_annotation_loader_raises_only_annotation_error(tmp_path, payload, dataset, suffix):
    from retrieval.data.annotations import AnnotationError, load_annotations

    path = _write_payload(tmp_path / f"anno{suffix}", payload)
    try:
        items = load_annotations(path, dataset)
    except AnnotationError:
        return
    for it in items:  # what loads is well formed
        assert isinstance(it.video_id, str) and it.video_id and it.captions
        assert all(isinstance(x, str) for x in it.captions)


@FUZZ
@given(payload=st.one_of(st.binary(max_size=200), _json.map(json.dumps), _records.map(json.dumps), _csvish),
       suffix=st.sampled_from([".json", ".csv"]))
def test_fuzz_shard_annotation_reader_raises_only_value_error(tmp_path, payload, suffix):
    """`vmr shards` turns ValueError/FileNotFoundError into a one-line message; anything else is a traceback."""
    from pretrain.shards import read_annotations

    path = _write_payload(tmp_path / f"anno{suffix}", payload)
    try:
        items = read_annotations(path, tmp_path)
    except ValueError:
        return
    for it in items:
        assert isinstance(it.name, str) and all(isinstance(x, str) for x in it.captions)


# -------------------------------------------------------------------------------- queries

@FUZZ
@given(text=st.text(max_size=3000) | st.text(alphabet=" \t\n\r\x0b\x0c\u00a0\u2003\u3000", max_size=20))
def test_fuzz_search_queries(built_index, text):
    s = _searcher(built_index)
    if not text.strip():
        with pytest.raises(ValueError):
            s.search(text, k=3)
        return
    hits = s.search(text, k=3)
    assert len(hits) <= 3 and all(h.path for h in hits)


_SEARCHERS: dict = {}


def _searcher(index_dir):
    from index.searcher import Searcher

    if index_dir not in _SEARCHERS:
        _SEARCHERS[index_dir] = Searcher(index_dir, device="cpu")
    return _SEARCHERS[index_dir]
