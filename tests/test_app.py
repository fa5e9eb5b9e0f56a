"""The Gradio app for real: `vmr app` in a subprocess, driven by gradio_client, raw HTTP and headless Chromium."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from test_index_support import ColorModel, make_library, model_dir, write_color_video

from index import ingest

ROOT = Path(__file__).resolve().parents[1]
SUPPORT = Path(__file__).with_name("test_index_support.py")


def _screenshot_module():
    spec = importlib.util.spec_from_file_location("screenshot_app", ROOT / "scripts" / "screenshot_app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def serve_app(entry: list[str], index: Path, timeout: float) -> tuple[subprocess.Popen, str]:
    """`python ENTRY... app --index INDEX` on a free port, once it answers HTTP 200: (process, url)."""
    port = _screenshot_module().free_port()
    proc = subprocess.Popen([sys.executable, *entry, "app", "--index", str(index), "--port", str(port)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"vmr app did not come up: {proc.stdout.read()}")
        time.sleep(0.3)


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """A library with an index kept inside it, a secret file outside, a symlink escaping it; `vmr app` serving."""
    tmp = tmp_path_factory.mktemp("app")
    lib = tmp / "lib"
    make_library(lib)
    secret = tmp / "secret.txt"
    secret.write_text("top secret")
    os.symlink(secret, lib / "escape.mp4")
    index_dir = lib / ".vmr-index"
    report = ingest.build(lib, index_dir, model=ColorModel(), model_path=str(model_dir(tmp)),
                          config=ingest.IngestConfig(segment_seconds=2.0, workers=0, progress=False))
    assert [Path(p).name for p, _ in report.failures] == ["escape.mp4"]
    proc, url = serve_app([str(SUPPORT)], index_dir, timeout=90)
    yield {"url": url, "lib": lib.resolve(), "secret": secret, "index": index_dir}
    proc.terminate()
    proc.wait(20)


def test_search_through_gradio_client(app):
    from gradio_client import Client

    client = Client(app["url"], verbose=False)
    html, hits = client.predict("green", 3, -1, True, api_name="/search")
    assert hits[0]["video"] == "green.webm" and len(hits) == 3
    assert "data-path='green.webm'" in html and "#t=0.00,1.00" in html and "data:image/jpeg;base64," in html
    html, hits = client.predict("blue", 10, 0.9, True, api_name="/search")          # threshold
    assert {h["video"] for h in hits} == {"sub/blue.mkv", "sub/redblue.mp4"}
    red_blue = next(h for h in hits if h["video"] == "sub/redblue.mp4")
    assert (red_blue["start"], red_blue["end"]) == (2.0, 4.0)
    html, hits = client.predict("blue", 10, -1, False, api_name="/search")          # segments, not videos
    assert [h["video"] for h in hits].count("sub/redblue.mp4") == 2
    html, hits = client.predict("   ", 5, -1, True, api_name="/search")
    assert hits == [] and "empty query" in html
    info = client.predict(api_name="/info")
    assert info["model_id"] == "color-v1" and info["segments"] == 6 and info["roots"] == [str(app["lib"])]
    assert info["files"] == 5 and info["card"] is None  # the colour model has no card


def test_more_like_this_through_gradio_client(app):
    from gradio_client import Client

    client = Client(app["url"], verbose=False)
    _, hits = client.predict("blue", 1, -1, True, api_name="/search")
    seg = hits[0]["segments"][0]
    html, like = client.predict(f"{seg['id']} {hits[0]['video']} 0:00-0:01", 3, -1, False, api_name="/more_like_this")
    assert seg["id"] not in [h["segments"][0]["id"] for h in like] and len(like) == 3
    assert like[0]["video"] in {"sub/blue.mkv", "sub/redblue.mp4"} and "More like " + hits[0]["video"] in html
    assert "cosine similarity" in html and "vmr-like" in html
    html, like = client.predict("999999 gone", 3, -1, False, api_name="/more_like_this")
    assert like == [] and "not in the index" in html


def test_serves_library_files_only(app):
    base, lib = app["url"] + "gradio_api/file=", app["lib"]
    ok = httpx.get(base + quote(str(lib / "red.mp4")))
    assert ok.status_code == 200 and ok.headers["content-type"] == "video/mp4"
    part = httpx.get(base + quote(str(lib / "red.mp4")), headers={"Range": "bytes=0-99"})
    assert part.status_code == 206 and len(part.content) == 100        # seeking inside a video works
    refused = {
        "dot-dot": base + quote(str(lib)) + "/..%2Fsecret.txt",
        "dot-dot encoded": base + quote(str(lib) + "/../secret.txt", safe=""),
        "absolute outside": base + quote(str(app["secret"])),
        "system file": base + "/etc/passwd",
        "symlink out": base + quote(str(lib / "escape.mp4")),
        "index inside library": base + quote(str(app["index"] / "index.sqlite")),
    }
    for name, url in refused.items():
        r = httpx.get(url)
        assert r.status_code in (403, 404), (name, r.status_code)
        assert b"top secret" not in r.content and b"SQLite" not in r.content, name


def test_binds_loopback_by_default():
    import argparse

    from app.commands import serve

    parser = argparse.ArgumentParser()
    serve.add_arguments(parser)
    assert parser.parse_args(["--index", "x"]).host == "127.0.0.1"


def test_new_library_root_becomes_servable(app, tmp_path):
    """`vmr index add` with another folder: the running app reloads, finds it and may serve it."""
    from gradio_client import Client

    more = tmp_path / "more"
    write_color_video(more / "cyan.mp4", "cyan")
    ingest.add(app["index"], more, model=ColorModel(), config=ingest.IngestConfig(workers=0, progress=False))
    try:
        html, hits = Client(app["url"], verbose=False).predict("cyan", 1, -1, True, api_name="/search")
        assert hits[0]["video"] == "cyan.mp4" and hits[0]["root"] == str(more.resolve())
        assert httpx.get(app["url"] + "gradio_api/file=" + quote(hits[0]["abs_path"])).status_code == 200
    finally:
        from index.update import remove
        remove(app["index"], [str(more)])


@pytest.mark.browser
@pytest.mark.skipif(not (os.path.exists("/usr/bin/chromium") and os.path.exists("/usr/bin/chromedriver")),
                    reason="needs Chromium + chromedriver: apt-get install -y chromium chromium-driver")
def test_browser_types_query_and_sees_the_video(app, tmp_path):
    shots = _screenshot_module()
    with shots.Browser(1200, 900) as browser:
        paths = shots.search_in_browser(browser, app["url"], "green")
        assert paths[0] == "green.webm"
        paths = shots.search_in_browser(browser, app["url"], "blue")
        assert set(paths[:2]) == {"sub/blue.mkv", "sub/redblue.mp4"}
        times = shots.wait_for_media(browser)
        # the red-then-blue video opens at its blue segment (2 s), via the #t= media fragment
        assert times[paths.index("sub/redblue.mp4")] == pytest.approx(2.0, abs=0.3)
        png = browser.screenshot(tmp_path / "app.png")
        assert png.read_bytes()[:4] == b"\x89PNG"
