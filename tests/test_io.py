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
