"""kill -9 at every step of `vmr index add` / `build`: the old index stays searchable and a rerun finishes the job."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from test_index_support import LIBRARY_SEGMENTS, ColorModel, index_contents, make_library, model_dir, write_color_video

from index import ingest
from index.searcher import Searcher

SUPPORT = Path(__file__).with_name("test_index_support.py")
# a stray shard; a checkpoint not merged; a hot SQLite journal mid-commit; committed but not cleaned up
# (the other steps are covered in-process by test_index.py::test_failed_update_leaves_a_loadable_index)
STEPS = ["after_shard_write", "after_part_commit", "before_commit", "after_commit"]


def vmr(*args, failpoint=None):
    env = {**os.environ, "VMR_FAILPOINT": failpoint or ""}
    return subprocess.run([sys.executable, str(SUPPORT), *args], env=env, capture_output=True, text=True,
                          cwd=Path(__file__).parents[1], timeout=120)


@pytest.mark.parametrize("step", STEPS)
def test_killed_add_keeps_old_index_and_rerun_completes(tmp_path, step):
    lib, out = tmp_path / "lib", tmp_path / "idx"
    make_library(lib)
    ingest.build(lib, out, model=ColorModel(), model_path=str(model_dir(tmp_path)),
                 config=ingest.IngestConfig(segment_seconds=2.0, workers=0, progress=False))
    write_color_video(lib / "cyan.mp4", "cyan")
    new = sorted(LIBRARY_SEGMENTS + [("cyan.mp4", 0.0, 1.0)])

    proc = vmr("index", "add", "--index", str(out), "--videos", str(lib), "--workers", "0", "--no-progress",
               failpoint=step)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    committed = step in ("after_commit", "after_parts_removed")
    assert index_contents(out) == (new if committed else LIBRARY_SEGMENTS)
    s = Searcher(out, model=ColorModel())
    assert (s.search("cyan", k=1)[0].path == "cyan.mp4") == committed

    report = ingest.add(out, lib, model=ColorModel(), config=ingest.IngestConfig(workers=0, progress=False))
    assert report.checkpointed == (step != "after_shard_write" and not committed)
    assert index_contents(out) == new
    assert s.search("cyan", k=1)[0].path == "cyan.mp4"
    assert not list((out / "parts").iterdir()) and len(list((out / "faiss").iterdir())) == 1
    assert not [p for p in (out / "shards").iterdir() if ".tmp" in p.name]


def test_killed_build_resumes(tmp_path):
    lib, out = tmp_path / "lib", tmp_path / "idx"
    make_library(lib)
    args = ("index", "build", "--videos", str(lib), "--model", str(model_dir(tmp_path)), "--out", str(out),
            "--segment-seconds", "2", "--workers", "0", "--no-progress")
    assert vmr(*args, failpoint="after_part_commit").returncode == -signal.SIGKILL
    assert Searcher(out, model=ColorModel()).search("red") == []   # nothing committed, still loadable
    proc = vmr(*args)
    assert proc.returncode == 0, proc.stderr
    assert "5 from an interrupted run" in proc.stdout
    assert index_contents(out) == LIBRARY_SEGMENTS


def test_two_ranks_in_parallel(tmp_path):
    """As under torchrun: RANK/WORLD_SIZE split the library, rank 0 waits for rank 1's part and merges both."""
    lib, out = tmp_path / "lib", tmp_path / "idx"
    make_library(lib)
    args = [sys.executable, str(SUPPORT), "index", "build", "--videos", str(lib), "--model", str(model_dir(tmp_path)),
            "--out", str(out), "--segment-seconds", "2", "--workers", "0", "--no-progress"]
    procs = [subprocess.Popen(args, env={**os.environ, "RANK": str(r), "WORLD_SIZE": "2", "LOCAL_RANK": str(r)},
                              cwd=Path(__file__).parents[1], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for r in (0, 1)]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert "rank 0 merges it" in outputs[1] and "version 1" in outputs[0]
    assert index_contents(out) == LIBRARY_SEGMENTS
