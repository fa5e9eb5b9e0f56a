"""Commit: turn checkpointed parts, or removals, into the next index version (new FAISS file + one transaction).

Order of a commit, each step safe to die in:
  1. write faiss/v<N+1>.faiss (temp + rename)   crash: v<N> still current, the stray file is collected later
  2. one SQLite transaction: rows, version N+1   crash: SQLite rolls back to v<N>
  3. delete merged parts, old FAISS files and unreferenced shards (garbage; a rerun finishes it)
A rerun after any crash replays the same parts; files whose hash the index already holds are not added twice.
"""
from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from retrieval.io import failpoint

from . import ann
from .errors import IndexCorruptError
from .store import FAISS_DIR, SHARDS_DIR, IndexStore, WriterLock, transaction
from .writer import PartFile, read_parts

log = logging.getLogger(__name__)

RETUNE_FRACTION = 0.1  # rebuild + re-measure an IVF index once this share of its vectors changed since tuning


@dataclass
class Change:
    adds: list[PartFile] = field(default_factory=list)             # new or changed files, with their segments
    touches: list[tuple[int, int, int]] = field(default_factory=list)  # (file id, size, mtime_ns): same bytes
    removes: list[int] = field(default_factory=list)               # file ids to drop with their segments
    failures: list[dict] = field(default_factory=list)             # path, size, mtime_ns, reason
    clear_failures: list[str] = field(default_factory=list)

    def empty(self) -> bool:
        return not (self.adds or self.touches or self.removes or self.failures or self.clear_failures)


@dataclass
class CommitResult:
    version: int
    files_added: int = 0
    files_removed: int = 0
    segments_added: int = 0
    segments_removed: int = 0
    segments_total: int = 0
    index: dict = field(default_factory=dict)
    committed: bool = True


def commit(store: IndexStore, change: Change) -> CommitResult:
    """Apply `change` as version N+1. Caller holds the exclusive WriterLock."""
    st = store.state()
    version = int(st.get("version", 0))
    if change.empty():
        return CommitResult(version, segments_total=store.counts()["segments"], index=st.get("index") or {},
                            committed=False)
    files = store.files()
    replaced = [files[(f.root, f.rel)]["id"] for f in change.adds if (f.root, f.rel) in files]
    gone_files = sorted(set(change.removes) | set(replaced))
    removed_ids = np.array(store.segment_ids_of(gone_files), np.int64)
    refs = [(s[2], s[3]) for f in change.adds for s in f.segments]
    # file ids of new files are not known before the transaction: number them -1, -2, ... for recall grouping
    new_groups = np.array([-1 - i for i, f in enumerate(change.adds) for _ in f.segments], np.int64)
    new_vecs = store.gather(refs)
    dim = int(st.get("embed_dim") or (new_vecs.shape[1] if len(refs) else 0))
    if len(refs) and new_vecs.shape[1] != dim:
        raise IndexCorruptError(f"new embeddings are {new_vecs.shape[1]}-d but the index holds {dim}-d vectors")
    next_id = int(st.get("next_id", 0))
    new_ids = np.arange(next_id, next_id + len(refs), dtype=np.int64)
    n_before = store.counts()["segments"]
    n_after = n_before - len(removed_ids) + len(new_ids)

    index_info, faiss_name, faiss_bytes = _update_faiss(store, st, version, dim, removed_ids, new_ids, new_vecs,
                                                        new_groups, n_before, n_after)

    with transaction(store.conn):
        for fid in gone_files:
            store.conn.execute("DELETE FROM segments WHERE file=?", (fid,))
            store.conn.execute("DELETE FROM files WHERE id=?", (fid,))
        sid = next_id
        now = time.time()
        for f in change.adds:
            r = f.row
            cur = store.conn.execute(
                "INSERT INTO files(root, path, size, mtime_ns, hash, duration, fps, width, height, model_id, "
                "indexed_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (store.root_id(f.root), f.rel, r["size"], r["mtime_ns"], r["hash"], r["duration"], r["fps"],
                 r["width"], r["height"], st["model_id"], now))
            rows = [(sid + j, cur.lastrowid, s, e, shard, row) for j, (s, e, shard, row) in enumerate(f.segments)]
            store.conn.executemany('INSERT INTO segments(id, file, start, "end", shard, row) VALUES (?,?,?,?,?,?)',
                                   rows)
            sid += len(rows)
        store.conn.executemany("UPDATE files SET size=?, mtime_ns=? WHERE id=?",
                               [(size, mtime, fid) for fid, size, mtime in change.touches])
        store.conn.executemany("INSERT OR REPLACE INTO failures VALUES (?,?,?,?,?)",
                               [(f["path"], f["size"], f["mtime_ns"], f["reason"], now) for f in change.failures])
        store.conn.executemany("DELETE FROM failures WHERE path=?", [(p,) for p in change.clear_failures])
        store.set_state(version=version + 1, next_id=int(sid), embed_dim=dim, faiss_file=faiss_name,
                        faiss_bytes=faiss_bytes, index=index_info, updated=now)
        failpoint("before_commit")
    failpoint("after_commit")
    return CommitResult(version + 1, len(change.adds), len(change.removes), len(new_ids), len(removed_ids),
                        n_after, index_info)


