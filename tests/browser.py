"""A headless Chromium driven over the DevTools protocol, for checking the report site as a reader's browser sees it.

Only what the tests need: load a page (``file://`` or ``http://``), wait for every image, list images and link
targets, and take a screenshot. No Selenium or driver binary: Chromium speaks the protocol over a websocket, and
``websocket-client`` is already in the environment.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import http.server
import json
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
VIEWPORT = (1400, 2400)
TIMEOUT_S = 60.0


def find_chromium() -> str | None:
    return next((path for name in CANDIDATES if (path := shutil.which(name))), None)


@dataclass(frozen=True)
class Image:
    src: str
    complete: bool
    natural_width: int

    @property
    def loaded(self) -> bool:
        return self.complete and self.natural_width > 0


@dataclass(frozen=True)
class PageReport:
    """What a loaded page holds: its images (after every one was made to load) and every URL it points at."""

    url: str
    title: str
    images: list[Image]
    links: list[str]  # resolved by the browser: absolute URLs, fragments included
    resources: list[str]  # what the page itself loads: stylesheets, scripts, images, frames
    ids: set[str]  # element ids and anchor names, for checking in-page fragments


# Lazy images load only near the viewport: make each eager, then wait (bounded) for all of them to settle.
_WAIT_IMAGES = """
(async () => {
  const settle = img => img.complete ? Promise.resolve() :
      new Promise(done => { img.addEventListener('load', done); img.addEventListener('error', done); });
  for (const img of document.images) { img.loading = 'eager'; }
  const timeout = new Promise(done => setTimeout(done, 20000));
  await Promise.race([Promise.all([...document.images].map(settle)), timeout]);
  return true;
})()
"""

_COLLECT = """
JSON.stringify({
  title: document.title,
  images: [...document.images].map(i => ({src: i.currentSrc || i.src, complete: i.complete,
                                         natural_width: i.naturalWidth})),
  links: [...document.querySelectorAll('a[href]')].map(a => a.href),
  resources: [...document.querySelectorAll('link[href]')].map(l => l.href)
      .concat([...document.querySelectorAll('script[src], iframe[src]')].map(s => s.src)),
  ids: [...document.querySelectorAll('[id]')].map(e => e.id)
      .concat([...document.querySelectorAll('a[name]')].map(a => a.name)),
})
"""


class DevTools:
    """One page target of a running Chromium: protocol commands answered in order, events kept until asked for."""

    def __init__(self, websocket_url: str) -> None:
        import websocket

        self._ws = websocket.create_connection(websocket_url, timeout=TIMEOUT_S, suppress_origin=True)
        self._next_id = 0
        self._events: list[dict[str, Any]] = []

    def close(self) -> None:
        self._ws.close()

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        self._next_id += 1
        self._ws.send(json.dumps({"id": self._next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self._ws.recv())
            if message.get("id") == self._next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            if "method" in message:
                self._events.append(message)

    def wait_for(self, event: str, timeout: float = TIMEOUT_S) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            for i, message in enumerate(self._events):
                if message["method"] == event:
                    return self._events.pop(i)
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {event} within {timeout} s")
            self._events.append(json.loads(self._ws.recv()))

    def evaluate(self, expression: str) -> Any:
        result = self.send("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"page script failed: {result['exceptionDetails']}")
        return result["result"].get("value")


class Browser:
    """Headless Chromium with the DevTools protocol on a free port, in a throwaway profile."""

    def __init__(self, executable: str) -> None:
        self._profile = tempfile.mkdtemp(prefix="ls-chromium-")
        width, height = VIEWPORT
        args = [
            executable,
            "--headless=new",
            "--no-sandbox",  # CI containers run as root, where Chromium's sandbox refuses to start
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--hide-scrollbars",
            "--remote-debugging-port=0",
            f"--user-data-dir={self._profile}",
            f"--window-size={width},{height}",
            "about:blank",
        ]
        self._process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._port = self._wait_for_port()
        target = next(t for t in self._json("list") if t["type"] == "page")
        self.page = DevTools(target["webSocketDebuggerUrl"])
        self.page.send("Page.enable")
        self.page.send(
            "Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False
        )

    def _wait_for_port(self) -> int:
        # Port 0 lets Chromium pick a free port; it announces the choice in the profile folder.
        announced = Path(self._profile) / "DevToolsActivePort"
        deadline = time.monotonic() + TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"chromium exited with status {self._process.returncode}")
            if announced.is_file() and (lines := announced.read_text().splitlines()):
                return int(lines[0])
            time.sleep(0.1)
        raise TimeoutError("chromium did not open its DevTools port")

    def _json(self, endpoint: str) -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{self._port}/json/{endpoint}", timeout=TIMEOUT_S) as reply:
            return json.loads(reply.read())

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.page.close()
        self._process.terminate()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def load(self, url: str) -> PageReport:
        """Navigate, wait for the load event and then for every image, and report what the page holds."""
        self.page._events.clear()
        reply = self.page.send("Page.navigate", url=url)
        if reply.get("errorText"):
            raise RuntimeError(f"{url}: {reply['errorText']}")
        self.page.wait_for("Page.loadEventFired")
        self.page.evaluate(_WAIT_IMAGES)
        data = json.loads(self.page.evaluate(_COLLECT))
        images = [Image(i["src"], i["complete"], i["natural_width"]) for i in data["images"]]
        return PageReport(url, data["title"], images, data["links"], data["resources"], set(data["ids"]))

    def screenshot(self, target: Path, full_page: bool = False, max_height: int = 16000) -> Path:
        """PNG of the viewport (the top 1400 x 2400), or of the whole page up to ``max_height`` pixels."""
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            size = self.page.send("Page.getLayoutMetrics")["cssContentSize"]
            height = min(int(size["height"]), max_height)
            params |= {"captureBeyondViewport": True, "clip": {"x": 0, "y": 0, "width": VIEWPORT[0], "height": height}}
            params["clip"]["scale"] = 1
        shot = self.page.send("Page.captureScreenshot", **params)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(base64.b64decode(shot["data"]))
        return target


@contextlib.contextmanager
def http_server(directory: Path) -> Iterator[str]:
    """Serve ``directory`` on a free local port in a thread, as ``make serve`` serves the project root."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:  # a test run prints results, not requests
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(directory)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def split_fragment(url: str) -> tuple[str, str]:
    parsed = urllib.parse.urldefrag(url)
    return parsed.url, parsed.fragment


