"""Disk full / read-only output: index add/build, `vmr shards` and `retrieval.save_model` fail with a clear error,
leave what was already written intact, and a rerun once space is back completes the job.

Tests run as root in CI, where chmod 0o555 does not stop writes, so ENOSPC is injected at the write calls
(after a partial write, as a full disk does); the read-only variant runs only as a normal user.
"""
from __future__ import annotations

import errno
import hashlib
import os
import tarfile
from pathlib import Path

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

ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _full_after(real, budget: int):
    """A writer that behaves like `real` for `budget` calls, then writes a few bytes and raises ENOSPC."""
    calls = {"n": 0}

    def write(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > budget:
            target = args[0]
            if hasattr(target, "write"):
                target.write(b"\x93NUMPY partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(*args, **kwargs)
    return write


@pytest.fixture
def indexed(tmp_path, monkeypatch):
    install_fake_loader(monkeypatch)
    lib, out = tmp_path / "lib", tmp_path / "idx"
    make_library(lib)
    ingest.build(lib, out, model=ColorModel(), model_path=str(model_dir(tmp_path)),
                 config=ingest.IngestConfig(segment_seconds=2.0, workers=0, progress=False))
    write_color_video(lib / "cyan.mp4", "cyan")
    return lib, out


def _vmr(argv, capsys):
    from app.cli import main

    rc = main(argv)
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


@pytest.mark.parametrize("where", ["shard", "faiss"])
def test_index_add_on_a_full_disk(indexed, monkeypatch, capsys, where):
    import numpy as np

    from index.searcher import Searcher

    lib, out = indexed
    if where == "shard":
        monkeypatch.setattr(np, "save", _full_after(np.save, 0))
    else:
        import faiss
        monkeypatch.setattr(faiss, "write_index", lambda index, path: (Path(path).write_bytes(b"partial"),
                                                                       (_ for _ in ()).throw(ENOSPC)))
    argv = ["index", "add", "--index", str(out), "--videos", str(lib), "--workers", "0", "--no-progress"]
    rc, _, err = _vmr(argv, capsys)
    assert rc == 2 and "No space left on device" in err and "Traceback" not in err, err
    assert index_contents(out) == LIBRARY_SEGMENTS         # the committed index is untouched
    assert Searcher(out, model=ColorModel()).search("yellow", k=1)[0].path == "yellow.mov"
    monkeypatch.undo()                                     # space is back
    install_fake_loader(monkeypatch)
    rc, printed, err = _vmr(argv, capsys)
    assert rc == 0, err
    assert index_contents(out) == sorted(LIBRARY_SEGMENTS + [("cyan.mp4", 0.0, 1.0)])
    assert Searcher(out, model=ColorModel()).search("cyan", k=1)[0].path == "cyan.mp4"
    leftovers = [p for d in ("shards", "faiss") for p in (out / d).iterdir() if ".tmp" in p.name]
    assert not leftovers, leftovers


def test_shards_on_a_full_disk(tmp_path, monkeypatch, capsys):
    from helpers_media import write_test_video

    lib = tmp_path / "lib"
    for i in range(6):
        write_test_video(lib / f"c{i}.mp4", num_frames=4, size=(32, 24), fps=4)
        (lib / f"c{i}.txt").write_text(f"clip {i}")
    ref, out = tmp_path / "ref", tmp_path / "out"
    argv = ["shards", "--videos", str(lib), "--shard-size", "2", "--quiet", "--out"]
    assert _vmr(argv + [str(ref)], capsys)[0] == 0
    monkeypatch.setattr(tarfile.TarFile, "addfile", _full_after(tarfile.TarFile.addfile, 8))  # dies in shard 1
    rc, _, err = _vmr(argv + [str(out)], capsys)
    assert rc == 2 and "No space left on device" in err and "Traceback" not in err, err
    def digest(d):
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.glob("shard-*.tar"))}
    done = digest(out)
    assert done and all(done[k] == digest(ref)[k] for k in done)   # finished shards are whole
    monkeypatch.undo()
    assert _vmr(argv + [str(out)], capsys)[0] == 0
    assert digest(out) == digest(ref) and not list(out.glob("*.tmp"))