def _update_faiss(store, st, version, dim, removed_ids, new_ids, new_vecs, new_groups, n_before, n_after):
    """Patch the current FAISS index in place when its type still fits the new size, else rebuild; write v+1."""
    if n_after == 0:
        return {"kind": None, "n": 0}, None, None
    t0 = time.perf_counter()
    budget = int(st.get("memory_budget") or ann.DEFAULT_MEMORY_BUDGET)
    target = float(st.get("target_recall") or ann.TARGET_RECALL)
    spec = ann.choose_index(n_after, dim, budget)
    old_info = st.get("index") or {}
    current = None
    if st.get("faiss_file"):
        current = ann.read_index(str(store.dir / FAISS_DIR / st["faiss_file"]), st.get("faiss_bytes"))
        if current.ntotal != n_before:
            raise IndexCorruptError(f"FAISS index {st['faiss_file']} holds {current.ntotal} vectors but the "
                                    f"metadata lists {n_before} segments; nothing was changed")
    changed = int(old_info.get("changed_since_tuning", 0)) + len(removed_ids) + len(new_ids)
    small_change = changed <= RETUNE_FRACTION * max(int(old_info.get("tuned_at_n", 0)), 1)
    if current is not None and ann.spec_of(current) == spec and (spec.kind == "flat" or small_change):
        # patch in place: the trained lists still fit and the measured nprobe still holds
        index, rebuilt = current, False
        ann.remove_ids(index, removed_ids)
        ann.add_vectors(index, new_vecs, new_ids)
        tuning = {k: old_info.get(k) for k in ("nprobe", "recall_at_10", "recall_lower_95", "exact",
                                               "target_recall", "recall_queries", "recall_excludes",
                                               "recall_queries_held_out", "nprobe_sweep", "tuned_at_n")}
        tuning["changed_since_tuning"] = 0 if spec.kind == "flat" else changed
        ann.set_nprobe(index, tuning.get("nprobe"))
    else:
        # new type, or enough new data that the centroids and nprobe should be fitted again: rebuild, re-measure
        ids, vecs, files = store.live_embeddings()
        keep = ~np.isin(ids, removed_ids)
        ids = np.concatenate([ids[keep], new_ids])
        vecs = np.concatenate([vecs[keep].reshape(-1, dim), new_vecs.astype(np.float16)])
        groups = np.concatenate([files[keep], new_groups])
        index, rebuilt = ann.build_index(spec, vecs, ids), True
        tuning = ann.tune(index, spec, vecs, ids, target, groups=groups,
                          train_rows=ann.training_rows(len(ids), spec))
        tuning["changed_since_tuning"] = 0
    name = f"v{version + 1:06d}.faiss"
    size = ann.write_index(index, str(store.dir / FAISS_DIR / name))
    failpoint("after_faiss_write")
    info = {"kind": spec.kind, "factory": spec.factory(), "spec": asdict(spec), "n": int(index.ntotal),
            "dim": dim, "bytes": size, "memory_budget": budget, "rebuilt": rebuilt,
            "update_seconds": round(time.perf_counter() - t0, 3), **tuning}
    return info, name, size


