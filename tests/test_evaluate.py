"""Evaluation runner end to end with a fake colour-reading model (files, decoding, cache, metrics, report) and
`vmr eval`."""
from __future__ import annotations

import json
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("av")

from helpers_media import index_color, write_test_video  # noqa: E402

from evaluation.evaluate import EvalError, evaluate  # noqa: E402
from evaluation.report import append_table, format_report, write_report  # noqa: E402
from retrieval.data.transforms import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from retrieval.data.video import one_thread  # noqa: E402

E = 16


class ColourModel:
    """Video embedding = one-hot of the clip's red digit (`index_color(k)` has red 8 + 16 k);
    text "clip number k" -> one-hot k."""

    model_id = "colour-v1"

    def __init__(self):
        self.config = SimpleNamespace(video=SimpleNamespace(num_frames=4, img_size=16, mean=IMAGENET_MEAN,
                                                            std=IMAGENET_STD),
                                      text=SimpleNamespace(context_length=8))
        self.videos_encoded = 0
        self.frames_seen = []

    def encode_video(self, video, normalize=True):
        assert video.shape[1:] == (3, 4, 16, 16)
        self.videos_encoded += video.shape[0]
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1, 1)
        red = ((video * std + mean) * 255).mean(dim=(2, 3, 4))[:, 0]  # (B,)
        digit = ((red - 8) / 16).round().long().clamp(0, E - 1)
        return F.one_hot(digit, E).float()

    def encode_text(self, texts, normalize=True):
        return F.one_hot(torch.tensor([int(t.split()[-1]) for t in texts]), E).float()


def make_msrvtt(tmp_path, captions: dict[int, int], num_videos: int = 6):
    """Clips video<k>.mp4 of flat colour index_color(k); csv rows video<k> -> "clip number <captions[k]>"."""
    videos = tmp_path / "videos"
    for k in range(num_videos):
        write_test_video(videos / f"video{k}.mp4", num_frames=6, size=(32, 24), fps=6,
                         pattern=lambda i, k=k: np.zeros((24, 32, 3), np.uint8) + np.array(index_color(k), np.uint8))
    anno = tmp_path / "test.csv"
    anno.write_text("key,vid_key,video_id,sentence\n" + "".join(
        f"ret{k},msr{k},video{k},clip number {captions.get(k, k)}\n" for k in range(num_videos)))
    return anno, videos


# Hand-worked: video4's caption names 5. t2v ranks 1 1 1 1 6 1 (its correct video scores 0 and ties
# with every other video, pessimistic -> 6); v2t ranks 1 1 1 1 6 2 (video5's text ties with text4).
T2V = {"R1": 500 / 6, "R5": 500 / 6, "R10": 100.0, "MdR": 1.0, "MnR": 11 / 6}
V2T = {"R1": 400 / 6, "R5": 500 / 6, "R10": 100.0, "MdR": 1.0, "MnR": 2.0}


def check(metrics: dict, expected: dict):
    for k, v in expected.items():
        assert metrics[k] == pytest.approx(v), k


@pytest.fixture
def msrvtt(tmp_path):
    return make_msrvtt(tmp_path, {4: 5})


