"""kill -9 at seeded random moments, then rerun: `vmr shards`, `vmr index build/add` and `pretrain/run.py
--resume auto` end as if never interrupted.

Each campaign starts the real command as a subprocess, SIGKILLs it after a seeded random delay (or once a seeded
number of output files exist, or at a named point: VMR_FAILPOINT), checks what is on disk is still usable, and
repeats until one run exits 0; the result is compared with an uninterrupted run. CI runs a few kills per command;
VMR_RELIABILITY_SLOW=1 runs many more.
"""
from __future__ import annotations

import hashlib
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from helpers_media import write_test_video
from test_index_support import ColorModel, index_contents, write_color_video

REPO = Path(__file__).resolve().parents[1]
SUPPORT = Path(__file__).with_name("test_index_support.py")  # `vmr` with the colour model installed
COLOR_NAMES = ["red", "green", "blue", "yellow", "cyan", "magenta"]
SLOW = pytest.mark.skipif(not os.environ.get("VMR_RELIABILITY_SLOW"), reason="set VMR_RELIABILITY_SLOW=1")
KILLS = {"fast": 4, "slow": 25, "real_model": 2}  # kills per campaign (what RELIABILITY.md reports)
# the many-kill campaigns take minutes: opt in with VMR_RELIABILITY_SLOW=1 (CI runs every test, slow ones too)


def _start(cmd: list[str]) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, env={**os.environ, "VMR_FAILPOINT": ""})


def _alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def _reap_group(proc: subprocess.Popen, grace: float = 0.0) -> None:
    """End what a killed run left behind (its pool workers live on as orphans): let them finish for `grace`
    seconds (they exit by themselves once their queue closes), then SIGKILL the group and wait until it is gone."""
    deadline = time.time() + grace
    while _alive(proc.pid) and time.time() < deadline:
        time.sleep(0.02)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    for _ in range(200):
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.01)


def _campaign(cmd: list[str], kills: int, rng: random.Random, delay_range, between=None,
              ready=None, keep_orphans: bool = False, reset=None) -> dict:
    """Kill `cmd` `kills` times at random moments, calling `between()` after each kill, then run it to the end.

    A run that finishes before its kill is checked, and `reset()` puts the starting state back, so every kill
    lands on a run with work still to do."""
    stats = {"kills": 0, "finished_before_kill": 0, "runs": 0, "states": {}}
    killed = []
    while stats["kills"] < kills:
        proc = _start(cmd)
        killed.append(proc)
        stats["runs"] += 1
        if ready is not None:  # wait until the work has begun (startup is mostly imports)
            deadline = time.time() + 60
            while proc.poll() is None and not ready(proc) and time.time() < deadline:
                time.sleep(0.002)
        try:
            proc.wait(timeout=rng.uniform(*delay_range))
        except subprocess.TimeoutExpired:
            pass
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            stats["kills"] += 1
        else:
            out = proc.stdout.read()
            assert proc.returncode == 0, out
            stats["finished_before_kill"] += 1
            if between is not None:
                between()
            if reset is not None:
                for p in killed:  # orphans must not write into the fresh start
                    _reap_group(p)
                reset()
            proc.stdout.close()
            continue
        proc.stdout.close()
        if not keep_orphans:
            _reap_group(proc)
        if between is not None:
            state = between() or "checked"
            stats["states"][state] = stats["states"].get(state, 0) + 1
    proc = _start(cmd)
    out, _ = proc.communicate(timeout=120)
    stats["runs"] += 1
    assert proc.returncode == 0, out
    for p in killed + [proc]:  # orphaned pool workers may still be finishing a shard
        _reap_group(p, grace=0.2)
    return stats


def _opened(needle: str, also: str = ""):
    """ready(proc): the process (or one of its pool workers) holds a file whose path contains `needle` (and
    `also`) open, i.e. this very run has got past its imports to the work (files left by earlier runs do not
    count)."""
    def ready(proc) -> bool:
        pids = [proc.pid]
        try:
            pids += [int(c) for c in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]
        except OSError:
            pass
        for pid in pids:
            try:
                fds = os.listdir(f"/proc/{pid}/fd")
            except OSError:
                continue
            for fd in fds:
                try:
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if needle in target and also in target:
                        return True
                except OSError:
                    pass
        return False
    return ready


