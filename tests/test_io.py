"""retrieval.io: atomic_write keeps the old file on any failure, each durability level does the fsyncs it names,
the failpoint hook, and the writers whose level was raised (FAISS file, embedding shards, WebDataset shards)."""
from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from retrieval.io import DURABILITY, atomic_write, failpoint, sha256_file


@pytest.fixture
def fsyncs(monkeypatch) -> list[str]:
    """Every os.fsync from now on, as the path its descriptor names (a folder or a file) at the time of the call."""
    seen, real = [], os.fsync

    def fsync(fd):
        seen.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)
    monkeypatch.setattr(os, "fsync", fsync)
    return seen


def _old(tmp_path: Path) -> Path:
    path = tmp_path / "data.bin"
    path.write_bytes(b"old contents")
    return path


def _left(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in tmp_path.iterdir())


@pytest.mark.parametrize("durable", DURABILITY)
def test_failing_write_keeps_the_old_file_and_no_temp(tmp_path, durable):
    path = _old(tmp_path)

    def write(tmp):
        tmp.write_bytes(b"half of the new")
        raise OSError(28, "No space left on device")
    with pytest.raises(OSError, match="No space"):
        atomic_write(path, write, durable=durable)
    assert path.read_bytes() == b"old contents" and _left(tmp_path) == ["data.bin"]


def test_raise_failpoint_in_the_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = _old(tmp_path)
    monkeypatch.setenv("VMR_FAILPOINT", "raise:mid_write")

    def write(tmp):
        tmp.write_bytes(b"new")
        failpoint("mid_write")
    with pytest.raises(RuntimeError, match="failpoint mid_write"):
        atomic_write(path, write, durable="full")
    assert path.read_bytes() == b"old contents" and _left(tmp_path) == ["data.bin"]
    failpoint("elsewhere")  # other names do nothing
    monkeypatch.setenv("VMR_FAILPOINT", "")
    failpoint("mid_write")


def test_kill_failpoint_before_the_rename_keeps_the_old_file(tmp_path):
    """SIGKILL once the new contents are complete but not yet renamed: the old file, plus a hidden *.tmp."""
    path = _old(tmp_path)
    code = ("import sys; from retrieval.io import atomic_write, failpoint\n"
            "def write(tmp):\n    tmp.write_bytes(b'new contents')\n    failpoint('written')\n"
            "atomic_write(sys.argv[1], write, durable='full')\n")
    env = {**os.environ, "VMR_FAILPOINT": "written", "PYTHONPATH": str(Path(__file__).parents[1])}
    proc = subprocess.run([sys.executable, "-c", code, str(path)], env=env, capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert path.read_bytes() == b"old contents"
    (tmp,) = [p for p in tmp_path.iterdir() if p != path]
    assert tmp.name.startswith(".data.bin.") and tmp.name.endswith(".tmp") and tmp.read_bytes() == b"new contents"


@pytest.mark.parametrize("durable, synced", [("none", []), ("file", ["temp"]), ("full", ["temp", "folder"])])
def test_each_level_does_the_fsyncs_it_names(tmp_path, fsyncs, durable, synced):
    path = atomic_write(tmp_path / "a.json", '{"x": 1}', durable=durable)
    assert path.read_text() == '{"x": 1}' and _left(tmp_path) == ["a.json"]
    kinds = ["folder" if p == str(tmp_path) else "temp" if Path(p).name.startswith(".a.json.") else p
             for p in fsyncs]
    assert kinds == synced


def test_contents_as_bytes_str_or_a_writer(tmp_path):
    assert atomic_write(tmp_path / "b", b"\x00\x01", durable="none").read_bytes() == b"\x00\x01"
    assert atomic_write(tmp_path / "s", "café", durable="none").read_bytes() == "café".encode()
    atomic_write(tmp_path / "w", lambda tmp: tmp.write_text("by path"), durable="file")
    assert (tmp_path / "w").read_text() == "by path"
    assert sha256_file(tmp_path / "w") == hashlib.sha256(b"by path").hexdigest()


def test_the_level_must_be_named(tmp_path):
    with pytest.raises(TypeError):  # no default: every call names its level
        atomic_write(tmp_path / "x", b"")
    with pytest.raises(ValueError, match="none, file, full"):
        atomic_write(tmp_path / "x", b"", durable="fsync")
    assert _left(tmp_path) == []


# ---------------------------------------------------------------- the writers whose level was a slip

def test_faiss_file_and_embedding_shard_are_durable_with_their_names(tmp_path, fsyncs):
    """The SQLite commit right after names these files: their folder must be fsynced after the rename (it was
    not: a power cut could leave a committed index pointing at a file whose name never reached the disk)."""
    faiss = pytest.importorskip("faiss")
    from index import ann
    from index.store import save_npy

    index = faiss.IndexFlatIP(4)
    index.add(np.eye(4, dtype=np.float32))
    (tmp_path / "faiss").mkdir()
    (tmp_path / "shards").mkdir()
    ann.write_index(index, str(tmp_path / "faiss" / "v000001.faiss"))
    save_npy(np.ones((2, 4), np.float16), str(tmp_path / "shards" / "s.npy"))
    assert fsyncs[1::2] == [str(tmp_path / "faiss"), str(tmp_path / "shards")]
    assert ann.read_index(str(tmp_path / "faiss" / "v000001.faiss")).ntotal == 4


def test_webdataset_shard_and_its_record_reach_the_disk_before_their_renames(tmp_path, fsyncs):
    """`_done` trusts a shard with its progress record, so a power cut must not leave either named but empty
    (neither was fsynced); the report is rebuilt by every run and stays at "none"."""
    pytest.importorskip("av")
    from helpers_media import write_test_video

    from pretrain.shards import ShardOptions, read_annotations, write_shards

    for i in range(3):
        write_test_video(tmp_path / "lib" / f"c{i}.mp4", num_frames=4, size=(16, 16))
        (tmp_path / "lib" / f"c{i}.txt").write_text(f"clip {i}")
    out = tmp_path / "out"
    write_shards(read_annotations(None, tmp_path / "lib"), tmp_path / "lib", out, ShardOptions(shard_size=2),
                 progress=False)
    synced = [tuple(Path(p).name.split(".")[1:3]) for p in fsyncs]  # .shard-000000.tar.<pid>-<random>.tmp
    assert synced == [("shard-000000", "json"), ("shard-000000", "tar"), ("shard-000001", "json"),
                      ("shard-000001", "tar")]
    assert sorted(p.name for p in out.iterdir()) == [".progress", "report.json", "shard-000000.tar",
                                                     "shard-000001.tar"]