def test_end_to_end_metrics_report_and_cache(msrvtt, tmp_path):
    anno, videos = msrvtt
    model = ColourModel()
    kw = dict(workers=0, batch_size=4, cache_dir=tmp_path / "cache", progress=False, log=lambda m: None)
    report = evaluate(model, "msrvtt", anno, videos, **kw)
    check(report["t2v"], T2V)
    check(report["v2t"], V2T)
    assert (report["num_queries"], report["num_videos"], report["num_missing"], report["complete"]) == (6, 6, 0, True)
    assert report["protocol"]["num_frames"] == 4 and report["protocol"]["img_size"] == 16
    assert "pessimistic" in report["protocol"]["tie_rule"] and report["cache"]["state"] == "miss"
    assert model.videos_encoded == 6 and report["timing"]["videos_encoded"] == 6
    text = format_report(report)
    assert "| text-to-video (similarity only) | 83.3 | 83.3 | 100.0 | 1 | 1.8 |" in text
    assert "| video-to-text (similarity only) | 66.7 | 83.3 | 100.0 | 1 | 2.0 |" in text
    assert "4 frames" in text and "middle" in text and "context length 8" in text
    json.loads(write_report(report, tmp_path / "r.json").read_text())

    again = evaluate(model, "msrvtt", anno, videos, **kw)  # instant: nothing decoded or encoded
    assert model.videos_encoded == 6 and again["cache"]["state"] == "hit" and again["t2v"] == report["t2v"]

    # a changed file is re-encoded, the rest comes from the cache
    write_test_video(videos / "video1.mp4", num_frames=6, size=(32, 24), fps=6,
                     pattern=lambda i: np.zeros((24, 32, 3), np.uint8) + np.array(index_color(1), np.uint8))
    os.utime(videos / "video1.mp4", ns=(1, 1))
    third = evaluate(model, "msrvtt", anno, videos, **kw)
    assert model.videos_encoded == 7 and third["cache"]["state"] == "partial" and third["t2v"] == report["t2v"]

    # another frame count is another protocol: a separate cache entry
    evaluate(model, "msrvtt", anno, videos, **{**kw, "num_frames": 4, "context_length": 8})
    assert model.videos_encoded == 7


def test_decode_workers_give_the_same_result(msrvtt):
    anno, videos = msrvtt
    report = evaluate(ColourModel(), "msrvtt", anno, videos, workers=1, batch_size=2, progress=False,
                      log=lambda m: None)
    check(report["t2v"], T2V)
    assert report["timing"]["decode_s"] > 0


def test_missing_videos_fail_by_default_or_are_dropped_and_reported(msrvtt):
    anno, videos = msrvtt
    (videos / "video2.mp4").unlink()
    with pytest.raises(EvalError, match=r"1 of 6 videos not found .*video2.*--allow-missing"):
        evaluate(ColourModel(), "msrvtt", anno, videos, workers=0, progress=False)
    report = evaluate(ColourModel(), "msrvtt", anno, videos, workers=0, allow_missing=True, progress=False,
                      log=lambda m: None)
    assert (report["num_queries"], report["num_videos"], report["num_missing"]) == (5, 5, 1)
    assert report["missing"] == ["video2"] and not report["complete"]
    # remaining: t2v ranks 1 1 1 5 1 (text4 -> video4 ties with 4 others), v2t ranks 1 1 1 5 2
    assert report["t2v"]["R1"] == pytest.approx(80.0) and report["v2t"]["R1"] == pytest.approx(60.0)
    assert "INCOMPLETE" in format_report(report)


def test_unreadable_videos_are_reported_by_name_and_reason(msrvtt, tmp_path):
    anno, videos = msrvtt
    (videos / "video3.mp4").write_bytes(b"not a video at all" * 10)
    with pytest.raises(EvalError, match=r"1 of 6 videos could not be decoded: video3: cannot open"):
        evaluate(ColourModel(), "msrvtt", anno, videos, workers=0, progress=False, cache_dir=tmp_path / "c",
                 log=lambda m: None)
    model = ColourModel()
    report = evaluate(model, "msrvtt", anno, videos, workers=0, allow_missing=True, progress=False,
                      cache_dir=tmp_path / "c", log=lambda m: None)
    assert model.videos_encoded == 0  # the failed run cached the other five and the failure
    assert report["num_unreadable"] == 1 and report["unreadable"][0]["video"] == "video3"
    assert report["unreadable"][0]["reason"].startswith("cannot open") and report["num_videos"] == 5
    assert "video3 (cannot open" in format_report(report)


def test_dual_softmax_is_opt_in_and_labelled(msrvtt):
    anno, videos = msrvtt
    plain = evaluate(ColourModel(), "msrvtt", anno, videos, workers=0, progress=False, log=lambda m: None)
    assert "dual_softmax" not in plain
    report = evaluate(ColourModel(), "msrvtt", anno, videos, workers=0, progress=False, use_dual_softmax=True,
                      log=lambda m: None)
    assert report["t2v"] == plain["t2v"] and "TRANSDUCTIVE" in report["dual_softmax"]["note"]
    assert "dual softmax (transductive)" in format_report(report)