def test_save_model_on_a_full_disk(tmp_path, monkeypatch):
    import safetensors.torch
    from test_demo import TINY_MODEL

    import retrieval

    model = retrieval.create_model(TINY_MODEL).eval()
    path = retrieval.save_model(model, tmp_path / "model")
    before = retrieval.load_model(path).model_id
    other = retrieval.create_model(TINY_MODEL).eval()
    monkeypatch.setattr(safetensors.torch, "save_file", lambda state, fn, *a, **k: (
        Path(fn).write_bytes(b"partial"), (_ for _ in ()).throw(ENOSPC)))
    with pytest.raises(OSError) as e:   # overwriting: the old folder survives
        retrieval.save_model(other, path)
    assert e.value.errno == errno.ENOSPC
    assert retrieval.load_model(path).model_id == before
    with pytest.raises(OSError):        # a new folder: nothing half-written under the final name
        retrieval.save_model(other, tmp_path / "new")
    assert not (tmp_path / "new").exists()
    with pytest.raises(FileNotFoundError):
        retrieval.load_model(tmp_path / "new")
    monkeypatch.undo()
    retrieval.save_model(other, path)
    after = retrieval.load_model(path)
    assert after.model_id != before
    assert all((a == b).all() for a, b in zip(after.state_dict().values(), other.state_dict().values()))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # the failed saves left no .tmp folder


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through chmod 0o555; ENOSPC injection covers this")
def test_read_only_output_folder(tmp_path, capsys, monkeypatch):
    install_fake_loader(monkeypatch)
    lib, ro = tmp_path / "lib", tmp_path / "ro"
    make_library(lib)
    ro.mkdir()
    ro.chmod(0o555)
    try:
        rc, _, err = _vmr(["index", "build", "--videos", str(lib), "--model", str(model_dir(tmp_path)),
                           "--out", str(ro / "idx"), "--workers", "0", "--no-progress"], capsys)
        assert rc == 2 and "Permission denied" in err
        rc, _, err = _vmr(["shards", "--videos", str(lib), "--out", str(ro / "sh"), "--quiet"], capsys)
        assert rc == 2 and "Permission denied" in err
    finally:
        ro.chmod(0o755)


# ------------------------------------------------------------------------------------------ training checkpoints

SMOKE = str(Path(__file__).resolve().parents[1] / "configs" / "pretrain" / "smoke_cpu.yaml")
# 8 steps, checkpoints after 3, 6 and 8, keep 1: the save at step 6 needs room for two checkpoints
TRAIN_ARGS = ["run.progress=false", "val.every=0", "run.ckpt_every=3", "run.keep_checkpoints=1",
              "data.num_workers=1", "synth.val_videos=0"]


@pytest.fixture(scope="module")
def synth_world(tmp_path_factory) -> Path:
    pytest.importorskip("webdataset")
    from pretrain.config import load_train_config
    from pretrain.run import prepare_synthetic

    run = tmp_path_factory.mktemp("world")
    prepare_synthetic(load_train_config(SMOKE, ["synth.val_videos=0"]), run, is_main=True)
    return run / "synth"


def _train(run: Path, engine: str, *extra: str) -> dict:
    """pretrain/run.py in this process, as rank 0 of 1 (callers use the single_process_env fixture)."""
    if engine == "deepspeed":
        pytest.importorskip("deepspeed")
    from pretrain.run import main

    return main(["--config", SMOKE, "--out", str(run), *TRAIN_ARGS, f"engine.kind={engine}", *extra])


def _logged(run: Path) -> dict[int, dict]:
    import json

    return {r["step"]: r for r in map(json.loads, (run / "steps.jsonl").read_text().splitlines())}


