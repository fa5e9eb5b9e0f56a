"""Layering: `import retrieval` and `vmr --help` pull in only the core dependencies."""
import subprocess
import sys

HEAVY = ["open_clip", "av", "faiss", "gradio", "deepspeed", "sentencepiece", "transformers", "webdataset",
         "mamba_ssm", "matplotlib"]


def _loaded_after(code: str) -> set[str]:
    probe = f"{code}\nimport sys\nprint(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_import_retrieval_needs_only_core_dependencies():
    assert _loaded_after("import retrieval, retrieval.data.video, retrieval.metrics, retrieval.inference") == set()


def test_cli_help_imports_nothing_heavy():
    code = "from app.cli import build_parser\nbuild_parser().format_help()"
    assert _loaded_after(code) == set()


def test_evaluation_sits_beside_index():
    """evaluation/ imports retrieval/ only: never pretrain/, app/, index/ or the index's FAISS."""
    code = "import evaluation.evaluate, evaluation.report, evaluation.temporal"
    probe = f"{code}\nimport sys\nprint(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    loaded = set(result.stdout.split())
    assert not loaded & {"pretrain", "app", "index", "faiss", "gradio", "deepspeed"}
