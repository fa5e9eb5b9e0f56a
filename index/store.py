"""On-disk index: SQLite metadata (the commit point), immutable embedding shards, versioned FAISS files, lock.

Layout of an index folder:
    index.sqlite          metadata: state (version, model, settings, FAISS file), roots, files, segments, failures
    shards/<uuid>.npy     float16 (n, dim) embeddings; immutable once renamed into place; rows referenced by
                          segments(shard, row)
    faiss/v000007.faiss   the FAISS index of version 7 (ids = segments.id); older versions are deleted after commit
    parts/<name>/         in-progress ingest checkpoints (part.sqlite + DONE marker), one per rank; merged then removed
    .lock                 writer lock (flock)

Why SQLite: one stdlib file gives atomic, durable transactions, so "which FAISS file, which rows, which version"
flips in a single commit: a crash before it leaves the previous version intact, a crash after it leaves garbage
that the next writer collects. It also updates a million-row table in place and answers id lookups without
loading the table. Readers never see half an update: they read the version, the FAISS file name and rows inside
one read transaction.
"""
from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
import uuid
from pathlib import Path

import numpy as np

from retrieval.io import atomic_write

from .errors import IndexBusyError, IndexCorruptError, IndexMissingError

FORMAT_VERSION = 1
DB_NAME = "index.sqlite"
SHARDS_DIR, FAISS_DIR, PARTS_DIR = "shards", "faiss", "parts"  # the sub-folders of the layout above

SCHEMA = """
CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS roots (id INTEGER PRIMARY KEY, path TEXT UNIQUE NOT NULL);
CREATE TABLE IF NOT EXISTS files (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    root INTEGER NOT NULL REFERENCES roots(id),
    path TEXT NOT NULL,             -- posix, relative to the root
    size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, hash TEXT NOT NULL,
    duration REAL, fps REAL, width INTEGER, height INTEGER,
    model_id TEXT NOT NULL, indexed_at REAL NOT NULL,
    UNIQUE(root, path));
CREATE TABLE IF NOT EXISTS segments (
    id INTEGER PRIMARY KEY,         -- the FAISS id; allocated from state.next_id, never reused
    file INTEGER NOT NULL REFERENCES files(id),
    start REAL NOT NULL, "end" REAL NOT NULL,
    shard TEXT NOT NULL, row INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS segments_file ON segments(file);
CREATE TABLE IF NOT EXISTS failures (
    path TEXT PRIMARY KEY,          -- absolute
    size INTEGER, mtime_ns INTEGER, reason TEXT NOT NULL, at REAL NOT NULL);
CREATE VIEW IF NOT EXISTS segment_rows AS
    SELECT s.id, r.path AS root, f.path, s.start, s."end", f.duration, f.fps, f.width, f.height,
           f.size, f.mtime_ns, f.hash, f.model_id, f.id AS file_id
    FROM segments s JOIN files f ON f.id = s.file JOIN roots r ON r.id = f.root;
"""


def connect(path: str | os.PathLike) -> sqlite3.Connection:
    """A connection in rollback-journal mode: no -wal/-shm side files, so read-only copies of an index work."""
    conn = sqlite3.connect(os.fspath(path), timeout=60, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection, write: bool = True):
    """BEGIN IMMEDIATE for writers (take the write lock up front), plain BEGIN for consistent reads."""
    conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def save_npy(array: np.ndarray, path: str) -> None:
    """np.save atomically, durable with its name: the transaction that lists the shard's rows comes next."""
    def write(tmp):
        with open(tmp, "wb") as f:
            np.save(f, array)
    atomic_write(path, write, durable="full")


def new_shard_name() -> str:
    return f"{uuid.uuid4().hex}.npy"