def broken_link(url: str, page: PageReport) -> str | None:
    """Why a link (or resource) of ``page`` does not resolve, or None when it does.

    A ``file://`` target must exist; an ``http://`` one must answer 200; a fragment of the page itself must name an
    element of it. Links off the machine (another host) are not followed: the check runs offline.
    """
    base, fragment = split_fragment(url)
    page_base, _ = split_fragment(page.url)
    if base == page_base:
        return None if not fragment or fragment in page.ids else f"{url}: no element with id {fragment!r}"
    scheme = urllib.parse.urlparse(base).scheme
    if scheme == "file":
        path = Path(urllib.parse.unquote(urllib.parse.urlparse(base).path))
        return None if path.exists() else f"{url}: no such file"
    if scheme in {"http", "https"} and urllib.parse.urlparse(base).hostname == "127.0.0.1":
        try:
            with urllib.request.urlopen(base, timeout=TIMEOUT_S) as reply:
                return None if reply.status == 200 else f"{url}: HTTP {reply.status}"
        except urllib.error.HTTPError as err:
            return f"{url}: HTTP {err.code}"
    return None


def is_local(url: str) -> bool:
    """True for targets on this machine: files, the local test server, in-page data and fragments."""
    parsed = urllib.parse.urlparse(url)
    return parsed.scheme in {"file", "data", "about", "blob"} or parsed.hostname == "127.0.0.1"
