"""Searcher: ranking and grouping, thresholds, query checks, model checks, live reload, threads, media safety."""
from __future__ import annotations

import os
import threading

import numpy as np
import pytest
from test_index_support import ColorModel, install_fake_loader, make_library, model_dir, write_color_video

from index import ingest
from index.errors import IndexMissingError, ModelMismatchError
from index.searcher import MAX_QUERY_CHARS, Hit, Searcher


@pytest.fixture
def built(tmp_path):
    lib = tmp_path / "lib"
    make_library(lib)
    out = tmp_path / "idx"
    ingest.build(lib, out, model=ColorModel(), model_path=str(model_dir(tmp_path)),
                 config=ingest.IngestConfig(segment_seconds=2.0, workers=0, progress=False))
    return lib, out


def test_grouped_and_segment_ranking(built):
    _, out = built
    s = Searcher(out, model=ColorModel())
    hits = s.search("blue", k=10)
    paths = [h.path for h in hits]
    assert len(paths) == len(set(paths)) == 5                    # one hit per video, k larger than the library
    assert set(paths[:2]) == {"sub/blue.mkv", "sub/redblue.mp4"}
    rb = hits[paths.index("sub/redblue.mp4")]
    assert (rb.start, rb.end) == (2.0, 4.0) and [(g.start, g.end) for g in rb.segments] == [(2.0, 4.0), (0.0, 2.0)]
    assert rb.segments[0].score > rb.segments[1].score and rb.score == rb.segments[0].score
    assert [h.rank for h in hits] == [1, 2, 3, 4, 5]
    assert all(a.score >= b.score for a, b in zip(hits, hits[1:]))

    segs = s.search("blue", k=10, group_by_video=False)
    assert len(segs) == 6 and [h.path for h in segs].count("sub/redblue.mp4") == 2
    assert s.search("blue", k=1, group_by_video=False)[0].path in {"sub/blue.mkv", "sub/redblue.mp4"}


def test_threshold_and_k(built):
    _, out = built
    s = Searcher(out, model=ColorModel())
    strong = s.search("yellow", k=10, threshold=0.4)
    assert [h.path for h in strong][0] == "yellow.mov" and all(h.score >= 0.4 for h in strong)
    assert all(g.score >= 0.4 for h in strong for g in h.segments)
    assert len(strong) < 5
    assert s.search("yellow", k=10, threshold=1.5) == []
    assert len(s.search("yellow", k=2)) == 2
    with pytest.raises(ValueError):
        s.search("yellow", k=0)


def test_query_validation_and_truncation(built, monkeypatch):
    _, out = built
    s = Searcher(out, model=ColorModel())
    for bad in ["", "   \n\t", None]:
        with pytest.raises(ValueError, match="empty query"):
            s.search(bad)
    seen = []
    real = s.embedder.encode_text
    monkeypatch.setattr(s.embedder, "encode_text", lambda texts: seen.extend(texts) or real(texts))
    hits = s.search("red " * 5000)
    assert len(seen[0]) == MAX_QUERY_CHARS and hits[0].path in {"red.mp4", "sub/redblue.mp4"}


def test_search_batch_and_vectors(built):
    _, out = built
    s = Searcher(out, model=ColorModel())
    red, green = s.search_batch(["red", "green"], k=1)
    assert red[0].path in {"red.mp4", "sub/redblue.mp4"} and green[0].path == "green.webm"
    q = s.encode(["green"])
    assert q.shape == (1, 8) and np.isclose(np.linalg.norm(q), 1.0)
    assert s.search_vectors(q, k=1)[0][0].path == "green.webm"
    d = green[0].to_dict()
    assert d["abs_path"].endswith("green.webm") and d["segments"][0]["score"] == d["score"]


def test_model_loaded_from_index_and_checked(built, monkeypatch):
    _, out = built
    install_fake_loader(monkeypatch)
    s = Searcher(out)  # the index records .../color-v1 -> ColorModel("v1")
    assert s.search("green", k=1)[0].path == "green.webm"
    assert s.info()["model_id"] == "color-v1"
    import retrieval
    monkeypatch.setattr(retrieval, "load_model", lambda path, device="cpu": ColorModel("retrained"))
    with pytest.raises(ModelMismatchError, match="color-v1.*color-retrained"):
        Searcher(out)
    with pytest.raises(IndexMissingError):
        Searcher(out.parent / "no-index", model=ColorModel())


def test_running_searcher_sees_updates(built):
    lib, out = built
    s = Searcher(out, model=ColorModel())
    v = s.info()["version"]
    assert s.search("cyan", k=1)[0].path != "cyan.mp4"
    write_color_video(lib / "cyan.mp4", "cyan")
    ingest.add(out, lib, model=ColorModel(), config=ingest.IngestConfig(workers=0, progress=False))
    assert s.search("cyan", k=1)[0].path == "cyan.mp4"
    assert s.info()["version"] == v + 1 and s.info()["segments"] == 7


