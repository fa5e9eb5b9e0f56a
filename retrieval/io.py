"""Durable file output: the one atomic-write helper, folder/tree fsync, file hashing, and the crash-test failpoint."""
from __future__ import annotations

import hashlib
import os
import signal
import uuid
from pathlib import Path
from typing import Callable, Literal

# How far a finished atomic_write survives; every level is atomic (readers and a kill -9 see the old file or the
# whole new one). Each call names its level, so a choice can be told from a slip:
#   "none"  no fsync: for files rebuilt from others, or only read by a process running at the same time; after a
#           power loss the name may hold an empty or partial file.
#   "file"  the data is on disk before the rename: after a power loss the name holds the old file or the whole new
#           one, but the rename itself may be undone. Enough when a missing file is redone.
#   "full"  also the folder is fsynced after the rename: the new name is on disk when the call returns, so a later
#           durable step (a SQLite commit, `latest`) may refer to it.
Durability = Literal["none", "file", "full"]
DURABILITY = ("none", "file", "full")


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object] | bytes | str, *,
                 durable: Durability) -> Path:
    """Replace `path` with new contents through a temp file of its own in the same folder, then a rename.

    write: bytes or str (UTF-8) to store, or a function that writes the temp file given its path. On any error
    (also KeyboardInterrupt) the temp file is removed and `path` is left as it was. The temp name is
    `.NAME.<pid>-<random>.tmp`: hidden, unique per writer, and matched by a `*.tmp` sweep.
    """
    if durable not in DURABILITY:
        raise ValueError(f"durable must be one of {', '.join(DURABILITY)}, got {durable!r}")
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        if callable(write):
            write(tmp)
        else:
            tmp.write_bytes(write.encode("utf-8") if isinstance(write, str) else write)
        if durable != "none":
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable == "full":
        fsync_dir(path.parent)
    return path


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a folder's entries (a rename, a new file) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: str | os.PathLike) -> None:
    """fsync every file and folder under `root`, before it is renamed into place."""
    for folder, _, files in os.walk(root):
        for name in files:
            with open(os.path.join(folder, name), "rb") as f:
                os.fsync(f.fileno())
        fsync_dir(folder)


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def failpoint(name: str) -> None:
    """Crash-test hook: VMR_FAILPOINT=<name> SIGKILLs the process here; VMR_FAILPOINT=raise:<name> raises instead."""
    fp = os.environ.get("VMR_FAILPOINT")
    if fp == name:
        os.kill(os.getpid(), signal.SIGKILL)
    if fp == f"raise:{name}":
        raise RuntimeError(f"failpoint {name}")