def collect_garbage(store: IndexStore) -> None:
    """Delete what no committed version or remaining checkpoint references. Caller holds the exclusive lock."""
    st = store.state()
    for f in (store.dir / FAISS_DIR).glob("*"):
        if f.name != st.get("faiss_file"):
            f.unlink(missing_ok=True)
    keep = {r[0] for r in store.conn.execute("SELECT DISTINCT shard FROM segments")}
    keep |= read_parts(store.dir, with_segments=False).shards
    for f in (store.dir / SHARDS_DIR).glob("*"):
        if f.name not in keep:
            f.unlink(missing_ok=True)


def merge(index_dir: str | os.PathLike) -> CommitResult:
    """Commit every checkpointed part into the index, then delete the parts."""
    with WriterLock(index_dir, exclusive=True):
        store = IndexStore.open(index_dir)
        try:
            model = store.state()["model_id"]
            parts = read_parts(index_dir, model_id=model)
            change = _change_from_parts(store, parts)
            result = commit(store, change)
            for d in parts.dirs + parts.stale:
                shutil.rmtree(d, ignore_errors=True)
            failpoint("after_parts_removed")
            collect_garbage(store)
            return result
        finally:
            store.close()


def _change_from_parts(store: IndexStore, parts) -> Change:
    change = Change()
    files = store.files()
    by_path = {os.path.join(*key): row for key, row in files.items()}
    for key, pf in sorted(parts.files.items()):
        main = files.get(key)
        path = os.path.join(*key)
        change.clear_failures.append(path)
        if main is not None and (pf.row["unchanged"] or main["hash"] == pf.row["hash"]):
            # same bytes (a touched file, or a part replayed after a crash that followed its commit)
            if (main["size"], main["mtime_ns"]) != (pf.row["size"], pf.row["mtime_ns"]):
                change.touches.append((main["id"], pf.row["size"], pf.row["mtime_ns"]))
        elif not pf.row["unchanged"]:
            change.adds.append(pf)
    for path, fail in sorted(parts.failures.items()):
        change.failures.append(fail)
        main = by_path.get(path)
        if main is not None and (main["size"], main["mtime_ns"]) != (fail["size"], fail["mtime_ns"]):
            change.removes.append(main["id"])  # the indexed bytes are gone; what replaced them is unreadable
    change.clear_failures = [p for p in change.clear_failures if p not in parts.failures]
    return change


def remove(index_dir: str | os.PathLike, paths: list[str] = (),
           missing: bool = False) -> tuple[CommitResult, list[str]]:
    """Drop files (or whole folders) given by path, and with `missing` every indexed file no longer on disk.
    Returns the commit result and the given paths that matched nothing."""
    with WriterLock(index_dir, exclusive=True):
        store = IndexStore.open(index_dir)
        try:
            targets = [Path(p) for p in paths]
            unmatched = set(paths)
            change = Change()
            roots = list(store.roots().values())
            for key, row in store.files().items():
                path = os.path.join(*key)
                hit = missing and not os.path.exists(path)
                for given, p in zip(paths, targets):
                    if _matches(path, p, roots, key[0]):
                        hit = True
                        unmatched.discard(given)
                if hit:
                    change.removes.append(row["id"])
            for path in store.failures():
                if (missing and not os.path.exists(path)) or any(_matches(path, p, roots, None) for p in targets):
                    change.clear_failures.append(path)
            result = commit(store, change)
            collect_garbage(store)
            return result, sorted(unmatched)
        finally:
            store.close()


def _matches(path: str, given: Path, roots: list[str], root: str | None) -> bool:
    """`given` names `path` itself or a folder above it: absolute, relative to cwd, or relative to its root."""
    candidates = {os.path.abspath(given)}
    if not given.is_absolute():
        candidates |= {os.path.abspath(os.path.join(r, given)) for r in ([root] if root else roots)}
    return any(path == c or path.startswith(c.rstrip(os.sep) + os.sep) for c in candidates)
