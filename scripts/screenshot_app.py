"""Screenshot the search app with real results: start it on an index, type a query in headless Chromium, save a PNG.

    python scripts/screenshot_app.py --index lib.idx --query "a dog catches a frisbee" --out docs/app.png

Drives Chromium through chromedriver's W3C WebDriver HTTP API with the standard library only (no selenium);
`apt-get install -y chromium chromium-driver` provides both. The tests reuse `Browser` from here.
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
ELEMENT = "element-6066-11e4-a52e-4f735466cecf"  # W3C WebDriver's key for element references
ENTER = "\ue007"
# Flags that work as root in a container (see docs/environment.md of the project's shared notes).
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--autoplay-policy=no-user-gesture-required"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Browser:
    """Just enough WebDriver: open a page, find elements, type, read attributes, run JS, take screenshots."""

    def __init__(self, width: int = 1280, height: int = 1000, timeout: float = 30.0):
        self.port = free_port()
        self.profile = tempfile.TemporaryDirectory(prefix="vmr-chromium-")
        self.driver = subprocess.Popen([CHROMEDRIVER, f"--port={self.port}"], stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL)
        self.base = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self._call("GET", "/status")["ready"]:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.close()
                raise RuntimeError("chromedriver did not start")
            time.sleep(0.1)
        caps = {"browserName": "chrome", "goog:chromeOptions": {
            "binary": CHROMIUM, "args": FLAGS + [f"--window-size={width},{height}",
                                                 f"--user-data-dir={self.profile.name}"]}}
        self.session = self._call("POST", "/session", {"capabilities": {"alwaysMatch": caps}})["sessionId"]

    def _call(self, method: str, path: str, body: dict | None = None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                return json.loads(resp.read() or b"{}").get("value")
        except urllib.error.HTTPError as e:
            raise RuntimeError(f"WebDriver {method} {path}: {e.read().decode(errors='replace')[:500]}") from None

    def _s(self, method: str, path: str, body: dict | None = None):
        return self._call(method, f"/session/{self.session}{path}", body)

    def open(self, url: str) -> None:
        self._s("POST", "/url", {"url": url})

    def find_all(self, css: str) -> list[str]:
        return [e[ELEMENT] for e in self._s("POST", "/elements", {"using": "css selector", "value": css})]

    def wait_for(self, css: str, timeout: float = 30.0) -> list[str]:
        deadline = time.monotonic() + timeout
        while not (found := self.find_all(css)):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no element matches {css!r} after {timeout}s")
            time.sleep(0.2)
        return found

    def type(self, element: str, text: str) -> None:
        self._s("POST", f"/element/{element}/value", {"text": text})

    def attribute(self, element: str, name: str) -> str | None:
        return self._s("GET", f"/element/{element}/attribute/{name}")

    def run_js(self, script: str, *args):
        return self._s("POST", "/execute/sync", {"script": script, "args": list(args)})

    def screenshot(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(self._s("GET", "/screenshot")))
        return path

    def close(self) -> None:
        try:
            if getattr(self, "session", None):
                self._s("DELETE", "")
        except (OSError, RuntimeError):
            pass
        self.driver.terminate()
        try:
            self.driver.wait(10)
        except subprocess.TimeoutExpired:
            self.driver.kill()
        self.profile.cleanup()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def search_in_browser(browser: Browser, url: str, query: str, timeout: float = 60.0) -> list[str]:
    """Open the app, type `query` + Enter, wait for result cards; returns the cards' video paths in rank order."""
    browser.open(url)
    box = browser.wait_for("#vmr-query textarea, #vmr-query input", timeout)[0]
    browser.type(box, query + ENTER)
    cards = browser.wait_for(".vmr-card[data-path]", timeout)
    return [browser.attribute(c, "data-path") for c in cards]


def card_paths(browser: Browser) -> list[str]:
    return browser.run_js("return [...document.querySelectorAll('.vmr-card[data-path]')].map(c => c.dataset.path);")


def _wait_until(browser: Browser, script: str, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (value := browser.run_js(script)):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} after {timeout}s")
        time.sleep(0.2)
    return value


def click_example(browser: Browser, url: str, index: int = 0, timeout: float = 60.0) -> tuple[str, list[str]]:
    """Open the app, click example `index`; returns (the query box's text, the result cards' paths)."""
    browser.open(url)
    browser.wait_for("#vmr-examples button", timeout)
    browser.run_js("document.querySelectorAll('#vmr-examples button')[arguments[0]].click();", index)
    browser.wait_for(".vmr-card[data-path]", timeout)
    text = browser.run_js("return document.querySelector('#vmr-query textarea, #vmr-query input').value;")
    return text, card_paths(browser)


def more_like_this(browser: Browser, card: int = 0, timeout: float = 60.0) -> tuple[str, list[str]]:
    """Press "More like this" on result card `card`; returns (that card's path, the new cards' paths)."""
    source = card_paths(browser)[card]
    browser.run_js("document.querySelectorAll('.vmr-card .vmr-like')[arguments[0]].click();", card)
    _wait_until(browser, "return document.querySelector('.vmr-title') !== null;", timeout, "no more-like-this results")
    return source, card_paths(browser)


def wait_for_media(browser: Browser, timeout_ms: int = 5000) -> list[float]:
    """Wait until every result video has its current frame (or timeout); returns their currentTime values."""
    return browser.run_js(
        "const vs = [...document.querySelectorAll('.vmr-card video')];"
        "await Promise.all(vs.map(v => v.readyState >= 2 ? 1 : new Promise(r => {"
        f"  v.addEventListener('loadeddata', r); v.addEventListener('error', r); setTimeout(r, {timeout_ms}); }})));"
        "return vs.map(v => v.currentTime);")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", required=True)
    parser.add_argument("--query", required=True)
    parser.add_argument("--out", default="docs/app.png")
    parser.add_argument("--model", default=None, help="model folder (default: the one the index records)")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=1100)
    args = parser.parse_args(argv)

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from app.ui import launch
    from index.searcher import Searcher

    model = None
    if args.model:
        from retrieval import load_model
        model = load_model(args.model)
    searcher = Searcher(args.index, model=model)
    port = free_port()
    demo = launch(searcher, port=port, block=False, quiet=True)
    try:
        with Browser(args.width, args.height) as browser:
            paths = search_in_browser(browser, f"http://127.0.0.1:{port}/", args.query)
            wait_for_media(browser)  # first frames decoded before the shot
            time.sleep(1.5)  # ... and the players' loading spinners faded out
            print(f"{len(paths)} results: {', '.join(paths[:5])}")
            print(browser.screenshot(args.out))
    finally:
        demo.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
