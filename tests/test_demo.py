"""`vmr demo --no-app` end to end on a tiny library with a tiny model; the clear error without the demo model."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("av")
pytest.importorskip("faiss")

import app.demo as demo  # noqa: E402
from app.cli import main  # noqa: E402

TINY_MODEL = {
    "video": {"name": "videomamba_tiny", "encoder": {"embed_dim": 32, "depth": 2, "img_size": 32, "num_frames": 4}},
    "text": {"kind": "clip", "width": 32, "layers": 1, "heads": 2, "context_length": 32},
    "embed_dim": 16,
}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    retrieval = pytest.importorskip("retrieval")
    return retrieval.save_model(retrieval.create_model(TINY_MODEL).eval(), tmp_path_factory.mktemp("m") / "model")


def test_demo_runs_and_prints_a_table(tiny_model, tmp_path, capsys):
    lib = tmp_path / "lib"
    argv = ["demo", "--no-app", "--videos", "6", "--library", str(lib), "--model", str(tiny_model),
            "--workers", "0", "--no-progress"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "generated 6 videos" in out and "indexed 6 new" in out
    # the table `vmr search` prints, one legend for the scores, every line within 80 columns
    assert out.count("rank   score  video") == demo.CAPTION_QUERIES + 2 and "|" not in out.split("library")[1]
    assert out.count("(caption of test_") == demo.CAPTION_QUERIES and out.count("(free-form)") == 2
    assert "   1   " in out and "own video ranks" in out and "all 6 captions as queries" in out
    assert out.count("score: cosine similarity") == 1 and "* marks the video a caption was written for" in out
    table = out[out.index("query 1"):out.index("all 6 captions")]
    assert max(len(line) for line in table.splitlines()) <= 80
    assert "score of a caption's own video: median" in out
    assert all(f"{phase} " in out for phase in ("model load", "render", "index", "queries"))
    meta = json.loads((lib / demo.META_FILE).read_text())
    assert meta["complete"] and (meta["size"], meta["frames"]) == (32, 16)  # from the model's config
    assert len(list((lib / "videos").glob("*.mp4"))) == 6

    assert main(argv) == 0  # second run: library and index reused
    out = capsys.readouterr().out
    assert "reused 6 videos" in out and "indexed 0 new, 6 already indexed" in out


def test_missing_default_model_says_what_to_do(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(demo, "DEFAULT_MODEL", tmp_path / "assets" / "demo_model")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert main(["demo", "--no-app"]) == 2
    err = capsys.readouterr().err
    assert "embedded demo model is missing" in err and "--model" in err and "config.yaml" in err
    assert not (tmp_path / "cache").exists()  # failed before doing any work


def test_model_flag_pointing_nowhere(tmp_path, capsys):
    assert main(["demo", "--no-app", "--model", str(tmp_path)]) == 2
    assert "is not a model folder" in capsys.readouterr().err


def test_foreign_folder_is_not_written_into(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    settings = demo.LibrarySettings(videos=2, seed=0, size=32, frames=16)
    with pytest.raises(demo.DemoError, match="not a vmr demo library"):
        demo.prepare_library(tmp_path, settings, progress=False)
    other = tmp_path / "lib"
    demo.prepare_library(other, settings, progress=False)
    with pytest.raises(demo.DemoError, match="other settings"):
        demo.prepare_library(other, demo.LibrarySettings(videos=3, seed=0, size=32, frames=16), progress=False)
