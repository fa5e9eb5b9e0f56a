"""Concurrent search: 1, 4 and 16 parallel clients (threads on a Searcher, and gradio_client on the app) get the
same answers as sequential queries, with no errors; an `index add` committing mid-traffic is seen atomically."""
from __future__ import annotations

import importlib.util
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from test_index_support import COLORS, ColorModel, make_library, model_dir, write_color_video

from index import ingest
from index.searcher import MAX_QUERY_CHARS, Searcher

ROOT = Path(__file__).resolve().parents[1]
QUERIES = [f"a {c} clip" for c in COLORS] + ["red and blue", "something grey", "green then yellow"]
PER_CLIENT = {1: 40, 4: 20, 16: 8}  # queries each client sends (bounded count and time)


def _key(hits) -> list[tuple]:
    return [(h.path, h.start, h.end, round(h.score, 5)) for h in hits]


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("conc")
    lib = tmp / "lib"
    make_library(lib)
    for i, c in enumerate(["magenta", "grey", "cyan", "green"]):
        write_color_video(lib / "more" / f"m{i}.mp4", [c, "red"], 1.0)
    out = tmp / "idx"
    ingest.build(lib, out, model=ColorModel(), model_path=str(model_dir(tmp)),
                 config=ingest.IngestConfig(segment_seconds=1.0, workers=0, progress=False))
    return lib, out


def _stats(lat: list[float]) -> str:
    ms = np.array(lat) * 1000
    return f"n={len(ms)} p50={np.percentile(ms, 50):.1f}ms p99={np.percentile(ms, 99):.1f}ms"


def _hammer(n_clients: int, per_client: int, ask, setup=dict) -> tuple[list, list[float], float]:
    """`n_clients` threads each send `per_client` queries through `ask(setup(), query)`; -> answers, latencies."""
    answers, lat, errors = [], [], []
    lock = threading.Lock()
    barrier = threading.Barrier(n_clients)

    def client(cid: int):
        state = setup()  # connecting is not part of a query's latency
        barrier.wait()
        for j in range(per_client):
            q = QUERIES[(cid + j) % len(QUERIES)]
            t0 = time.perf_counter()
            try:
                a = ask(state, q)
            except Exception as e:  # noqa: BLE001 - collected and reported by the assertion below
                with lock:
                    errors.append(f"{q}: {type(e).__name__}: {e}")
                continue
            dt = time.perf_counter() - t0
            with lock:
                answers.append((q, a))
                lat.append(dt)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(n_clients) as pool:
        list(pool.map(client, range(n_clients)))
    assert not errors, errors[:5]
    return answers, lat, time.perf_counter() - t0


@pytest.mark.parametrize("n_clients", [1, 4, 16])
def test_searcher_from_threads_matches_sequential(library, n_clients):
    _, out = library
    s = Searcher(out, model=ColorModel())
    expected = {q: _key(s.search(q, k=5)) for q in QUERIES}
    answers, lat, wall = _hammer(n_clients, PER_CLIENT[n_clients], lambda st, q: _key(s.search(q, k=5)))
    assert len(answers) == n_clients * PER_CLIENT[n_clients]
    assert all(a == expected[q] for q, a in answers)
    print(f"\nSearcher threads={n_clients}: {_stats(lat)}, {len(lat) / wall:.0f} queries/s")


def test_index_add_while_queries_run(library, tmp_path):
    """Readers during a commit see the old index or the new one, never an error or a mix."""
    import shutil

    lib, out = library
    lib2, out2 = tmp_path / "lib", tmp_path / "idx"
    shutil.copytree(lib, lib2, symlinks=True)
    ingest.build(lib2, out2, model=ColorModel(), model_path=str(model_dir(tmp_path)),
                 config=ingest.IngestConfig(segment_seconds=1.0, workers=0, progress=False))
    s = Searcher(out2, model=ColorModel())
    old = {q: _key(s.search(q, k=5)) for q in QUERIES}
    for i, c in enumerate(["yellow", "blue", "cyan"]):
        write_color_video(lib2 / "new" / f"n{i}.mp4", c, 1.0)

    stop = threading.Event()
    seen, errors = [], []

    def reader():
        mine = Searcher(out2, model=ColorModel())  # each its own Searcher, as separate app processes would be
        j = 0
        while not stop.is_set():
            q = QUERIES[j % len(QUERIES)]
            j += 1
            for searcher in (mine, s):
                try:
                    seen.append((q, _key(searcher.search(q, k=5))))
                except Exception as e:  # noqa: BLE001
                    errors.append(f"{type(e).__name__}: {e}")

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    report = ingest.add(out2, lib2, model=ColorModel(), config=ingest.IngestConfig(workers=0, progress=False))
    time.sleep(0.3)
    stop.set()
    for t in threads:
        t.join(30)
    assert report.encoded == 3 and not errors, errors[:5]
    new = {q: _key(Searcher(out2, model=ColorModel()).search(q, k=5)) for q in QUERIES}
    assert new != old
    assert all(a in (old[q], new[q]) for q, a in seen)
    n_old = sum(a == old[q] != new[q] for q, a in seen)
    n_new = sum(a == new[q] != old[q] for q, a in seen)
    assert n_new > 0, "no query saw the new index"
    print(f"\nindex add under load: {len(seen)} queries, {n_old} saw only-old, {n_new} saw only-new, 0 errors")


def _free_port() -> int:
    spec = importlib.util.spec_from_file_location("screenshot_app", ROOT / "scripts" / "screenshot_app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.free_port()


@pytest.fixture(scope="module")
def app(library):
    pytest.importorskip("gradio")
    pytest.importorskip("gradio_client")
    from app.ui import launch

    _, out = library
    searcher = Searcher(out, model=ColorModel())
    port = _free_port()
    demo = launch(searcher, port=port, block=False, quiet=True)
    yield f"http://127.0.0.1:{port}/", searcher
    demo.close()


@pytest.mark.parametrize("n_clients", [1, 4, 16])
def test_app_parallel_clients_match_sequential(app, n_clients):
    from gradio_client import Client

    url, searcher = app
    expected = {q: [(h.path, h.start, h.end) for h in searcher.search(q, k=5)] for q in QUERIES}

    def ask(client, q):
        _, hits = client.predict(q, 5, -1, True, api_name="/search")
        return [(h["video"], h["start"], h["end"]) for h in hits]

    per = max(2, PER_CLIENT[n_clients] // 4)
    answers, lat, wall = _hammer(n_clients, per, ask, setup=lambda: Client(url, verbose=False))
    assert len(answers) == n_clients * per
    assert all(a == expected[q] for q, a in answers)
    print(f"\napp gradio_client clients={n_clients}: {_stats(lat)}, {len(lat) / wall:.1f} queries/s")


def test_app_caps_query_length(app):
    from gradio_client import Client

    url, searcher = app
    long_query = "red " * 50_000
    _, hits = Client(url, verbose=False).predict(long_query, 3, -1, True, api_name="/search")
    assert [h["video"] for h in hits] == [h.path for h in searcher.search(long_query[:MAX_QUERY_CHARS], k=3)]