def test_concurrent_searches_during_updates(built):
    lib, out = built
    s = Searcher(out, model=ColorModel())
    errors, results = [], []
    stop = threading.Event()

    def searcher_thread(query):
        try:
            while not stop.is_set():
                hits = s.search(query, k=3)
                results.append((query, hits[0].path))
                assert len({h.path for h in hits}) == len(hits)
        except Exception as e:  # noqa: BLE001 - collected and asserted below
            errors.append(e)

    threads = [threading.Thread(target=searcher_thread, args=(q,)) for q in ("green", "yellow", "blue", "green")]
    for t in threads:
        t.start()
    cfg = ingest.IngestConfig(workers=0, progress=False)
    for i, colour in enumerate(["cyan", "magenta"]):
        write_color_video(lib / f"more{i}.mp4", colour)
        ingest.add(out, lib, model=ColorModel(), config=cfg)
    from index.update import remove
    remove(out, ["more0.mp4"])
    stop.set()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(results) > 10
    assert {p for q, p in results if q == "green"} == {"green.webm"}
    assert s.info()["version"] == 4 and s.info()["segments"] == 7


def test_media_paths_stay_inside_the_library(built, tmp_path):
    lib, out = built
    s = Searcher(out, model=ColorModel())
    hit = s.search("red", k=1)[0]
    assert s.media_path(hit) == os.path.join(str(lib.resolve()), hit.path)
    jpeg = s.thumbnail(hit, width=32)
    assert jpeg[:2] == b"\xff\xd8" and s.thumbnail(hit, width=32) is jpeg  # cached
    outside = write_color_video(tmp_path / "secret" / "s.mp4", "red")
    os.symlink(outside, lib / "escape.mp4")
    for root, path in [(hit.root, "../secret/s.mp4"), (hit.root, str(outside)), (hit.root, "escape.mp4"),
                       (str(tmp_path / "secret"), "s.mp4"), (hit.root, "")]:
        with pytest.raises(ValueError):
            s.media_path(Hit(1, path, root, 0.0, 1.0, 1.0))


def test_cli_table_words_more_segments_and_fits_80_columns(built, monkeypatch, capsys, tmp_path):
    from app.cli import main

    lib, out = built
    install_fake_loader(monkeypatch)
    long_name = lib / ("a-very-long-folder-name-" * 4) / "blue-and-then-some-more-blue.mp4"
    write_color_video(long_name, "blue")
    ingest.add(out, lib, model=ColorModel(), config=ingest.IngestConfig(workers=0, progress=False))
    assert main(["search", "--index", str(out), "blue", "-k", "3"]) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    assert lines[0].split() == ["rank", "score", "video", "segment"]
    assert "+1 more segment of this video (--all-segments lists them)" in text and "more)" not in text
    assert "...long-folder-name-/blue-and-then-some-more-blue.mp4" in text and "score: cosine similarity" in text
    assert max(len(line) for line in lines) <= 80
    assert main(["search", "--index", str(out), "blue", "-k", "3", "--all-segments"]) == 0
    text = capsys.readouterr().out
    assert "more segment" not in text and "same video" in text and "0:00-0:02" in text
    assert main(["search", "--index", str(out), "blue", "--json"]) == 0
    assert capsys.readouterr().out.lstrip().startswith("[")


def test_search_help_says_what_a_score_is(capsys):
    from app.cli import main

    with pytest.raises(SystemExit):
        main(["search", "--help"])
    assert "cosine similarity" in capsys.readouterr().out


def test_clip_queries_through_the_searcher(built):
    from index.errors import QueryVideoError

    lib, out = built
    s = Searcher(out, model=ColorModel())
    hits = s.search_video(lib / "sub" / "blue.mkv", k=2)      # its own segment left out
    assert hits[0].path == "sub/redblue.mp4" and (hits[0].start, hits[0].end) == (2.0, 4.0)
    assert all(h.path != "sub/blue.mkv" for h in hits)
    hits = s.search_video(lib / "sub" / "redblue.mp4", 0.0, 2.0, k=5, group_by_video=False)
    assert (hits[0].path, hits[0].start) == ("red.mp4", 0.0)      # the red half's neighbour, not itself
    assert any((h.path, h.start) == ("sub/redblue.mp4", 2.0) for h in hits)  # its other half is a fair answer
    seg = s.search("green", k=1)[0].segments[0].id
    assert all(h.segments[0].id != seg for h in s.search_segment(seg, k=5, group_by_video=False))
    for args, message in [((lib / "nope.mp4",), "no such file"), ((lib / "notes.txt",), "cannot be decoded"),
                          ((lib / "red.mp4", 0.5, 9.0), "outside the video"), ((lib / "red.mp4", 0.5, None), "both")]:
        with pytest.raises(QueryVideoError, match=message):
            s.search_video(*args)
    with pytest.raises(QueryVideoError, match="not in the index"):
        s.search_segment(10 ** 9)