def _work_seconds(cmd: list[str], started) -> float:
    """Run `cmd` once to the end; seconds from `started()` turning true (the work began) to its exit."""
    proc = _start(cmd)
    t_start = None
    while proc.poll() is None:
        if t_start is None and started(proc):
            t_start = time.time()
        time.sleep(0.002)
    out = proc.stdout.read()
    proc.stdout.close()
    assert proc.returncode == 0, out
    return time.time() - (t_start or time.time())


# ------------------------------------------------------------------------------------------ shards

def _shard_library(root: Path, n: int = 16) -> Path:
    for i in range(n):
        write_test_video(root / f"c{i:02d}.mp4", num_frames=4 + i % 5, size=(32, 24), fps=4)
        (root / f"c{i:02d}.txt").write_text(f"clip number {i}\nsecond caption {i}\n")
    (root / "broken.mp4").write_bytes(b"\x00" * 100)
    (root / "broken.txt").write_text("not a clip")
    return root


def _shard_contents(out: Path) -> dict[str, list[tuple[str, str]]]:
    """shard name -> [(member name, sha256 of its bytes)]; asserts every tar reads to the end."""
    got = {}
    for p in sorted(out.glob("shard-*.tar")):
        with tarfile.open(p) as t:
            got[p.name] = [(m.name, hashlib.sha256(t.extractfile(m).read()).hexdigest()) for m in t.getmembers()]
    return got


def _shards_cmd(lib: Path, out: Path, workers: int) -> list[str]:
    return [sys.executable, "-m", "app.cli", "shards", "--videos", str(lib), "--out", str(out),
            "--shard-size", "2", "--workers", str(workers), "--quiet"]


@pytest.fixture(scope="module")
def shard_lib(tmp_path_factory):
    lib = _shard_library(tmp_path_factory.mktemp("shardlib"))
    ref = lib.parent / "shard_ref"
    proc = subprocess.run(_shards_cmd(lib, ref, 1), cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return lib, ref


def _shard_campaign(shard_lib, tmp_path, kills: int, seed: int, workers: int) -> dict:
    lib, ref = shard_lib
    out = tmp_path / "out"
    rng = random.Random(seed)
    n_shards = len(list(ref.glob("shard-*.tar")))

    started = _opened(str(out) + "/")  # a shard (or its progress record) is being written
    seconds = _work_seconds(_shards_cmd(lib, tmp_path / "timing", workers), _opened(str(tmp_path / "timing") + "/"))

    def between():  # finished shards are whole tars; a half-written one is only ever a .tmp
        done = list(out.glob("shard-*.tar"))
        for p in done:
            with tarfile.open(p) as t:
                t.getmembers()
        return ("no shard yet" if not done else "all shards, no report" if len(done) == n_shards
                and not (out / "report.json").exists() else "done" if len(done) == n_shards else "some shards")

    stats = _campaign(_shards_cmd(lib, out, workers), kills, rng, (0, seconds), between, ready=started,
                      keep_orphans=workers > 1, reset=lambda: shutil.rmtree(out))
    assert _shard_contents(out) == _shard_contents(ref)
    assert (out / "report.json").read_text() == (ref / "report.json").read_text().replace(str(ref), str(out))
    if workers == 1:  # (orphaned pool workers reaped at the end may leave their own temp file)
        assert not list(out.glob("*.tmp"))
    print(f"shards workers={workers}: {stats}")
    return stats


@pytest.mark.parametrize("workers", [1, pytest.param(2, marks=SLOW)])
def test_shards_killed_then_rerun_equals_uninterrupted(shard_lib, tmp_path, workers):
    stats = _shard_campaign(shard_lib, tmp_path, KILLS["fast"], seed=workers, workers=workers)
    assert stats["kills"] == KILLS["fast"]


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("VMR_RELIABILITY_SLOW"), reason="set VMR_RELIABILITY_SLOW=1")
@pytest.mark.parametrize("workers", [1, 2])
def test_shards_killed_many_times(shard_lib, tmp_path, workers):
    stats = _shard_campaign(shard_lib, tmp_path, KILLS["slow"], seed=100 + workers, workers=workers)
    assert stats["kills"] == KILLS["slow"]