def test_activitynet_paragraphs_with_stripped_file_names(tmp_path):
    videos = tmp_path / "videos"
    for k, name in enumerate(["aaa", "v_bbb"]):  # CLIP4Clip strips v_, other layouts keep it
        write_test_video(videos / f"{name}.webm", num_frames=6, size=(32, 24), fps=6,
                         pattern=lambda i, k=k: np.zeros((24, 32, 3), np.uint8) + np.array(index_color(k), np.uint8))
    anno = tmp_path / "val_1.json"
    anno.write_text(json.dumps({
        "v_aaa": {"duration": 1.0, "timestamps": [[0, 0.5], [0.5, 1]], "sentences": ["first part", "  clip number 0"]},
        "v_bbb": {"duration": 1.0, "timestamps": [[0, 1]], "sentences": ["clip number 1"]}}))
    report = evaluate(ColourModel(), "activitynet", anno, videos, workers=0, progress=False, log=lambda m: None)
    assert report["t2v"]["R1"] == 100.0 and report["num_queries"] == 2 and report["protocol"]["paragraph"]


def _colour_clip(path, k: int) -> None:
    write_test_video(path, num_frames=6, size=(32, 24), fps=6,
                     pattern=lambda i: np.zeros((24, 32, 3), np.uint8) + np.array(index_color(k), np.uint8))


@pytest.fixture
def same_stem(tmp_path):
    """x.mp4 (colour 0) and x.webm (colour 1) side by side, plus y.mp4 (colour 2)."""
    videos = tmp_path / "videos"
    for name, k in (("x.mp4", 0), ("x.webm", 1), ("y.mp4", 2)):
        _colour_clip(videos / name, k)
    return videos


def test_same_stem_files_named_with_extensions_are_two_videos(same_stem, tmp_path):
    anno = tmp_path / "anno.json"
    anno.write_text(json.dumps([{"video": "x.mp4", "caption": "clip number 0"},
                                {"video": "x.webm", "caption": "clip number 1"},
                                {"video": "y.mp4", "caption": ["clip number 2", "again clip number 2"]}]))
    kw = dict(workers=0, progress=False, log=lambda m: None)
    report = evaluate(ColourModel(), "generic", anno, same_stem, cache_dir=tmp_path / "cache", **kw)
    assert (report["num_videos"], report["num_queries"]) == (3, 4) and report["complete"]
    assert report["t2v"]["R1"] == 100.0 and report["v2t"]["R1"] == 100.0  # each caption finds its own file
    with np.load(next((tmp_path / "cache").rglob("cache.npz"))) as cache:
        cached = json.loads(cache["index"].tobytes())["videos"]
    assert sorted(cached) == ["x.mp4", "x.webm", "y"]
    assert [e["file"][0] for _, e in sorted(cached.items())] == [str(same_stem / n) for n in ("x.mp4", "x.webm",
                                                                                               "y.mp4")]
    # the named file is required: with x.webm gone, its entry is missing (not silently scored against x.mp4)
    (same_stem / "x.webm").unlink()
    with pytest.raises(EvalError, match="1 of 3 videos not found.*x.webm"):
        evaluate(ColourModel(), "generic", anno, same_stem, **kw)
    report = evaluate(ColourModel(), "generic", anno, same_stem, allow_missing=True, **kw)
    assert report["missing"] == ["x.webm"] and report["num_videos"] == 2 and report["t2v"]["R1"] == 100.0


