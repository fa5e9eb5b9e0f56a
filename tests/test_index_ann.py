"""FAISS layer: index-type rule, exact search, measured recall and tuning, in-place updates through commit."""
from __future__ import annotations

import numpy as np
import pytest
from test_index_support import index_contents

from index import ann
from index.store import IndexStore, save_npy, transaction
from index.update import Change, commit
from index.writer import PartFile


def clustered(n, d, clusters=64, spread=0.35, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, d))
    x = centres[rng.integers(0, clusters, n)] + spread * rng.normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_choose_index_rule():
    assert ann.choose_index(10_000, 512) == ann.IndexSpec("flat")
    assert ann.choose_index(65_536, 512) == ann.IndexSpec("flat")                 # 2**25 values: still exact
    assert ann.choose_index(100_000, 512) == ann.IndexSpec("ivf_fp16", 256)
    assert ann.choose_index(1_000_000, 512) == ann.IndexSpec("ivf_fp16", 1024)
    assert ann.choose_index(1_000_000, 512, memory_budget=512 << 20) == ann.IndexSpec("ivf_sq8", 1024)
    assert ann.choose_index(1_000_000, 512, memory_budget=100 << 20) == ann.IndexSpec("ivf_pq", 1024, 64)
    assert ann.choose_index(1_000_000, 512, memory_budget=30 << 20) == ann.IndexSpec("ivf_pq", 1024, 16)
    assert ann.choose_index(500, 8, flat_max_elements=0) == ann.IndexSpec("flat")  # too few to train IVF
    assert ann.ivf_nlist(4_000_000) == 2048 and ann.ivf_nlist(1000) == 16


def test_flat_index_is_exact_on_random_vectors():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3000, 48)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ids = rng.permutation(10_000)[:3000].astype(np.int64)
    index = ann.build_index(ann.IndexSpec("flat"), x.astype(np.float16), ids)
    q = rng.normal(size=(20, 48)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    _, got = index.search(q, 10)
    _, rows = ann.exact_knn(q, x.astype(np.float16), 10)
    assert (got == ids[rows]).all()
    assert ann.measure_recall(index, x, ids) == 1.0


def test_recall_counts_ties_as_found():
    x = np.repeat(np.eye(16, dtype=np.float32), 30, axis=0)  # 30 identical copies of each vector
    ids = np.arange(len(x), dtype=np.int64)
    index = ann.build_index(ann.IndexSpec("flat"), x, ids)
    assert ann.measure_recall(index, x, ids) == 1.0


def test_tuned_ivf_reaches_target_and_generalises():
    x = clustered(20_000, 32)
    ids = np.arange(20_000, dtype=np.int64) * 7
    spec = ann.choose_index(len(x), 32, flat_max_elements=0)
    assert spec.kind == "ivf_fp16"
    index = ann.build_index(spec, x, ids)
    info = ann.tune(index, spec, x, ids, target=0.95, groups=ids // 4, train_rows=ann.training_rows(len(x), spec))
    assert info["recall_lower_95"] >= 0.95 and info["recall_at_10"] > info["recall_lower_95"]
    assert info["recall_queries_held_out"] and info["recall_excludes"] == "same file"
    assert info["nprobe"] < spec.nlist
    assert ann.spec_of(index) == spec
    # fresh queries near (not equal to) stored vectors: recall holds at the tuned nprobe
    rng = np.random.default_rng(5)
    q = x[rng.choice(len(x), 200)] + 0.05 * rng.normal(size=(200, 32)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    _, got = index.search(q, 10)
    _, rows = ann.exact_knn(q, x, 10)
    overlap = np.mean([len(set(g) & set(ids[r])) / 10 for g, r in zip(got, rows)])
    assert overlap >= 0.9


@pytest.mark.parametrize("kind", ["ivf_flat", "ivf_sq8"])
def test_other_ivf_codes_recall_measured(kind):
    x = clustered(8_000, 32, seed=3)
    ids = np.arange(8_000, dtype=np.int64)
    spec = ann.IndexSpec(kind, 64)
    index = ann.build_index(spec, x, ids)
    info = ann.tune(index, spec, x, ids, target=0.9, groups=ids // 4)
    assert info["recall_at_10"] >= 0.9 and ann.spec_of(index) == spec and info["recall_excludes"] == "same file"


def test_index_io_errors(tmp_path):
    from index.errors import IndexCorruptError

    index = ann.build_index(ann.IndexSpec("flat"), np.eye(4, dtype=np.float32), np.arange(4))
    path = tmp_path / "a.faiss"
    size = ann.write_index(index, str(path))
    assert ann.read_index(str(path), size).ntotal == 4
    with pytest.raises(IndexCorruptError, match="expected"):
        ann.read_index(str(path), size + 1)
    path.write_bytes(b"\0" * size)
    with pytest.raises(IndexCorruptError, match="cannot read"):
        ann.read_index(str(path), size)
    with pytest.raises(IndexCorruptError, match="missing"):
        ann.read_index(str(tmp_path / "nope.faiss"))


def _synthetic_files(store_dir, vectors, per_file, start=0, root="/lib"):
    """PartFiles whose segments point at a shard holding `vectors` (as an ingest run would leave them)."""
    name = f"synthetic{start}.npy"
    save_npy(vectors.astype(np.float16), str(store_dir / "shards" / name))
    files = []
    for f in range(len(vectors) // per_file):
        row = {"size": 1, "mtime_ns": 1, "hash": f"h{start + f}", "duration": per_file * 2.0, "fps": 25.0,
               "width": 64, "height": 48, "unchanged": 0}
        segs = [(2.0 * s, 2.0 * s + 2, name, f * per_file + s) for s in range(per_file)]
        files.append(PartFile(root, f"v{start + f:05d}.mp4", row, segs))
    return files


def test_commit_builds_ivf_then_patches_it_in_place(tmp_path, monkeypatch):
    monkeypatch.setattr(ann, "FLAT_MAX_ELEMENTS", 0)  # force IVF at test sizes
    store = IndexStore.open(tmp_path / "idx", create=True)
    with transaction(store.conn):
        store.set_state(model_id="synthetic", target_recall=0.95)
    x = clustered(4000, 16, seed=2)
    result = commit(store, Change(adds=_synthetic_files(store.dir, x[:3600], per_file=4)))
    assert result.index["kind"] == "ivf_fp16" and result.index["rebuilt"]
    assert result.index["recall_at_10"] >= 0.95
    first = result.index

    files = store.files()
    gone = [files[("/lib", f"v{i:05d}.mp4")]["id"] for i in range(5)]
    result = commit(store, Change(adds=_synthetic_files(store.dir, x[3600:3640], per_file=4, start=900),
                                  removes=gone))
    assert not result.index["rebuilt"]
    assert result.index["spec"] == first["spec"] and result.segments_total == 3600 - 20 + 40
    assert result.index["changed_since_tuning"] == 60   # small change: tuning kept
    store.close()
    rows = index_contents(tmp_path / "idx")
    assert len(rows) == 3620 and ("v00000.mp4", 0.0, 2.0) not in rows

    store = IndexStore.open(tmp_path / "idx")
    result = commit(store, Change(adds=_synthetic_files(store.dir, x[3640:4000], per_file=4, start=1000)))
    assert result.index["rebuilt"] and result.index["changed_since_tuning"] == 0  # >10% new: refit, re-measure
    assert result.index["recall_lower_95"] >= 0.95
    store.close()
    assert len(index_contents(tmp_path / "idx")) == 3980