# ------------------------------------------------------------------------------------------ index

def _index_library(root: Path, n: int, start: int = 0) -> Path:
    for i in range(start, start + n):
        colors = [COLOR_NAMES[i % 6], COLOR_NAMES[(i + 1) % 6]]
        write_color_video(root / f"v{i:02d}.mp4", colors, seconds_per_color=1.0)
    return root


def _build_cmd(lib: Path, out: Path, model: Path) -> list[str]:
    return [sys.executable, str(SUPPORT), "index", "build", "--videos", str(lib), "--model", str(model),
            "--out", str(out), "--segment-seconds", "1", "--batch-size", "2", "--workers", "0", "--no-progress"]


def _add_cmd(lib: Path, out: Path) -> list[str]:
    return [sys.executable, str(SUPPORT), "index", "add", "--index", str(out), "--videos", str(lib),
            "--batch-size", "2", "--workers", "0", "--no-progress"]


def _searchable(out: Path, allowed: list[list] | None = None) -> str:
    """The index on disk (if any) loads, its ids match its rows, and a query runs; -> where the kill landed."""
    from index.errors import IndexMissingError
    from index.searcher import Searcher

    parts = [p for p in (out / "parts").glob("*/part.sqlite")] if (out / "parts").is_dir() else []
    try:
        s = Searcher(out, model=ColorModel())
    except IndexMissingError:
        assert allowed is None or [] in allowed
        return "before the index existed"
    s.search("a red clip", k=3)
    contents = index_contents(out)
    if allowed is not None:
        assert contents in allowed, contents
    if allowed and contents == allowed[-1]:
        return "after the commit"
    return "checkpoint on disk, not committed" if parts else "index created, nothing encoded"


@pytest.fixture(scope="module")
def index_ref(tmp_path_factory):
    root = tmp_path_factory.mktemp("indexlib")
    lib = _index_library(root / "lib", 12)
    model = root / "color-v1"
    model.mkdir()
    seconds = _work_seconds(_build_cmd(lib, root / "ref", model), _encoding(root / "ref"))
    return lib, model, index_contents(root / "ref"), seconds


def _encoding(out: Path):
    """True once this run's part writer has its checkpoint database open: encoding has begun."""
    return _opened(str(out / "parts") + "/")


def _index_campaign(index_ref, tmp_path, kills: int, seed: int) -> dict:
    lib, model, ref_contents, seconds = index_ref
    out = tmp_path / "idx"
    rng = random.Random(seed)
    # startup (imports) takes most of a run; spread the kills over its whole length, biased to the end
    # the measured span ends with the interpreter's (torch's) teardown after the commit: aim at its first part
    stats = _campaign(_build_cmd(lib, out, model), kills, rng, (0, 0.4 * seconds), ready=_encoding(out),
                      between=lambda: _searchable(out, [[], ref_contents]), reset=lambda: shutil.rmtree(out))
    assert index_contents(out) == ref_contents   # same segments, FAISS ids == rows, no duplicates
    _searchable(out, [ref_contents])
    print(f"index build: {stats}")
    return stats


def test_index_build_killed_then_rerun_equals_uninterrupted(index_ref, tmp_path):
    _index_campaign(index_ref, tmp_path, KILLS["fast"], seed=1)


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("VMR_RELIABILITY_SLOW"), reason="set VMR_RELIABILITY_SLOW=1")
def test_index_build_killed_many_times(index_ref, tmp_path):
    _index_campaign(index_ref, tmp_path, KILLS["slow"], seed=2)


