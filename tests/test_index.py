"""Library indexing: discovery, segments, build/add/remove, bad files, model checks, resume, atomicity, ranks, CLI."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from test_index_support import (
    LIBRARY_SEGMENTS,
    ColorModel,
    index_contents,
    install_fake_loader,
    make_library,
    model_dir,
    write_color_video,
)

from index import ingest
from index.errors import IndexCorruptError, ModelMismatchError
from index.library import discover, resolve_inside
from index.reader import plan_segments
from index.searcher import Searcher
from index.store import IndexStore

CFG = dict(segment_seconds=2.0, workers=0, progress=False, checkpoint_seconds=0.0)


def cfg(**kw):
    return ingest.IngestConfig(**{**CFG, **kw})


def build(lib, out, tag="v1", **kw):
    return ingest.build(lib, out, model=ColorModel(tag), model_path=str(model_dir(out.parent, tag)), config=cfg(**kw))


@pytest.fixture
def lib(tmp_path):
    make_library(tmp_path / "lib")
    return tmp_path / "lib"


def top(index_dir, query, k=3):
    return [h.path for h in Searcher(index_dir, model=ColorModel()).search(query, k=k)]


def segment_ids(index_dir):
    store = IndexStore.open(index_dir)
    try:
        return {(r[0], r[1]): r[2] for r in store.conn.execute('SELECT path, start, id FROM segment_rows')}
    finally:
        store.close()


# -- pure pieces -------------------------------------------------------------------------------------------------
def test_plan_segments_windows_cover_the_clip():
    assert plan_segments(5.0, 8.0) == [(0.0, 5.0)]                                  # short clip: whole
    assert plan_segments(16.0, 8.0) == [(0.0, 8.0), (8.0, 16.0)]
    assert plan_segments(20.0, 8.0) == [(0.0, 8.0), (8.0, 16.0), (12.0, 20.0)]      # tail: full window at the end
    assert plan_segments(20.0, 8.0, stride=4.0) == [(0.0, 8.0), (4.0, 12.0), (8.0, 16.0), (12.0, 20.0)]
    assert plan_segments(0.0, 8.0) == [(0.0, 0.0)]


def test_discover_folder_list_and_annotations(tmp_path, lib):
    outside = write_color_video(tmp_path / "elsewhere" / "secret.mp4", "cyan")
    os.symlink(outside, lib / "link_out.mp4")
    os.symlink(lib / "red.mp4", lib / "link_in.mp4")
    (lib / ".hidden").mkdir()
    write_color_video(lib / ".hidden" / "h.mp4", "red")
    found = discover(lib)
    rel = sorted(os.path.relpath(f, found.root) for f in found.files)
    assert rel == ["green.webm", "link_in.mp4", "red.mp4", "sub/blue.mkv", "sub/redblue.mp4", "yellow.mov"]
    assert [(Path(p).name, "outside" in r) for p, r in found.rejected] == [("link_out.mp4", True)]

    (lib / "list.txt").write_text("# my picks\nred.mp4\nsub/blue.mkv\n../elsewhere/secret.mp4\nmissing.mp4\n")
    found = discover(lib / "list.txt")
    assert [os.path.relpath(f, found.root) for f in found.files] == ["red.mp4", "sub/blue.mkv"]
    assert sorted(r for _, r in found.rejected) == ["file not found", "outside the library root (symlink or path "
                                                                      "escaping it)"]
    anno = [{"video": "red.mp4", "caption": "a red clip"}, {"video": "red.mp4", "caption": ["again"]},
            {"video": "sub/redblue.mp4", "caption": "red then blue"}]
    (lib / "anno.json").write_text(json.dumps(anno))
    found = discover(lib / "anno.json")
    assert [os.path.relpath(f, found.root) for f in found.files] == ["red.mp4", "sub/redblue.mp4"]

    with pytest.raises(ValueError):
        resolve_inside(found.root, "../elsewhere/secret.mp4")
    with pytest.raises(ValueError):
        resolve_inside(found.root, str(outside))
    with pytest.raises(ValueError):
        resolve_inside(found.root, "link_out.mp4")
    found = discover(lib / "sub" / "blue.mkv")  # a single video
    assert [os.path.relpath(f, found.root) for f in found.files] == ["blue.mkv"]


# -- build / add / remove ------------------------------------------------------------------------------------------
def test_build_search_add_touch_change_remove(tmp_path, lib):
    out = tmp_path / "idx"
    report = build(lib, out, workers=1)  # one decoding process: the DataLoader path
    assert (report.found, report.encoded, report.segments, report.failures) == (5, 5, 6, [])
    assert index_contents(out) == LIBRARY_SEGMENTS
    assert set(top(out, "red", 2)) == {"red.mp4", "sub/redblue.mp4"}
    info = ingest.info(out)
    assert info["model_id"] == "color-v1" and info["faiss"]["kind"] == "flat" and info["faiss"]["recall_at_10"] == 1.0
    assert info["settings"] == {"segment_seconds": 2.0, "stride": 2.0, "frames": 4, "img_size": 16}
    before = segment_ids(out)

    # add: only the new file is encoded; existing ids are stable
    write_color_video(lib / "new" / "cyan.mp4", "cyan")
    report = ingest.add(out, lib, model=ColorModel(), config=cfg())
    assert (report.encoded, report.skipped) == (1, 5)
    after = segment_ids(out)
    assert {k: after[k] for k in before} == before and ("new/cyan.mp4", 0.0) in after
    assert top(out, "cyan", 1) == ["new/cyan.mp4"]

    # touched (new mtime, same bytes): hashed, not re-encoded
    st = os.stat(lib / "red.mp4")
    os.utime(lib / "red.mp4", ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    report = ingest.add(out, lib, model=ColorModel(), config=cfg())
    assert (report.encoded, report.unchanged) == (0, 1)
    assert segment_ids(out) == after
    assert ingest.add(out, lib, model=ColorModel(), config=cfg()).skipped == 6  # stat recorded: cheap next time

    # changed content: re-encoded, the old segment id is gone
    write_color_video(lib / "green.webm", "magenta")
    report = ingest.add(out, lib, model=ColorModel(), config=cfg())
    assert report.encoded == 1
    changed = segment_ids(out)
    assert changed[("green.webm", 0.0)] != after[("green.webm", 0.0)]
    assert top(out, "magenta", 1) == ["green.webm"]

    # remove a folder (relative to the library root), then a deleted file via --missing
    from index.update import remove
    result, unmatched = remove(out, ["sub", "nope.mp4"])
    assert (result.files_removed, result.segments_removed, unmatched) == (2, 3, ["nope.mp4"])
    (lib / "yellow.mov").unlink()
    result, _ = remove(out, [], missing=True)
    assert result.files_removed == 1
    assert [p for p, _, _ in index_contents(out)] == ["green.webm", "new/cyan.mp4", "red.mp4"]
    assert not list((out / "parts").iterdir())
    assert len(list((out / "faiss").iterdir())) == 1


def test_second_library_root(tmp_path, lib):
    out = tmp_path / "idx"
    build(lib, out)
    other = tmp_path / "more"
    write_color_video(other / "cyan.mp4", "cyan")
    ingest.add(out, other, model=ColorModel(), config=cfg())
    hit = Searcher(out, model=ColorModel()).search("cyan", k=1)[0]
    assert (hit.root, hit.path) == (str(other.resolve()), "cyan.mp4")
    assert ingest.info(out)["roots"] == [str(lib.resolve()), str(other.resolve())]
    # a sub-folder of a known root keeps paths relative to that root (no duplicates)
    assert ingest.add(out, lib / "sub", model=ColorModel(), config=cfg()).skipped == 2


def test_bad_files_are_skipped_and_reported(tmp_path, lib):
    good = (lib / "red.mp4").read_bytes()
    (lib / "bad").mkdir()
    (lib / "bad" / "zero.mp4").write_bytes(b"")
    (lib / "bad" / "random.mp4").write_bytes(np.random.default_rng(0).bytes(4096))
    (lib / "bad" / "truncated.mp4").write_bytes(good[: len(good) // 3])
    (lib / "bad" / "text.mp4").write_text("this is not a video\n" * 20)
    out = tmp_path / "idx"
    report = build(lib, out)
    failed = {Path(p).name: r for p, r in report.failures}
    assert sorted(failed) == ["random.mp4", "text.mp4", "truncated.mp4", "zero.mp4"]
    assert all(failed.values()) and "empty" in failed["zero.mp4"]
    assert index_contents(out) == LIBRARY_SEGMENTS
    info = ingest.info(out)
    assert sorted(Path(p).name for p, _ in info["failures_list"]) == sorted(failed)
    # unchanged bad files are not decoded again; a fixed one is picked up and leaves the failures list
    assert ingest.add(out, lib, model=ColorModel(), config=cfg()).known_bad == 4
    write_color_video(lib / "bad" / "zero.mp4", "cyan")
    assert ingest.add(out, lib, model=ColorModel(), config=cfg()).encoded == 1
    assert len(ingest.info(out)["failures_list"]) == 3


def test_model_and_settings_mismatch_refused(tmp_path, lib):
    out = tmp_path / "idx"
    build(lib, out)
    with pytest.raises(ModelMismatchError, match="color-v1.*color-v2"):
        ingest.add(out, lib, model=ColorModel("v2"), config=cfg())
    with pytest.raises(ModelMismatchError, match="color-v1.*color-v2"):
        build(lib, out, tag="v2")
    with pytest.raises(ValueError, match="segment_seconds"):
        build(lib, out, segment_seconds=4.0)
    with pytest.raises(ModelMismatchError, match="color-v2"):
        Searcher(out, model=ColorModel("v2"))
    assert index_contents(out) == LIBRARY_SEGMENTS


# -- crashes, resume, atomicity ----------------------------------------------------------------------------------
def test_interrupted_build_resumes_without_duplicates(tmp_path, lib, monkeypatch):
    from index import writer

    out = tmp_path / "idx"
    real_write, calls = writer.PartWriter.write, []

    def flaky(self, item):
        if len(calls) == 3:
            raise RuntimeError("disk full (simulated)")
        calls.append(item)
        real_write(self, item)
    monkeypatch.setattr(writer.PartWriter, "write", flaky)
    with pytest.raises(RuntimeError, match="disk full"):
        build(lib, out)
    assert ingest.info(out)["pending_checkpoints"] == 3
    assert Searcher(out, model=ColorModel()).search("red") == []  # nothing committed yet, still loadable
    monkeypatch.setattr(writer.PartWriter, "write", real_write)
    report = build(lib, out)
    assert (report.checkpointed, report.encoded) == (3, 2)
    assert index_contents(out) == LIBRARY_SEGMENTS
    shards = {p.name for p in (out / "shards").iterdir()}
    store = IndexStore.open(out)
    assert shards == {r[0] for r in store.conn.execute("SELECT DISTINCT shard FROM segments")}  # no garbage
    store.close()


@pytest.mark.parametrize("point", ["after_faiss_write", "before_commit", "after_commit", "after_parts_removed"])
def test_failed_update_leaves_a_loadable_index(tmp_path, lib, monkeypatch, point):
    out = tmp_path / "idx"
    build(lib, out)
    write_color_video(lib / "cyan.mp4", "cyan")
    monkeypatch.setenv("VMR_FAILPOINT", f"raise:{point}")
    with pytest.raises(RuntimeError, match="failpoint"):
        ingest.add(out, lib, model=ColorModel(), config=cfg())
    committed = point in ("after_commit", "after_parts_removed")
    expected = sorted(LIBRARY_SEGMENTS + [("cyan.mp4", 0.0, 1.0)]) if committed else LIBRARY_SEGMENTS
    assert index_contents(out) == expected
    s = Searcher(out, model=ColorModel())
    assert (s.search("cyan", k=1)[0].path == "cyan.mp4") == committed
    monkeypatch.delenv("VMR_FAILPOINT")
    ingest.add(out, lib, model=ColorModel(), config=cfg())
    assert index_contents(out) == sorted(LIBRARY_SEGMENTS + [("cyan.mp4", 0.0, 1.0)])
    assert s.search("cyan", k=1)[0].path == "cyan.mp4"  # the running searcher picked up the new version


def test_corrupt_index_is_reported_and_left_alone(tmp_path, lib):
    out = tmp_path / "idx"
    build(lib, out)
    faiss_file = next((out / "faiss").iterdir())
    faiss_file.write_bytes(faiss_file.read_bytes()[:100])
    snapshot = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != ".lock"}
    with pytest.raises(IndexCorruptError, match="truncated"):
        Searcher(out, model=ColorModel())
    write_color_video(lib / "cyan.mp4", "cyan")
    with pytest.raises(IndexCorruptError):
        ingest.add(out, lib, model=ColorModel(), config=cfg())
    from index.update import remove
    with pytest.raises(IndexCorruptError):
        remove(out, ["red.mp4"])
    after = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != ".lock" and "parts" not in p.parts
             and "shards" not in p.parts}
    assert all(after[p] == snapshot[p] for p in after)  # metadata and FAISS file untouched

    (out / "index.sqlite").write_bytes(b"garbage" * 100)
    with pytest.raises(IndexCorruptError, match="unreadable"):
        Searcher(out, model=ColorModel())


# -- several ranks ------------------------------------------------------------------------------------------------
def test_ranks_write_parts_and_rank0_merges(tmp_path, lib):
    out = tmp_path / "idx"
    r1 = ingest.build(lib, out, model=ColorModel(), config=cfg(), rank=1, world=2)
    assert r1.commit is None and (out / "parts" / "rank1of2" / "DONE").exists()
    r0 = ingest.build(lib, out, model=ColorModel(), config=cfg(), rank=0, world=2)
    assert r0.encoded + r1.encoded == 5 and r0.encoded and r1.encoded
    assert index_contents(out) == LIBRARY_SEGMENTS
    assert not list((out / "parts").iterdir())


def test_explicit_merge_after_ranks(tmp_path, lib):
    from index.update import merge

    out = tmp_path / "idx"
    ingest.build(lib, out, model=ColorModel(), config=cfg(), rank=1, world=2)
    ingest.build(lib, out, model=ColorModel(), config=cfg(merge_timeout=0.1), rank=1, world=2)  # rerun: no-op
    assert index_contents(out) == []
    merge(out)
    assert [p for p, _, _ in index_contents(out)] and len(index_contents(out)) < len(LIBRARY_SEGMENTS)


# -- the command line -------------------------------------------------------------------------------------------
def test_cli_build_info_search_remove(tmp_path, lib, monkeypatch, capsys):
    from app.cli import main

    install_fake_loader(monkeypatch)
    out, model = tmp_path / "idx", model_dir(tmp_path)
    (lib / "zero.mp4").write_bytes(b"")
    # --cuda-graphs is a no-op off the GPU (retrieval.cuda_graphs runs the encoder directly)
    assert main(["index", "build", "--videos", str(lib), "--model", str(model), "--out", str(out),
                 "--segment-seconds", "2", "--workers", "0", "--no-progress", "--cuda-graphs"]) == 0
    text = capsys.readouterr().out
    assert "6 videos found: 5 encoded (6 segments)" in text and "zero.mp4: empty file" in text
    assert main(["index", "info", "--index", str(out), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert (data["files"], data["segments"], data["failures"]) == (5, 6, 1)
    assert main(["index", "info", "--index", str(out)]) == 0
    assert "IDMap2,Flat" in capsys.readouterr().out

    assert main(["search", "--index", str(out), "cyan or", "blue", "-k", "2", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert len(hits) == 2 and {"path", "start", "end", "score", "segments"} <= set(hits[0])
    assert main(["search", "--index", str(out), "blue", "-k", "3", "--segments"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["rank", "score", "video", "segment"] and table[4].startswith("score: cosine")
    assert [line.split()[0] for line in table[1:4]] == ["1", "2", "3"]  # three rows, then the score legend

    assert main(["index", "add", "--index", str(out), "--videos", str(lib), "--model",
                 str(model_dir(tmp_path, "v2")), "--workers", "0", "--no-progress"]) == 2
    assert "color-v1" in capsys.readouterr().err
    assert main(["index", "remove", "--index", str(out), "--videos", str(lib / "red.mp4")]) == 0
    assert "removed 1 files (1 segments)" in capsys.readouterr().out
    assert main(["search", "--index", str(tmp_path / "nothing"), "red"]) == 2
    assert "no index" in capsys.readouterr().err
    assert main(["search", "--index", str(out), " "]) == 2
    assert "empty query" in capsys.readouterr().err


def test_cli_help_is_cheap():
    import subprocess
    import sys

    code = ("import argparse, sys, importlib\n"
            "for name in ('index', 'search', 'serve'):\n"
            "    importlib.import_module('app.commands.' + name).add_arguments(argparse.ArgumentParser())\n"
            "print([m for m in ('torch', 'faiss', 'gradio', 'av', 'numpy') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


# -- the real dual encoder ------------------------------------------------------------------------------------------
TINY_MODEL = {
    "video": {"name": "videomamba_tiny", "encoder": {"embed_dim": 64, "depth": 2, "img_size": 32, "num_frames": 4}},
    "text": {"kind": "clip", "width": 64, "layers": 2, "heads": 2, "context_length": 16},
    "embed_dim": 32,
}


def test_real_model_end_to_end(tmp_path, lib, capsys):
    """`vmr index build/search` with a saved VideoTextModel: stored embeddings equal the model's own encoding of
    the same frames, scores are text . video, and the Searcher reloads the model from the recorded folder."""
    import torch

    from app.cli import main
    from retrieval import create_model, load_model, save_model
    from retrieval.data.transforms import frames_to_tensor
    from retrieval.data.video import read_frames

    torch.manual_seed(0)
    model_path = save_model(create_model(TINY_MODEL).eval(), tmp_path / "tiny-model")
    out = tmp_path / "idx"
    assert main(["index", "build", "--videos", str(lib), "--model", str(model_path), "--out", str(out),
                 "--segment-seconds", "2", "--workers", "1", "--no-progress"]) == 0
    assert "5 encoded (6 segments)" in capsys.readouterr().out
    assert index_contents(out) == LIBRARY_SEGMENTS

    model = load_model(model_path).eval()
    s = Searcher(out)
    assert s.info()["model_id"] == model.model_id
    hits = s.search("a red square", k=6, group_by_video=False)
    assert len(hits) == 6
    with torch.no_grad():
        text = model.encode_text(["a red square"])[0]
        frames = read_frames(str(lib / "sub" / "redblue.mp4"), 4, start_sec=2.0, end_sec=4.0)
        video = model.encode_video(frames_to_tensor(frames, 32)[None])[0]
    hit = next(h for h in hits if h.path == "sub/redblue.mp4" and h.start == 2.0)
    assert hit.score == pytest.approx(float(text @ video), abs=2e-3)  # float16 storage

    assert main(["search", "--index", str(out), "a red square", "-k", "1", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 1
    other = save_model(create_model(TINY_MODEL).eval(), tmp_path / "other-model")  # new random weights
    assert main(["index", "add", "--index", str(out), "--videos", str(lib), "--model", str(other), "--workers", "0",
                 "--no-progress"]) == 2
    assert "model mismatch" in capsys.readouterr().err


def test_index_built_in_memory_opens_with_the_same_weights_loaded_from_disk(tmp_path, lib):
    from test_model import TINY_MODEL

    from retrieval import create_model, save_model

    model = create_model(TINY_MODEL).eval()
    path = save_model(model, tmp_path / "model")
    ingest.build(lib, tmp_path / "idx", model=model, model_path=str(path), config=cfg())  # the model in memory
    hits = Searcher(tmp_path / "idx", device="cpu").search("red", k=3)  # loads the recorded folder
    assert hits