def test_an_id_matching_two_files_is_refused_naming_both(same_stem, tmp_path):
    anno = tmp_path / "anno.json"
    anno.write_text(json.dumps([{"video": "x", "caption": "clip number 0"},
                                {"video": "y", "caption": "clip number 2"}]))
    for allow_missing in (False, True):
        with pytest.raises(EvalError) as e:
            evaluate(ColourModel(), "generic", anno, same_stem, allow_missing=allow_missing, workers=0,
                     progress=False, log=lambda m: None)
        msg = str(e.value)
        assert "1 video id(s) match more than one file" in msg and "'x'" in msg, msg
        assert str(same_stem / "x.mp4") in msg and str(same_stem / "x.webm") in msg, msg
        assert "y.mp4" not in msg
    # naming one of them settles it (the other copy stays where it is)
    anno.write_text(json.dumps([{"video": "x.webm", "caption": "clip number 1"},
                                {"video": "y", "caption": "clip number 2"}]))
    report = evaluate(ColourModel(), "generic", anno, same_stem, workers=0, progress=False, log=lambda m: None)
    assert report["num_videos"] == 2 and report["t2v"]["R1"] == 100.0


def test_vmr_eval_reports_an_ambiguous_id_as_one_line(same_stem, tmp_path, capsys):
    import retrieval
    from app.cli import main

    model_dir = retrieval.save_model(retrieval.create_model(TINY_MODEL).eval(), tmp_path / "model")
    anno = tmp_path / "anno.json"
    anno.write_text(json.dumps([{"video": "x", "caption": "clip number 0"}]))
    rc = main(["eval", "--dataset", "generic", "--anno", str(anno), "--videos", str(same_stem), "--model",
               str(model_dir), "--workers", "0", "--device", "cpu", "--cache-dir", "", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("vmr eval: 1 video id(s) match more than one file") and "Traceback" not in err
    assert "x.mp4" in err and "x.webm" in err


def _write_webp(path, k: int) -> None:
    """A lossless flat-colour .webp image of colour index_color(k) (a one-frame video to eval)."""
    import av

    frame = av.VideoFrame.from_ndarray(np.zeros((24, 32, 3), np.uint8) + np.array(index_color(k), np.uint8),
                                       format="rgb24")
    with av.open(str(path), "w", format="image2") as out:
        stream = out.add_stream("libwebp", rate=1)
        stream.width, stream.height, stream.pix_fmt, stream.options = 32, 24, "bgra", {"lossless": "1"}
        for packet in [*stream.encode(frame.reformat(format="bgra", **one_thread())), *stream.encode()]:
            out.mux(packet)


def test_a_webp_image_that_vmr_shards_packs_is_found_by_eval(tmp_path):
    """One list of media extensions: a folder's still.webp went into the shards, but eval (and the training
    check's folder reader) looked for jpg/jpeg/png only, so the id `still` was missing."""
    from pretrain.shards import ShardOptions, read_annotations, write_shards
    from retrieval.data.annotations import load_folder

    _, videos = make_msrvtt(tmp_path, {}, num_videos=2)
    _write_webp(videos / "still.webp", 2)
    for k, name in enumerate(("video0", "video1", "still")):
        (videos / f"{name}.txt").write_text(f"clip number {k}")
    report = write_shards(read_annotations(None, videos), videos, tmp_path / "shards", ShardOptions(), progress=False)
    assert report["samples"] == 3 and not report["skipped"]
    entries = load_folder(videos)
    assert [e.video_id for e in entries] == ["still", "video0", "video1"]
    anno = tmp_path / "anno.json"  # the folder's ids, as annotation lists often give them (no extension)
    anno.write_text(json.dumps([{"video": e.video_id, "caption": e.captions} for e in entries]))
    report = evaluate(ColourModel(), "generic", anno, videos, workers=0, progress=False, log=lambda m: None)
    assert (report["num_videos"], report["num_missing"], report["complete"]) == (3, 0, True)
    assert report["t2v"]["R1"] == 100.0


def test_msrvtt_data_json_and_a_split_list_beside_it_are_read_by_eval(tmp_path):
    """MSRVTT_data.json (every caption of every video) was understood by the shard writer only."""
    _, videos = make_msrvtt(tmp_path, {}, num_videos=4)
    data = tmp_path / "MSRVTT_data.json"
    pairs = [(w, k) for w in ("a", "the") for k in range(4)]  # two captions per video
    data.write_text(json.dumps({"videos": [{"video_id": f"video{k}", "split": "test"} for k in range(4)],
                                "sentences": [{"video_id": f"video{k}", "caption": f"{w} clip number {k}", "sen_id": i}
                                              for i, (w, k) in enumerate(pairs)]}))
    kw = dict(workers=0, progress=False, log=lambda m: None)
    report = evaluate(ColourModel(), "msrvtt", data, videos, **kw)
    assert (report["num_videos"], report["num_queries"], report["complete"]) == (4, 8, True)
    assert report["t2v"]["R1"] == 100.0
    split = tmp_path / "MSRVTT_train.9k.csv"
    split.write_text("video_id\nvideo3\nvideo1\n")
    report = evaluate(ColourModel(), "msrvtt", split, videos, **kw)
    assert (report["num_videos"], report["num_queries"]) == (2, 4) and report["t2v"]["R1"] == 100.0


def test_append_table_starts_with_the_published_numbers(msrvtt, tmp_path):
    anno, videos = msrvtt
    report = evaluate(ColourModel(), "msrvtt", anno, videos, workers=0, progress=False, log=lambda m: None)
    table = tmp_path / "results.md"
    append_table(report, table, label="colour")
    append_table(report, table, label="colour")
    text = table.read_text()
    for r1 in ("32.0", "34.7", "35.6", "35.9", "40.1", "41.0", "18.0", "18.4", "20.4"):
        assert f"| n/p | n/p | n/p | n/p | n/p | {r1} |" in text  # published: re-ranked columns only
    published_m = ("| VideoMamba-M (published) | 25M | msrvtt | n/p | n/p | n/p | n/p | n/p "
                   "| 35.6 | 58.1 | 69.5 | 29.1 |")
    assert published_m in text
    assert "similarity only" in text and "re-ranked" in text
    colour_row = "| colour | | msrvtt | 83.3 | 83.3 | 100.0 | 1 | 66.7 |  | | |  | 6 | 6 | 0 | 4 | 16 | 8 |"
    assert text.count(colour_row) == 2


def test_bad_arguments(msrvtt, tmp_path):
    anno, videos = msrvtt
    with pytest.raises(EvalError, match="videos folder not found"):
        evaluate(ColourModel(), "msrvtt", anno, tmp_path / "nope", workers=0)
    with pytest.raises(EvalError, match="unknown dataset"):
        evaluate(ColourModel(), "kinetics", anno, videos, workers=0)


# --- the command, with a tiny real model -----------------------------------------------------

TINY_MODEL = {
    "video": {"name": "videomamba_tiny", "encoder": {"embed_dim": 64, "depth": 2, "img_size": 32, "num_frames": 4}},
    "text": {"kind": "clip", "width": 64, "layers": 2, "heads": 2, "context_length": 16},
    "embed_dim": 32,
}


def test_vmr_eval_command_with_a_tiny_real_model(msrvtt, tmp_path, capsys):
    retrieval = pytest.importorskip("retrieval")
    if not hasattr(retrieval, "create_model"):
        pytest.skip("retrieval.create_model not available")
    from app.cli import main

    anno, videos = msrvtt
    model_dir = retrieval.save_model(retrieval.create_model(TINY_MODEL).eval(), tmp_path / "model")
    out, table = tmp_path / "report.json", tmp_path / "results.md"
    argv = ["eval", "--dataset", "msrvtt", "--anno", str(anno), "--videos", str(videos), "--model", str(model_dir),
            "--workers", "0", "--batch-size", "3", "--device", "cpu", "--out", str(out), "--table", str(table),
            "--cache-dir", str(tmp_path / "cache"), "--no-progress"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "| text-to-video (similarity only) |" in printed and "4 frames" in printed and "32 px" in printed
    report = json.loads(out.read_text())
    assert (report["num_queries"], report["num_videos"], report["protocol"]["context_length"]) == (6, 6, 16)
    assert 0 <= report["t2v"]["R1"] <= 100 and report["model_id"]
    assert "VideoMamba-M (published)" in table.read_text()
    assert main(argv) == 0 and json.loads(out.read_text())["cache"]["state"] == "hit"

    (videos / "video0.mp4").unlink()
    assert main(argv) == 2
    assert "video0" in capsys.readouterr().err