def _add_campaign(index_ref, tmp_path, kills: int, seed: int) -> dict:
    """Build on half the library, then `index add` the rest under kills: readers see the old or the new index."""
    lib, model, ref_contents, seconds = index_ref
    half = tmp_path / "half"
    half.mkdir()
    for p in sorted(lib.glob("*.mp4"))[:6]:
        os.link(p, half / p.name)
    out = tmp_path / "idx"
    proc = subprocess.run(_build_cmd(half, out, model), cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout
    old = index_contents(out)
    snapshot = tmp_path / "idx_before_add"
    shutil.copytree(out, snapshot)
    for p in sorted(lib.glob("*.mp4"))[6:]:
        os.link(p, half / p.name)
    rng = random.Random(seed)

    def reset():
        shutil.rmtree(out)
        shutil.copytree(snapshot, out)

    # half the files, so about half the work: spread the kills over that
    stats = _campaign(_add_cmd(half, out), kills, rng, (0, 0.25 * seconds), ready=_encoding(out),
                      between=lambda: _searchable(out, [old, ref_contents]), reset=reset)
    assert index_contents(out) == ref_contents
    print(f"index add: {stats}")
    return stats


def test_index_add_killed_then_rerun_equals_uninterrupted(index_ref, tmp_path):
    _add_campaign(index_ref, tmp_path, KILLS["fast"], seed=3)


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("VMR_RELIABILITY_SLOW"), reason="set VMR_RELIABILITY_SLOW=1")
def test_index_add_killed_many_times(index_ref, tmp_path):
    _add_campaign(index_ref, tmp_path, KILLS["slow"], seed=4)


def test_shards_orphaned_worker_racing_the_rerun(shard_lib, tmp_path, monkeypatch):
    """kill -9 of `vmr shards --workers N` leaves its pool workers running: one may still be writing shard k
    while the rerun writes shard k too. Simulated in-process: the orphan's whole write of shard k runs while
    the rerun is half-way through the same shard. Both must finish and the shard must equal the reference."""
    import pretrain.shards as shards

    lib, ref = shard_lib
    out = tmp_path / "out"
    items = shards.read_annotations(None, lib)
    real_check = shards.check_media
    state = {"orphan": None}

    def check(data, name):
        if state["orphan"] is None:  # first media of the rerun's first shard: the orphan writes that shard now
            state["orphan"] = "running"
            job = (0, 0, items[:2], str(lib), str(out), shards.ShardOptions(shard_size=2))
            state["orphan"] = shards._write_shard(job)
        return real_check(data, name)

    monkeypatch.setattr(shards, "check_media", check)
    shards.write_shards(items, lib, out, shards.ShardOptions(shard_size=2), progress=False)
    assert state["orphan"]["shard"] == "shard-000000.tar"  # the orphan finished too
    assert _shard_contents(out) == _shard_contents(ref)
    assert not list(out.glob("*.tmp"))


@SLOW
def test_index_build_with_a_real_tiny_model_killed_then_rerun(tmp_path):
    """The same through the real entry point (`python -m app.cli`) and a real (tiny, random) VideoMamba model."""
    from test_demo import TINY_MODEL

    import retrieval

    model = retrieval.save_model(retrieval.create_model(TINY_MODEL).eval(), tmp_path / "model")
    lib = tmp_path / "lib"
    for i in range(8):
        write_test_video(lib / f"v{i}.mp4", num_frames=8 + 4 * (i % 3), size=(32, 24), fps=4)

    def cmd(out):
        return [sys.executable, "-m", "app.cli", "index", "build", "--videos", str(lib), "--model", str(model),
                "--out", str(out), "--segment-seconds", "1", "--batch-size", "2", "--workers", "0",
                "--device", "cpu", "--no-progress"]

    seconds = _work_seconds(cmd(tmp_path / "ref"), _encoding(tmp_path / "ref"))
    ref = index_contents(tmp_path / "ref")
    out = tmp_path / "idx"

    def between():
        from index.errors import IndexMissingError
        from index.searcher import Searcher

        try:
            s = Searcher(out, device="cpu")
        except IndexMissingError:
            return "before the index existed"
        s.search("a clip", k=3)
        got = index_contents(out)
        assert got in ([], ref), got
        return "after the commit" if got == ref else "index created, not committed"

    # the measured span ends with torch's interpreter teardown: aim at its first part
    stats = _campaign(cmd(out), KILLS["real_model"], random.Random(7), (0, 0.6 * seconds), ready=_encoding(out),
                      between=between, reset=lambda: shutil.rmtree(out))
    assert index_contents(out) == ref
    print(f"index build (real tiny model): {stats}")


