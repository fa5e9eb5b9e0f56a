"""Writer: checkpoint encoded files into a part (embedding shards + part.sqlite) that a merge later commits.

Each ingest process (one per rank) owns one part folder, parts/rank<r>of<w>/. Every flush first renames a
complete shard into INDEX_DIR/shards/, then records its files and segments in part.sqlite in one transaction:
a crash loses at most the unflushed buffer, and a rerun skips every file the part already holds. Nothing here
is visible to searches until `index.update.merge` commits it.
"""
from __future__ import annotations

import json
import os
import shutil
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from retrieval.io import atomic_write, failpoint

from .embedder import Encoded
from .reader import Failed, Unchanged
from .store import PARTS_DIR, SHARDS_DIR, connect, new_shard_name, save_npy, transaction

PART_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files (
    root TEXT NOT NULL, path TEXT NOT NULL, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, hash TEXT NOT NULL,
    duration REAL, fps REAL, width INTEGER, height INTEGER,
    unchanged INTEGER NOT NULL,     -- 1: same bytes as the indexed copy, only size/mtime moved
    written REAL NOT NULL, PRIMARY KEY (root, path));
CREATE TABLE IF NOT EXISTS segments (
    root TEXT NOT NULL, path TEXT NOT NULL, start REAL NOT NULL, "end" REAL NOT NULL,
    shard TEXT NOT NULL, row INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS segments_key ON segments(root, path);
CREATE TABLE IF NOT EXISTS failures (
    path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, reason TEXT NOT NULL, written REAL NOT NULL)
"""


def part_name(rank: int, world: int) -> str:
    return f"rank{rank}of{world}"


class PartWriter:
    """Buffers encoded files and flushes them as one shard + one transaction (by rows or by time)."""

    def __init__(self, index_dir: str | os.PathLike, name: str, model_id: str, shard_rows: int = 4096,
                 checkpoint_seconds: float = 60.0):
        self.index_dir = Path(index_dir)
        self.dir = self.index_dir / PARTS_DIR / name
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "DONE").unlink(missing_ok=True)  # this rank is (again) at work
        self.shard_dir = self.index_dir / SHARDS_DIR
        self.shard_dir.mkdir(exist_ok=True)
        self.conn = connect(self.dir / "part.sqlite")
        with transaction(self.conn):
            for stmt in PART_SCHEMA.split(";\n"):
                self.conn.execute(stmt)
            self.conn.execute("INSERT OR IGNORE INTO meta VALUES ('model_id', ?)", (model_id,))
        stored = self.conn.execute("SELECT value FROM meta WHERE key='model_id'").fetchone()[0]
        if stored != model_id:  # a leftover checkpoint of another model must not be mixed in
            self.conn.close()
            shutil.rmtree(self.dir)
            self.__init__(index_dir, name, model_id, shard_rows, checkpoint_seconds)
            return
        self.shard_rows, self.checkpoint_seconds = shard_rows, checkpoint_seconds
        self._encoded: list[Encoded] = []
        self._other: list[Failed | Unchanged] = []
        self._rows = 0
        self._last_flush = time.monotonic()
        self.files_written = 0

    def write(self, item: Encoded | Failed | Unchanged) -> None:
        if isinstance(item, Encoded):
            self._encoded.append(item)
            self._rows += len(item.spans)
        else:
            self._other.append(item)
        if self._rows >= self.shard_rows or time.monotonic() - self._last_flush >= self.checkpoint_seconds:
            self.flush()

    def flush(self) -> None:
        if not self._encoded and not self._other:
            return
        now = time.time()
        shard = None
        if self._encoded:
            shard = new_shard_name()
            save_npy(np.concatenate([e.embeddings for e in self._encoded]).astype(np.float16),
                     str(self.shard_dir / shard))
            failpoint("after_shard_write")
        with transaction(self.conn):
            row = 0
            for e in self._encoded:
                i = e.info
                self._replace_file(i.root, i.rel)
                self.conn.execute("INSERT INTO files VALUES (?,?,?,?,?,?,?,?,?,0,?)",
                                  (i.root, i.rel, i.size, i.mtime_ns, i.hash, i.duration, i.fps, i.width,
                                   i.height, now))
                self.conn.executemany("INSERT INTO segments VALUES (?,?,?,?,?,?)",
                                      [(i.root, i.rel, s, t, shard, row + j) for j, (s, t) in enumerate(e.spans)])
                row += len(e.spans)
            for item in self._other:
                if isinstance(item, Unchanged):
                    i = item.info
                    self._replace_file(i.root, i.rel)
                    self.conn.execute("INSERT INTO files VALUES (?,?,?,?,?,?,?,?,?,1,?)",
                                      (i.root, i.rel, i.size, i.mtime_ns, i.hash, i.duration, i.fps, i.width,
                                       i.height, now))
                else:
                    self._replace_file(item.task.root, item.task.rel)
                    self.conn.execute("INSERT OR REPLACE INTO failures VALUES (?,?,?,?,?)",
                                      (item.task.path, item.size, item.mtime_ns, item.reason, now))
        failpoint("after_part_commit")
        self.files_written += len(self._encoded) + len(self._other)
        self._encoded, self._other, self._rows = [], [], 0
        self._last_flush = time.monotonic()

    def _replace_file(self, root: str, rel: str) -> None:
        """A file re-read in this part (it changed since its checkpoint) replaces its earlier rows."""
        self.conn.execute("DELETE FROM files WHERE root=? AND path=?", (root, rel))
        self.conn.execute("DELETE FROM segments WHERE root=? AND path=?", (root, rel))
        self.conn.execute("DELETE FROM failures WHERE path=?", (os.path.join(root, rel),))

    def close(self, done: bool = True) -> None:
        """Flush, and with `done` leave the DONE marker that tells the merging rank this part is complete."""
        try:
            self.flush()
        finally:
            self.conn.close()
        if done:
            # rank 0 polls for it, so it is written whole; a power cut ends the launch and its rerun writes it again
            atomic_write(self.dir / "DONE", json.dumps({"finished": time.time(), "pid": os.getpid()}), durable="none")


@dataclass
class PartFile:
    root: str
    rel: str
    row: dict
    segments: list[tuple[float, float, str, int]] = field(default_factory=list)
    part: str = ""


@dataclass
class Parts:
    """Everything checkpointed in parts/: files (latest write wins), failures, and which folders were read."""
    files: dict[tuple[str, str], PartFile]
    failures: dict[str, dict]
    dirs: list[Path]
    shards: set[str]
    stale: list[Path] = field(default_factory=list)  # parts written with another model: never merged


def read_parts(index_dir: str | os.PathLike, with_segments: bool = True, model_id: str | None = None) -> Parts:
    """Read every part's checkpoints; with `model_id`, parts of another model are listed as stale instead."""
    files: dict[tuple[str, str], PartFile] = {}
    failures: dict[str, dict] = {}
    dirs, shards, stale = [], set(), []
    parts_dir = Path(index_dir) / PARTS_DIR
    for d in sorted(parts_dir.iterdir()) if parts_dir.is_dir() else []:
        db = d / "part.sqlite"
        if not db.is_file():
            continue
        conn = connect(db)
        try:
            conn.execute("SELECT 1 FROM meta LIMIT 1")
        except sqlite3.DatabaseError:  # died before its schema was committed: holds nothing
            conn.close()
            stale.append(d)
            continue
        try:
            with transaction(conn, write=False):
                row = conn.execute("SELECT value FROM meta WHERE key='model_id'").fetchone()
                if model_id is not None and (row is None or row[0] != model_id):
                    stale.append(d)
                    continue
                dirs.append(d)
                for r in conn.execute("SELECT * FROM files"):
                    key = (r["root"], r["path"])
                    if key not in files or files[key].row["written"] < r["written"]:
                        files[key] = PartFile(r["root"], r["path"], dict(r), part=d.name)
                for r in conn.execute("SELECT * FROM failures"):
                    if r["path"] not in failures or failures[r["path"]]["written"] < r["written"]:
                        failures[r["path"]] = dict(r)
                shards.update(r[0] for r in conn.execute("SELECT DISTINCT shard FROM segments"))
                if with_segments:
                    for r in conn.execute('SELECT root, path, start, "end", shard, row FROM segments '
                                          "ORDER BY rowid"):
                        f = files.get((r[0], r[1]))
                        if f is not None and f.part == d.name:
                            f.segments.append((r[2], r[3], r[4], r[5]))
        finally:
            conn.close()
    # a failure recorded after a file's successful checkpoint (or before it): the later event wins
    by_path = {os.path.join(*key): key for key in files}
    for path, fail in list(failures.items()):
        key = by_path.get(path)
        if key is not None:
            if files[key].row["written"] >= fail["written"]:
                failures.pop(path)
            else:
                files.pop(key)
    return Parts(files, failures, dirs, shards, stale)


def done_parts(index_dir: str | os.PathLike) -> dict[str, float]:
    """part name -> finish time, for parts whose rank has finished."""
    out = {}
    for marker in (Path(index_dir) / PARTS_DIR).glob("*/DONE"):
        try:
            out[marker.parent.name] = float(json.loads(marker.read_text())["finished"])
        except (OSError, ValueError, KeyError):
            continue
    return out
