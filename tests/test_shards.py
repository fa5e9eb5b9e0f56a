"""Shard writer: round trip, unique keys, skip report, atomic + resumable output, input formats, re-encoding, CLI."""
from __future__ import annotations

import csv
import hashlib
import json
import tarfile
from pathlib import Path

import pytest
from helpers_media import write_test_image, write_test_video

from pretrain.shards import ShardOptions, read_annotations, write_shards

pytest.importorskip("av")
pytest.importorskip("webdataset")


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("shard-*.tar"))}


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> tuple[Path, Path]:
    """7 good clips (one listed twice), one truncated, one missing, one image, one audio-less non-media file."""
    root = tmp_path_factory.mktemp("media")
    vids = root / "videos"
    for i in range(7):
        write_test_video(vids / f"v{i}.mp4", num_frames=6 + i, size=(32, 24), fps=8)
    data = (vids / "v0.mp4").read_bytes()
    (vids / "broken.mp4").write_bytes(data[: len(data) // 3])
    write_test_image(vids / "still.jpg", size=(20, 16))
    (vids / "notes.mp4").write_bytes(b"this is not a video")
    anno = [{"video": f"v{i}.mp4", "caption": [f"clip {i}", f"another view of clip {i}"]} for i in range(7)]
    anno += [{"video": "v3.mp4", "caption": "extra caption for clip 3"},  # same video again: merged
             {"video": "broken.mp4", "caption": "truncated file"},
             {"video": "gone.mp4", "caption": "missing file"},
             {"image": "still.jpg", "caption": "a still image"},
             {"video": "notes.mp4", "caption": "not a video"}]
    (root / "anno.json").write_text(json.dumps(anno))
    return root / "anno.json", vids


def _read_samples(out: Path) -> list[dict]:
    import webdataset as wds

    urls = [str(p) for p in sorted(out.glob("shard-*.tar"))]
    return list(wds.WebDataset(urls, shardshuffle=False, empty_check=False))


def test_round_trip_keys_and_report(media, tmp_path):
    anno, vids = media
    items = read_annotations(anno, vids)
    assert [it.name for it in items][:7] == [f"v{i}.mp4" for i in range(7)]
    assert items[3].captions == ["clip 3", "another view of clip 3", "extra caption for clip 3"]
    report = write_shards(items, vids, tmp_path, ShardOptions(shard_size=3), progress=False)
    assert len(report["shards"]) == 4 and report["items"] == len(items) == 11
    skipped = {s["video"]: s["reason"] for s in report["skipped"]}
    assert set(skipped) == {"broken.mp4", "gone.mp4", "notes.mp4"}
    assert skipped["gone.mp4"] == "missing file"
    assert all(skipped[k] for k in skipped)
    samples = _read_samples(tmp_path)
    assert len(samples) == report["samples"] == 8
    keys = [s["__key__"] for s in samples]
    assert len(set(keys)) == len(keys)
    by_name = {json.loads(s["json"])["video"]: s for s in samples}
    for i in range(7):  # the bytes are stored exactly as they were (no re-encode by default)
        assert by_name[f"v{i}.mp4"]["mp4"] == (vids / f"v{i}.mp4").read_bytes()
        assert json.loads(by_name[f"v{i}.mp4"]["json"])["captions"][0] == f"clip {i}"
        assert by_name[f"v{i}.mp4"]["txt"].decode() == f"clip {i}"
    assert by_name["still.jpg"]["jpg"] == (vids / "still.jpg").read_bytes()  # image = one-frame video
    assert json.loads((tmp_path / "report.json").read_text())["samples"] == 8


def test_deterministic_and_resumable(media, tmp_path):
    anno, vids = media
    items = read_annotations(anno, vids)
    a, b = tmp_path / "a", tmp_path / "b"
    write_shards(items, vids, a, ShardOptions(shard_size=3, workers=2), progress=False)
    want = _digest(a)
    # A run killed mid-way: one shard finished, one half-written .tmp, the rest absent.
    write_shards(items[:3], vids, b, ShardOptions(shard_size=3), progress=False)
    (b / "shard-000001.tar.tmp").write_bytes(b"half a shard")
    (b / "report.json").unlink()
    before = (b / "shard-000000.tar").stat().st_mtime_ns
    write_shards(items, vids, b, ShardOptions(shard_size=3), progress=False)
    assert (b / "shard-000000.tar").stat().st_mtime_ns == before  # finished shards are not redone
    assert not list(b.glob("*.tmp"))
    assert _digest(b) == want
    report = json.loads((b / "report.json").read_text())
    assert {s["video"] for s in report["skipped"]} == {"broken.mp4", "gone.mp4", "notes.mp4"}


def test_readers_msrvtt_and_folder(tmp_path):
    vids = tmp_path / "videos"
    for name in ("video1", "video2"):
        write_test_video(vids / f"{name}.mp4", num_frames=4, size=(16, 16))
    test_csv = tmp_path / "MSRVTT_JSFUSION_test.csv"
    with open(test_csv, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["key", "vid_key", "video_id", "sentence"])
        w.writerow(["ret0", "msr1", "video1", "a man talks"])
        w.writerow(["ret1", "msr2", "video2", "a dog runs"])
    items = read_annotations(test_csv, vids)
    assert [(i.name, i.captions) for i in items] == [("video1.mp4", ["a man talks"]), ("video2.mp4", ["a dog runs"])]
    data = {"videos": [{"video_id": "video1"}, {"video_id": "video2"}],
            "sentences": [{"video_id": "video2", "caption": "b"}, {"video_id": "video1", "caption": "a"},
                          {"video_id": "video2", "caption": "c"}]}
    (tmp_path / "MSRVTT_data.json").write_text(json.dumps(data))
    train_csv = tmp_path / "MSRVTT_train.9k.csv"
    train_csv.write_text("video_id\nvideo1\nvideo2\n")
    items = read_annotations(train_csv, vids)
    assert [(i.name, i.captions) for i in items] == [("video1.mp4", ["a"]), ("video2.mp4", ["b", "c"])]
    folder = tmp_path / "plain"
    write_test_video(folder / "b.mp4", num_frames=4, size=(16, 16))
    write_test_image(folder / "a.png")
    (folder / "a.txt").write_text("first\nsecond\n")
    (folder / "b.txt").write_text("only\n")
    items = read_annotations(None, folder)
    assert [(i.name, i.captions) for i in items] == [("a.png", ["first", "second"]), ("b.mp4", ["only"])]
    report = write_shards(items, folder, tmp_path / "out", ShardOptions(shard_size=10), progress=False)
    assert report["samples"] == 2 and not report["skipped"]


def test_reencode_limits_size_and_fps(tmp_path):
    from pretrain.shards import media_size
    from retrieval.data.video import read_frames_bytes

    vids = tmp_path / "v"
    write_test_video(vids / "big.mp4", num_frames=16, size=(64, 48), fps=16)
    write_test_video(vids / "small.mp4", num_frames=8, size=(16, 12), fps=4)
    (tmp_path / "a.json").write_text(json.dumps([{"video": "big.mp4", "caption": "x"},
                                                 {"video": "small.mp4", "caption": "y"}]))
    out = tmp_path / "out"
    write_shards(read_annotations(tmp_path / "a.json", vids), vids, out,
                 ShardOptions(shard_size=10, max_side=32, fps=8), progress=False)
    samples = {json.loads(s["json"])["video"]: s for s in _read_samples(out)}
    big = media_size(samples["big.mp4"]["mp4"])
    assert (big.width, big.height) == (32, 24) and big.fps == pytest.approx(8)
    assert read_frames_bytes(samples["big.mp4"]["mp4"], 4).shape == (4, 24, 32, 3)
    assert samples["small.mp4"]["mp4"] == (vids / "small.mp4").read_bytes()  # within limits: untouched


def test_cli(media, tmp_path, capsys):
    from app.cli import main

    anno, vids = media
    rc = main(["shards", "--anno", str(anno), "--videos", str(vids), "--out", str(tmp_path), "--shard-size", "4",
               "--quiet"])
    out = capsys.readouterr().out
    assert rc == 0 and "wrote 8 samples" in out and "skipped 3" in out
    with tarfile.open(tmp_path / "shard-000000.tar") as t:
        names = t.getnames()
    assert all("." in n and n.count(".") == 1 for n in names)  # WebDataset keys carry no dots
    assert main(["shards", "--anno", str(tmp_path / "nope.json"), "--videos", str(vids), "--out", str(tmp_path)]) == 2