# ------------------------------------------------------------------------------------------ training

SMOKE = REPO / "configs" / "pretrain" / "smoke_cpu.yaml"
# 32 synthetic clips, batch 8, 2 epochs -> 8 steps; checkpoints after 3 and 6 (mid-epoch) and 8; keep 1, so every
# save after the first also prunes. The config's engine (DeepSpeed, ZeRO 0) unless a campaign says otherwise.
TRAIN_ARGS = ["run.progress=false", "val.every=0", "run.ckpt_every=3", "run.keep_checkpoints=1",
              "data.num_workers=1", "synth.val_videos=0"]
TRAIN_STEPS, TRAIN_CKPTS = 8, (3, 6, 8)
# where a kill can be aimed: in a step (seeded moment), while a checkpoint file is open for writing, at a named
# point of engine.save / prune_checkpoints / export (VMR_FAILPOINT), while RUN/model.tmp is being written
SAVE_KINDS = ["writing checkpoint", "ckpt_before_rename", "ckpt_before_latest", "prune_start", "prune_renamed"]
EXPORT_KINDS = ["export_start", "writing model", "export_saved"]
TRAIN_KILLS = {"fast": ["ckpt_before_latest", "step", "writing checkpoint", "writing model"], "slow": 24}


def _train_cmd(run: Path, engine: str) -> list[str]:
    return [sys.executable, str(REPO / "pretrain" / "run.py"), "--config", str(SMOKE), "--out", str(run),
            *TRAIN_ARGS, f"engine.kind={engine}", "--resume", "auto"]


