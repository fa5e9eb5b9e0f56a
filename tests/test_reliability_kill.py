"""kill -9 at seeded random moments, then rerun: `vmr shards` and `vmr index build/add` end as if never interrupted.

Each campaign starts the real command as a subprocess, SIGKILLs it after a seeded random delay (or once a seeded
number of output files exist), checks what is on disk is still usable, and repeats until one run exits 0; the
result is compared with an uninterrupted run. CI runs a few kills per command; `-m slow` runs many more.
"""
from __future__ import annotations

import hashlib
import os
import random
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


def _opened(needle: str):
    """ready(proc): the process (or one of its pool workers) holds a file whose path contains `needle` open,
    i.e. this very run has got past its imports to the work (files left by earlier runs do not count)."""
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
                    if needle in os.readlink(f"/proc/{pid}/fd/{fd}"):
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
    import retrieval
    from test_demo import TINY_MODEL

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