def _failing_run(run: Path, engine: str, *extra: str) -> OSError:
    """The OSError a run ends with."""
    with pytest.raises(OSError) as failure:
        _train(run, engine, *extra)
    return failure.value


def _failed_save_then_resume(run: Path, engine: str, error: OSError, space_back) -> None:
    """`error` came from the save at step 6: it names the disk and file; step 3 is intact and what resume picks;
    nothing partial is left; once `space_back()` the resumed run ends where an uninterrupted one would."""
    from pretrain.engine import latest_checkpoint
    from retrieval.model import load_model

    ckpt = run / "checkpoints"
    msg = str(error)
    assert error.errno == errno.ENOSPC, msg
    assert msg.startswith("[Errno 28] No space left on device while writing checkpoint step_00000006 to "
                          f"{ckpt} ("), msg
    assert "MiB free on that disk" in msg and f"{ckpt / 'step_00000003'} is intact" in msg, msg
    weights = "state.pt" if engine == "torch" else "mp_rank_00_model_states.pt"
    assert error.filename == str(ckpt / "step_00000006.tmp" / weights), error.filename
    assert sorted(os.listdir(ckpt)) == ["latest", "step_00000003"]  # the partial step_00000006.tmp is gone
    assert latest_checkpoint(ckpt) == "step_00000003" and not (run / "model").exists()
    before = _logged(run)
    assert sorted(before) == list(range(1, 7))  # steps 4-6 were trained, then their checkpoint failed
    space_back()
    resumed = _train(run, engine, "--resume", "auto")
    assert (resumed["step"], resumed["stopped_early"]) == (8, False)
    after = _logged(run)
    assert sorted(after) == list(range(1, 9))
    for step in range(1, 7):  # resumed at 3: steps 4-6 again, with the same samples and the same numbers
        x, y = before[step], after[step]
        assert (x["keys_sha1"], x["lr"]) == (y["keys_sha1"], y["lr"]) and x["loss"] == pytest.approx(y["loss"], 1e-5)
    assert sorted(os.listdir(ckpt)) == ["latest", "step_00000008"]
    load_model(run / "model")


@pytest.mark.parametrize("engine", ["deepspeed", "torch"])
def test_training_checkpoint_on_a_full_disk(tmp_path, synth_world, monkeypatch, single_process_env, engine):
    """ENOSPC injected in the second checkpoint's write (after a partial write, as a full disk does)."""
    import shutil

    import torch

    run = tmp_path / "run"
    shutil.copytree(synth_world, run / "synth")
    real_save, calls = torch.save, {"n": 0}

    def save(obj, f, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            f.write(b"PK\x03\x04 partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    error = _failing_run(run, engine)
    assert calls["n"] == 2
    _failed_save_then_resume(run, engine, error, lambda: monkeypatch.setattr(torch, "save", real_save))


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_training_checkpoint_on_a_real_full_tmpfs(tmp_path, synth_world, single_process_env):
    """The checkpoint folder on a real tmpfs sized for one checkpoint and a half (DeepSpeed, the config's engine)."""
    import shutil
    import subprocess

    run = tmp_path / "run"
    shutil.copytree(synth_world, run / "synth")
    ckpt = run / "checkpoints"
    ckpt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512m", "tmpfs", str(ckpt)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        _train(run, "deepspeed", "run.stop_after=3")
        size = sum(p.stat().st_size for p in (ckpt / "step_00000003").iterdir())
        subprocess.run(["mount", "-o", f"remount,size={int(1.5 * size)}", str(ckpt)], check=True)
        error = _failing_run(run, "deepspeed", "--resume", "auto")
        _failed_save_then_resume(run, "deepspeed", error, lambda: subprocess.run(
            ["mount", "-o", "remount,size=512m", str(ckpt)], check=True))
    finally:
        subprocess.run(["umount", "--lazy", str(ckpt)], check=False)  # even if a stray process still uses it