def _start_train(cmd: list[str], log: Path, failpoint: str = "") -> subprocess.Popen:
    """The run as its own process group, output to `log` (a pipe nobody reads could fill and stall it)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    with open(log, "w") as out:
        return subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**env, "VMR_FAILPOINT": failpoint})


def _logged_steps(run: Path) -> list[dict]:
    import json

    f = run / "steps.jsonl"
    lines = f.read_text().splitlines() if f.is_file() else []
    return [json.loads(line) for line in lines if line.endswith("}")]  # (a line being written is not one)


def _resume_step(run: Path) -> int:
    """The step `--resume auto` will start from (what the loader picks), 0 for a fresh start."""
    from pretrain.engine import latest_checkpoint

    tag = latest_checkpoint(run / "checkpoints")
    return int(tag.split("_")[1]) if tag else 0


def _checkpoints_whole(run: Path) -> int:
    """Every folder under a checkpoint's name loads and says its own step; the one the loader picks is among them
    and the step log reaches it. -> that step (0: none yet)."""
    import torch

    ckpt = run / "checkpoints"
    for d in (p for p in ckpt.glob("step_*") if re.fullmatch(r"step_\d+", p.name)) if ckpt.is_dir() else []:
        files = [d / "state.pt"] if (d / "state.pt").exists() else [d / "mp_rank_00_model_states.pt"]
        state = torch.load(files[0], map_location="cpu", weights_only=False)  # raises on a truncated file
        client = state.get("client_state", state)
        assert client["step"] == int(d.name.split("_")[1]), d
    start = _resume_step(run)
    if start:
        assert (ckpt / f"step_{start:08d}").is_dir()
        assert [r["step"] for r in _logged_steps(run)][:start] == list(range(1, start + 1))
    return start


def _weights(model_dir: Path) -> dict:
    from retrieval.model import load_model

    return load_model(model_dir).state_dict()


def _same_weights(a: dict, b: dict, tol: float = 1e-5) -> None:
    assert list(a) == list(b)
    for n in a:
        assert (a[n] - b[n]).abs().max() <= tol, n


def _same_as_reference(run: Path, ref: Path, ref_weights: dict) -> int:
    """Same steps with the same samples (keys_sha1), lr and loss; the same exported weights; nothing partial left
    over. -> how many checkpoints beyond keep_checkpoints remain (see below)."""
    import json

    a, b = _logged_steps(ref), _logged_steps(run)
    assert [r["step"] for r in b] == list(range(1, TRAIN_STEPS + 1))
    for x, y in zip(a, b):
        assert (x["epoch"], x["keys_sha1"], x["lr"]) == (y["epoch"], y["keys_sha1"], y["lr"]), (x, y)
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-5, abs=1e-6), (x, y)
    summary = json.loads((run / "summary.json").read_text())
    assert (summary["step"], summary["stopped_early"]) == (TRAIN_STEPS, False)
    _same_weights(ref_weights, _weights(run / "model"))
    # nothing half-written or half-deleted is left; keep_checkpoints=1 may be exceeded by one whole checkpoint
    # when the kill fell between the last save and its prune (the resumed run has no step left to save)
    left = sorted(p.name for p in (run / "checkpoints").iterdir() if not p.name.endswith(".py"))
    assert left[0] == "latest" and left[-1] == f"step_{TRAIN_STEPS:08d}" and len(left) <= 3, left
    assert all(re.fullmatch(r"step_\d+", name) for name in left[1:]), left
    assert (run / "checkpoints" / "latest").read_text() == left[-1]
    assert not [p for p in run.iterdir() if p.name.startswith("model.")]
    return len(left) - 2


@pytest.fixture(scope="module")
def train_ref(tmp_path_factory):
    """The smoke config's synthetic world (generated once, copied into every run) and an uninterrupted run."""
    pytest.importorskip("webdataset")
    from pretrain.config import load_train_config
    from pretrain.run import prepare_synthetic

    root = tmp_path_factory.mktemp("train")
    prepare_synthetic(load_train_config(str(SMOKE), ["synth.val_videos=0"]), root / "world", is_main=True)
    refs = {}

    def ref(engine: str) -> tuple[Path, Path, float, dict]:  # run folder, synth folder, step seconds, weights
        if engine not in refs:
            run = root / f"ref-{engine}"
            shutil.copytree(root / "world" / "synth", run / "synth")
            proc = _start_train(_train_cmd(run, engine), root / f"ref-{engine}.log")
            assert proc.wait(timeout=300) == 0, (root / f"ref-{engine}.log").read_text()[-3000:]
            step_s = sorted(r["step_time"] for r in _logged_steps(run))[TRAIN_STEPS // 2]
            refs[engine] = run, root / "world" / "synth", step_s, _weights(run / "model")
        return refs[engine]
    return ref


def _kill_train_once(cmd: list[str], run: Path, kind: str, rng: random.Random, step_s: float) -> str | None:
    """Start the run (`--resume auto`) and SIGKILL it as `kind` says -> where it landed; None if it finished."""
    start = _resume_step(run)
    log = run.parent / "run.log"
    t0 = time.time()
    proc = _start_train(cmd, log, "" if kind in ("step", "writing checkpoint", "writing model") else kind)

    def wait_until(cond, poll: float = 0.002) -> None:
        while proc.poll() is None and not cond():
            time.sleep(poll)

    if kind == "step":  # a seeded moment after this run logged step n (n = start: its training is about to begin)
        n = rng.randint(start, TRAIN_STEPS - 1)
        logging = _opened(str(run / "steps.jsonl"))
        wait_until(lambda: logging(proc))  # (before that, steps.jsonl may still hold a killed run's lines)
        wait_until(lambda: n == start or any(r["step"] == n for r in _logged_steps(run)))
        try:
            proc.wait(timeout=rng.uniform(0, 1.5 * step_s))
        except subprocess.TimeoutExpired:
            pass
    elif kind == "writing checkpoint":  # this run holds a file of a checkpoint being written (TAG.tmp/) open
        writing = _opened(str(run / "checkpoints" / "step_"), ".tmp/")
        wait_until(lambda: writing(proc), poll=0.0005)
    elif kind == "writing model":  # this run has (re)created RUN/model.tmp: tokenizer, weights, config.yaml
        tmp = run / "model.tmp"
        wait_until(lambda: tmp.exists() and tmp.stat().st_ctime > t0, poll=0.0005)
    else:  # a failpoint: the run kills itself there
        proc.wait(timeout=300)
    where = None
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
        where = kind
    proc.wait()
    _reap_group(proc)
    if proc.returncode != -signal.SIGKILL:
        assert proc.returncode == 0, log.read_text()[-3000:]
        return None
    if kind == "step":
        done = [r["step"] for r in _logged_steps(run)]
        saving = [p.name for p in (run / "checkpoints").glob("*.tmp")] if (run / "checkpoints").is_dir() else []
        last = done[-1] if done else 0
        where = f"saving the checkpoint of step {last}" if f"step_{last:08d}.tmp" in saving else f"in step {last + 1}"
    return where or kind


def _train_campaign(train_ref, tmp_path, plan: list[str] | int, seed: int, engine: str = "deepspeed") -> dict:
    """Kill `pretrain/run.py --resume auto` at the kinds of points in `plan` (a list, or a number of seeded
    random ones with every kind at least once), checking the disk after each; a run that reaches the end is
    compared with the uninterrupted one and the next kill starts a fresh run."""
    ref, synth, step_s, ref_weights = train_ref(engine)
    rng = random.Random(seed)
    run = tmp_path / "run"
    cmd = _train_cmd(run, engine)
    if isinstance(plan, int):
        every = ["step"] + SAVE_KINDS + EXPORT_KINDS
        plan = rng.sample(every, len(every))  # every kind once, in a seeded order, then steps weighted up
        plan += [rng.choice(["step"] * 5 + every) for _ in range(TRAIN_KILLS["slow"] - len(plan))]
    stats = {"kills": 0, "runs": 0, "finished_before_kill": 0, "verified_runs": 0, "extra_checkpoint_left": 0,
             "where": {}}
    dirty = False

    def fresh():
        nonlocal dirty
        shutil.rmtree(run, ignore_errors=True)
        shutil.copytree(synth, run / "synth")
        dirty = False

    def finish():  # run to the end, then the result must equal the uninterrupted run's
        log = tmp_path / "run.log"
        proc = _start_train(cmd, log)
        stats["runs"] += 1
        assert proc.wait(timeout=300) == 0, log.read_text()[-3000:]
        stats["extra_checkpoint_left"] += _same_as_reference(run, ref, ref_weights)
        stats["verified_runs"] += 1

    fresh()
    for kind in plan:
        for _ in range(4):  # a kill point missed 4 times in a row (a failpoint that no longer exists) is a bug
            start = _checkpoints_whole(run)
            if start == TRAIN_STEPS and kind not in EXPORT_KINDS:  # nothing but the export is left: start over
                finish()
                fresh()
                continue
            where = _kill_train_once(cmd, run, kind, rng, step_s)
            stats["runs"] += 1
            if where is not None:
                break
            stats["finished_before_kill"] += 1  # the kill came too late: check it, start over
            stats["extra_checkpoint_left"] += _same_as_reference(run, ref, ref_weights)
            stats["verified_runs"] += 1
            fresh()
        else:
            pytest.fail(f"the run never stopped at {kind!r}: {stats}")
        stats["kills"] += 1
        dirty = True
        stats["where"][where] = stats["where"].get(where, 0) + 1
        _checkpoints_whole(run)
        if (run / "model").exists():  # a model folder is only ever a complete one (renamed from model.tmp)
            _same_weights(ref_weights, _weights(run / "model"))
        if kind in EXPORT_KINDS:  # a cycle ends in the export: finish it and start the next from scratch
            finish()
            fresh()
    if dirty:
        finish()
    print(f"pretrain/run.py ({engine}): {stats}")
    return stats


def test_training_killed_then_resumed_equals_uninterrupted(train_ref, tmp_path):
    stats = _train_campaign(train_ref, tmp_path, TRAIN_KILLS["fast"], seed=1)
    assert stats["kills"] == len(TRAIN_KILLS["fast"]) and stats["verified_runs"] >= 1


@SLOW
@pytest.mark.slow
@pytest.mark.parametrize("engine", ["deepspeed", "torch"])
def test_training_killed_many_times(train_ref, tmp_path, engine):
    stats = _train_campaign(train_ref, tmp_path, TRAIN_KILLS["slow"], seed=10 + (engine == "torch"), engine=engine)
    assert stats["kills"] == TRAIN_KILLS["slow"]
