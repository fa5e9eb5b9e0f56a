"""Searcher: load the model and the index once, answer text queries (and clip queries: `search_video`,
`search_segment`) with ranked videos and segments. A score is the cosine similarity of the two embeddings, -1..1.

Thread-safe: the loaded index is an immutable snapshot swapped under a lock; each query checks the committed
version (one indexed SQLite read) and reloads when `vmr index add/remove` committed a new one, so a running app
sees updates. Row lookups happen in the same read transaction as the version check, so a query never mixes
versions.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from . import ann
from .errors import IndexBusyError, IndexCorruptError, ModelMismatchError, QueryVideoError, UsageError
from .library import is_inside, relative_to_root, resolve_inside
from .store import DB_NAME, FAISS_DIR, IndexStore, connect, transaction

log = logging.getLogger(__name__)

MAX_QUERY_CHARS = 1000  # longer queries are cut here (the tokenizer then truncates to its context length)
SPAN_SLACK = 0.05       # seconds a clip query's START-END may pass the probed duration (containers round it)


@dataclass
class Segment:
    id: int
    start: float
    end: float
    score: float


@dataclass
class Hit:
    """One result: a video (grouped mode: its best segment first, other matching segments after) or a segment."""
    rank: int
    path: str            # relative to `root`, posix
    root: str
    start: float
    end: float
    score: float
    segments: list[Segment] = field(default_factory=list)
    file_id: int = 0
    duration: float = 0.0
    width: int = 0
    height: int = 0

    @property
    def abs_path(self) -> str:
        return os.path.join(self.root, self.path)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["abs_path"] = self.abs_path
        return d


@dataclass(frozen=True)
class _Loaded:
    version: int
    index: object | None
    state: dict
    ntotal: int
    loaded_at: float
    files: int = 0


class Searcher:
    """`Searcher(index_dir)`: the model the index records (or `model=`: a model or its folder), FAISS on CPU/GPU."""

    def __init__(self, index_dir: str | os.PathLike, model=None, device: str = "auto"):
        from retrieval import load_model

        from .embedder import Embedder, resolve_device

        self.index_dir = Path(index_dir).resolve()
        self._tls = threading.local()
        self._lock = threading.RLock()
        self._model_lock = threading.Lock()
        self.reload_error: str | None = None
        self._loaded = self._load()  # before the model: a broken index should fail fast and cheaply
        st = self._loaded.state
        if model is None:
            if not st.get("model_path"):
                raise UsageError(f"{self.index_dir}: the index records no model path; pass model=")
            model = load_model(st["model_path"], resolve_device(device))
            what = f"the model at {st['model_path']} (changed since the index was built?)"
        elif isinstance(model, (str, os.PathLike)):  # a model folder
            what = f"the model at {model}"
            model = load_model(model, resolve_device(device))
        else:
            what = "the given model"
        if str(model.model_id) != st.get("model_id"):
            raise ModelMismatchError(st.get("model_id"), str(model.model_id), what)
        self.embedder = Embedder(model, device)
        self.model = self.embedder.model
        self._gpu_lock = threading.Lock() if self._on_gpu(self._loaded.index) else None

    # -- loading -------------------------------------------------------------------------------------------
    def _conn(self):
        conn = getattr(self._tls, "conn", None)
        if conn is None:
            if not (self.index_dir / DB_NAME).is_file():
                raise IndexCorruptError(f"{self.index_dir / DB_NAME} disappeared")
            conn = self._tls.conn = connect(self.index_dir / DB_NAME)
        return conn

    def _load(self) -> _Loaded:
        last = None
        for _ in range(3):  # a commit may delete the file we were about to read: take the new snapshot then
            store = IndexStore.open(self.index_dir)
            try:
                with transaction(store.conn, write=False):
                    st = store.state()
                    counts = store.counts()
                    n = counts["segments"]
            finally:
                store.close()
            version, name = int(st.get("version", 0)), st.get("faiss_file")
            if not name:
                if n:
                    raise IndexCorruptError(f"{self.index_dir}: {n} segments but no FAISS file recorded")
                return _Loaded(version, None, st, 0, time.time(), counts["files"])
            path = self.index_dir / FAISS_DIR / name
            if not path.exists():
                last = IndexCorruptError(f"FAISS index file missing: {path}")
                continue
            index = ann.read_index(str(path), st.get("faiss_bytes"))
            if index.ntotal != n:
                raise IndexCorruptError(f"FAISS index {path} holds {index.ntotal} vectors but the metadata lists "
                                        f"{n} segments; rebuild the index into a new folder")
            info = st.get("index") or {}
            ann.set_nprobe(index, info.get("nprobe"))
            return _Loaded(version, ann.to_gpu(index), st, n, time.time(), counts["files"])
        raise last

    @staticmethod
    def _on_gpu(index) -> bool:
        return index is not None and "Gpu" in type(index).__name__

    def _committed_version(self) -> int:
        row = self._conn().execute("SELECT value FROM state WHERE key='version'").fetchone()
        return int(row[0]) if row else 0

    def refresh(self) -> bool:
        """Reload if a newer version was committed; True when the loaded index changed. A broken new version
        is reported (`reload_error`, logged) and the loaded one keeps serving."""
        if self._committed_version() == self._loaded.version:
            return False
        with self._lock:
            if self._committed_version() == self._loaded.version:
                return False  # another thread reloaded meanwhile
            try:
                self._loaded = self._load()
                self.reload_error = None
                return True
            except Exception as e:  # noqa: BLE001 - keep serving the last good version
                self.reload_error = f"{type(e).__name__}: {e}"
                log.error("index reload failed, still serving version %s: %s", self._loaded.version, e)
                return False

    # -- searching -----------------------------------------------------------------------------------------
    @staticmethod
    def clean_query(text: str) -> str:
        if not isinstance(text, str) or not text.strip():
            raise UsageError("empty query: type what you are looking for, e.g. 'a dog catches a frisbee'")
        return " ".join(text.split())[:MAX_QUERY_CHARS]

    def encode(self, texts: list[str]) -> np.ndarray:
        """Queries -> float32 (B, E) normalised embeddings."""
        from .embedder import threads_for_encoding

        texts = [self.clean_query(t) for t in texts]
        with self._model_lock, threads_for_encoding(self.embedder.device):  # one forward at a time: torch
            return self.embedder.encode_text(texts)                          # modules are not promised re-entrant

    def search(self, text: str, k: int = 10, group_by_video: bool = True,
               threshold: float | None = None) -> list[Hit]:
        """Top `k` videos (or segments with group_by_video=False) for `text`, best first."""
        return self.search_batch([text], k, group_by_video, threshold)[0]

    def search_batch(self, texts: list[str], k: int = 10, group_by_video: bool = True,
                     threshold: float | None = None) -> list[list[Hit]]:
        return self.search_vectors(self.encode(texts), k, group_by_video, threshold)

    def search_vectors(self, queries: np.ndarray, k: int = 10, group_by_video: bool = True,
                       threshold: float | None = None, exclude: frozenset[int] = frozenset()) -> list[list[Hit]]:
        """Search with (B, E) query embeddings: the array-level API the text and clip methods wrap.
        `exclude`: segment ids never returned (a clip query's own segments)."""
        if k < 1:
            raise UsageError(f"k must be >= 1, got {k}")
        queries = np.ascontiguousarray(np.atleast_2d(queries), np.float32)
        for _ in range(3):
            self.refresh()
            loaded = self._loaded
            if loaded.index is None:
                return [[] for _ in queries]
            want = (k if not group_by_video else max(4 * k, 32)) + len(exclude)
            want = min(loaded.ntotal, want)
            while True:
                scores, ids = self._faiss_search(loaded.index, queries, min(want, loaded.ntotal))
                conn = self._conn()
                with transaction(conn, write=False):
                    if self._committed_version() != loaded.version:
                        rows = None
                    else:
                        rows = IndexStore(self.index_dir, conn).rows(np.unique(ids[ids >= 0]))
                if rows is None:
                    break  # a commit landed mid-query: reload and redo
                results = [_rank(ids[b], scores[b], rows, k, threshold, group_by_video, exclude)
                           for b in range(len(queries))]
                # grouped: too few distinct videos among the candidates -> widen, unless the list is exhausted
                short = any(len(r) < k and _not_cut(scores[b], threshold) for b, r in enumerate(results))
                if not group_by_video or not short or want >= loaded.ntotal:
                    return results
                want = min(loaded.ntotal, want * 4)
        raise IndexBusyError("the index kept changing during the search; try again")

    # -- search by example ------------------------------------------------------------------------------
    def search_video(self, path: str | os.PathLike, start: float | None = None, end: float | None = None,
                     k: int = 10, group_by_video: bool = True, threshold: float | None = None) -> list[Hit]:
        """Segments nearest to a clip (the whole file, or [start, end) seconds of it) by video embedding, encoded
        as the index encodes its segments. When the clip is in the index, its own overlapping segments are left out.
        A missing or undecodable file, or a span outside the video, raises QueryVideoError."""
        vector = self.encode_video(path, start, end)
        return self.search_vectors(vector, k, group_by_video, threshold, self._own_segments(path, start, end))[0]

    def search_segment(self, segment_id: int, k: int = 10, group_by_video: bool = True,
                       threshold: float | None = None) -> list[Hit]:
        """"More like this" for an indexed segment: its stored embedding as the query, the segment itself (and any
        segment of its file overlapping it) left out."""
        conn = self._conn()
        with transaction(conn, write=False):
            row = conn.execute('SELECT shard, row, file, start, "end" FROM segments WHERE id=?',
                               (int(segment_id),)).fetchone()
            if row is None:
                raise QueryVideoError(f"segment {segment_id} is not in the index (reloaded since?)")
            vector = IndexStore(self.index_dir, conn).gather([(row[0], row[1])]).astype(np.float32)
            own = self._overlapping(conn, "file=?", (row[2],), row[3], row[4])
        return self.search_vectors(vector, k, group_by_video, threshold, own)[0]

    def encode_video(self, path: str | os.PathLike, start: float | None = None,
                     end: float | None = None) -> np.ndarray:
        """A clip -> float32 (1, E) normalised embedding, sampled and resized with the index's settings."""
        from retrieval.data.transforms import frames_to_uint8
        from retrieval.data.video import VideoError, read_frames

        from .embedder import threads_for_encoding

        path = os.fspath(path)
        duration = check_clip(path, start, end)
        st = self._loaded.state
        frames = int(st.get("frames") or self.embedder.num_frames)
        size = int(st.get("img_size") or self.embedder.img_size)
        try:
            if start is not None:
                clip = read_frames(path, frames, mode="middle", start_sec=start, end_sec=min(end, duration or end))
            else:  # the whole file, read as the index reads a one-segment clip
                clip = read_frames(path, frames, mode="middle")
        except VideoError as e:
            raise QueryVideoError(f"{path}: cannot be decoded ({e.reason})") from None
        video = frames_to_uint8(clip, size).unsqueeze(0)  # (1, 3, T, H, W) uint8
        with self._model_lock, threads_for_encoding(self.embedder.device):
            return self.embedder.encode_video(video).astype(np.float32)

    def _own_segments(self, path, start: float | None, end: float | None) -> frozenset[int]:
        """Ids of the indexed segments of `path` that overlap [start, end) (all of them for the whole file)."""
        path = os.fspath(path)
        for root in self.roots():
            if not is_inside(path, root):
                continue
            rel = relative_to_root(path, root)
            conn = self._conn()
            with transaction(conn, write=False):
                own = self._overlapping(conn, "file=(SELECT f.id FROM files f JOIN roots r ON r.id=f.root "
                                        "WHERE r.path=? AND f.path=?)", (root, rel), start, end)
            if own:
                return own
        return frozenset()

    @staticmethod
    def _overlapping(conn, where: str, params: tuple, start: float | None, end: float | None) -> frozenset[int]:
        rows = conn.execute(f'SELECT id, start, "end" FROM segments WHERE {where}', params).fetchall()
        if start is None:
            return frozenset(r[0] for r in rows)
        return frozenset(r[0] for r in rows if r[1] < end and r[2] > start)

    def _faiss_search(self, index, queries, k):
        if self._gpu_lock is not None:  # FAISS GPU indexes are not safe to share between threads
            with self._gpu_lock:
                return index.search(queries, k)
        return ann.search(index, queries, k)

    # -- what the UI needs ---------------------------------------------------------------------------------
    def info(self) -> dict:
        loaded = self._loaded
        st = loaded.state
        card = getattr(self.model, "card", None)  # the model folder's card (None: saved before cards existed)
        return {"index_dir": str(self.index_dir), "version": loaded.version, "segments": loaded.ntotal,
                "files": loaded.files, "card": asdict(card) if card is not None else None,
                "model_id": st.get("model_id"), "model_path": st.get("model_path"),
                "device": str(self.embedder.device), "roots": self.roots(),
                "settings": {k: st.get(k) for k in ("segment_seconds", "stride", "frames", "img_size")},
                "faiss": st.get("index") or {}, "on_gpu": self._on_gpu(loaded.index),
                "loaded_at": loaded.loaded_at, "updated": st.get("updated"), "reload_error": self.reload_error,
                "max_query_chars": MAX_QUERY_CHARS}

    def roots(self) -> list[str]:
        """Library folders of the indexed files: the only places the app may serve media from."""
        return [r[0] for r in self._conn().execute("SELECT path FROM roots ORDER BY id")]

    def media_path(self, hit: Hit) -> str:
        """The file of a hit, guaranteed inside an indexed library root (no `..`, no symlink out)."""
        if hit.root not in self.roots():
            raise ValueError(f"{hit.root} is not a library root of this index")
        path = resolve_inside(hit.root, hit.path)
        if not is_inside(path, hit.root):
            raise ValueError(f"{hit.path} resolves outside the library")
        return path

    def thumbnail(self, hit: Hit, width: int = 320) -> bytes:
        """JPEG of the hit's segment middle frame; cached (keyed by file, mtime and times)."""
        from .media import thumbnail_jpeg

        path = self.media_path(hit)
        key = (path, os.stat(path).st_mtime_ns, round(hit.start, 3), round(hit.end, 3), width)
        with self._lock:
            cache = self.__dict__.setdefault("_thumbs", OrderedDict())
            if key in cache:
                cache.move_to_end(key)
                return cache[key]
        data = thumbnail_jpeg(path, hit.start, hit.end, width)
        with self._lock:
            cache[key] = data
            while len(cache) > 512:
                cache.popitem(last=False)
        return data


def check_clip(path: str | os.PathLike, start: float | None = None, end: float | None = None) -> float:
    """The duration of a clip that can be a query (a file that decodes, START-END inside it); QueryVideoError
    otherwise. Cheap (a probe): callers run it before loading a model."""
    from retrieval.data.video import VideoError, probe

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise QueryVideoError(f"{path}: no such file")
    if (start is None) != (end is None):
        raise QueryVideoError("give both START and END of the clip, or neither")
    try:
        duration = float(probe(path).duration or 0.0)
    except VideoError as e:
        raise QueryVideoError(f"{path}: cannot be decoded ({e.reason})") from None
    if start is not None and (not 0 <= start < end or (duration and end > duration + SPAN_SLACK)):
        raise QueryVideoError(f"{path}: the clip {start:g}-{end:g}s lies outside the video (0-{duration:g}s); "
                              f"give 0 <= START < END <= {duration:g}")
    return duration


def _not_cut(scores: np.ndarray, threshold: float | None) -> bool:
    """The candidate list did not already drop below the threshold (so fetching more could add videos)."""
    return threshold is None or (len(scores) and scores[-1] >= threshold)


def _rank(ids, scores, rows, k: int, threshold: float | None, group: bool,
          exclude: frozenset[int] = frozenset()) -> list[Hit]:
    hits: list[Hit] = []
    by_file: dict[int, Hit] = {}
    for i, s in zip(ids.tolist(), scores.tolist()):
        if i < 0 or i in exclude:
            continue
        if threshold is not None and s < threshold:
            break  # FAISS returns scores in descending order
        r = rows.get(i)
        if r is None:
            continue
        seg = Segment(int(i), float(r["start"]), float(r["end"]), float(s))
        if group and r["file_id"] in by_file:
            by_file[r["file_id"]].segments.append(seg)
            continue
        if len(hits) >= k:
            if group:
                continue  # keep collecting extra segments of the videos already listed
            break
        hit = Hit(len(hits) + 1, r["path"], r["root"], seg.start, seg.end, seg.score, [seg], int(r["file_id"]),
                  float(r["duration"] or 0.0), int(r["width"] or 0), int(r["height"] or 0))
        hits.append(hit)
        by_file[r["file_id"]] = hit
    return hits