class IndexStore:
    """The committed index of one folder: state, roots, files, segments, failures, shards."""

    def __init__(self, index_dir: str | os.PathLike, conn: sqlite3.Connection):
        self.dir = Path(index_dir)
        self.conn = conn

    # -- opening -------------------------------------------------------------------------------------------
    @classmethod
    def exists(cls, index_dir) -> bool:
        return (Path(index_dir) / DB_NAME).is_file()

    @classmethod
    def open(cls, index_dir, create: bool = False) -> "IndexStore":
        index_dir = Path(index_dir)
        db = index_dir / DB_NAME
        if not db.is_file():
            if not create:
                raise IndexMissingError(f"no index at {index_dir} (missing {DB_NAME}); build one with "
                                        "`vmr index build --videos DIR --model MODEL --out INDEX_DIR`")
            for sub in (SHARDS_DIR, FAISS_DIR, PARTS_DIR):
                (index_dir / sub).mkdir(parents=True, exist_ok=True)
        try:
            conn = connect(db)
            if create:
                with transaction(conn):  # executescript() would commit mid-way; run statements one by one
                    for stmt in filter(str.strip, SCHEMA.split(";\n")):
                        conn.execute(stmt)
                    conn.executemany("INSERT OR IGNORE INTO state VALUES (?, ?)", [
                        ("format_version", str(FORMAT_VERSION)), ("version", "0"), ("next_id", "0"),
                        ("created", str(time.time()))])
            fmt = conn.execute("SELECT value FROM state WHERE key='format_version'").fetchone()
        except sqlite3.DatabaseError as e:
            raise IndexCorruptError(f"index metadata {db} is unreadable ({e}); the folder is damaged - rebuild it "
                                    "with `vmr index build` into a new folder") from e
        if fmt is None or int(fmt[0]) != FORMAT_VERSION:
            raise IndexCorruptError(f"{db}: unknown index format {fmt and fmt[0]} (this vmr reads {FORMAT_VERSION})")
        return cls(index_dir, conn)

    def close(self) -> None:
        self.conn.close()

    # -- state ---------------------------------------------------------------------------------------------
    def state(self) -> dict:
        out = {}
        for key, value in self.conn.execute("SELECT key, value FROM state"):
            try:
                out[key] = json.loads(value)
            except ValueError:
                out[key] = value
        return out

    def set_state(self, **values) -> None:
        """Inside a caller's transaction: values are stored as JSON."""
        for key, value in values.items():
            self.conn.execute("INSERT OR REPLACE INTO state VALUES (?, ?)", (key, json.dumps(value)))

    # -- roots and files -----------------------------------------------------------------------------------
    def roots(self) -> dict[int, str]:
        return {r["id"]: r["path"] for r in self.conn.execute("SELECT id, path FROM roots ORDER BY id")}

    def root_id(self, path: str) -> int:
        """Inside a caller's transaction: id of a root, inserting it when new."""
        self.conn.execute("INSERT OR IGNORE INTO roots(path) VALUES (?)", (path,))
        return self.conn.execute("SELECT id FROM roots WHERE path=?", (path,)).fetchone()[0]

    def files(self) -> dict[tuple[str, str], sqlite3.Row]:
        """(root path, relative path) -> files row, for every indexed file."""
        sql = "SELECT f.*, r.path AS root_path FROM files f JOIN roots r ON r.id = f.root"
        return {(r["root_path"], r["path"]): r for r in self.conn.execute(sql)}

    def failures(self) -> dict[str, sqlite3.Row]:
        return {r["path"]: r for r in self.conn.execute("SELECT * FROM failures ORDER BY path")}

    def segment_ids_of(self, file_ids) -> list[int]:
        ids: list[int] = []
        for chunk in _chunks(list(file_ids), 900):  # SQLite caps bound parameters per statement
            q = f"SELECT id FROM segments WHERE file IN ({','.join('?' * len(chunk))})"
            ids += [r[0] for r in self.conn.execute(q, chunk)]
        return ids

    def rows(self, ids) -> dict[int, sqlite3.Row]:
        out = {}
        for chunk in _chunks([int(i) for i in ids], 900):
            q = f"SELECT * FROM segment_rows WHERE id IN ({','.join('?' * len(chunk))})"
            out.update({r["id"]: r for r in self.conn.execute(q, chunk)})
        return out

    def counts(self) -> dict:
        one = lambda q: self.conn.execute(q).fetchone()[0]  # noqa: E731
        return {"files": one("SELECT COUNT(*) FROM files"), "segments": one("SELECT COUNT(*) FROM segments"),
                "failures": one("SELECT COUNT(*) FROM failures"),
                "shards": one("SELECT COUNT(DISTINCT shard) FROM segments")}

    # -- embeddings ----------------------------------------------------------------------------------------
    def live_embeddings(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ids int64 (n,), float16 (n, dim), file ids int64 (n,)) of every committed segment, in id order."""
        refs = self.conn.execute("SELECT id, shard, row, file FROM segments ORDER BY id").fetchall()
        ids = np.array([r[0] for r in refs], np.int64)
        files = np.array([r[3] for r in refs], np.int64)
        return ids, self.gather([(r[1], r[2]) for r in refs]), files

    def gather(self, refs: list[tuple[str, int]]) -> np.ndarray:
        """float16 (len(refs), dim) embeddings for (shard, row) references, reading each shard once."""
        return gather_shards(self.dir / SHARDS_DIR, refs, self.state().get("embed_dim"))


def gather_shards(shard_dir: Path, refs: list[tuple[str, int]], dim: int | None) -> np.ndarray:
    if not refs:
        return np.zeros((0, dim or 0), np.float16)
    by_shard: dict[str, list[int]] = {}
    for i, (shard, _) in enumerate(refs):
        by_shard.setdefault(shard, []).append(i)
    out = None
    for shard, positions in by_shard.items():
        path = shard_dir / shard
        try:
            data = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as e:
            raise IndexCorruptError(f"embedding shard {path} is missing or unreadable ({e})") from e
        rows = np.array([refs[i][1] for i in positions])
        if rows.max() >= len(data):
            raise IndexCorruptError(f"embedding shard {path} has {len(data)} rows; metadata wants row {rows.max()}")
        if out is None:
            out = np.empty((len(refs), data.shape[1]), np.float16)
        out[positions] = data[rows]
    return out


def _chunks(items: list, n: int):
    for i in range(0, len(items), n):
        yield items[i:i + n]


class WriterLock:
    """flock on INDEX_DIR/.lock: encoders hold it shared, commits and garbage collection exclusive.

    Garbage collection deletes shards no metadata references; an encoder that has renamed a shard into place but
    not yet recorded it holds the shared lock, so the collector cannot run in that window.
    """

    def __init__(self, index_dir, exclusive: bool, timeout: float = 3600.0):
        self.path = Path(index_dir) / ".lock"
        self.exclusive, self.timeout = exclusive, timeout
        self.fd = None

    def __enter__(self):
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: single-writer by convention
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        mode = fcntl.LOCK_EX if self.exclusive else fcntl.LOCK_SH
        deadline, told = time.monotonic() + self.timeout, False
        while True:
            try:
                fcntl.flock(self.fd, mode | fcntl.LOCK_NB)
                return self
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(self.fd)
                    raise IndexBusyError(f"{self.path}: another vmr process is updating this index")
                if not told:
                    print(f"waiting for another vmr process to release {self.path} ...", flush=True)
                    told = True
                time.sleep(0.2)

    def __exit__(self, *exc):
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor releases the flock
            self.fd = None
