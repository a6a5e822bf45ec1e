"""A headless Chromium driven over the DevTools protocol: open a page, run a script in it, screenshot.

Plain module (test files import it). Chromium is started on loopback with a profile
in a temp dir and killed by its PID when the ``with`` block ends.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import re
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
from debug_support import tool
from websockets.sync.client import ClientConnection, connect

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0")


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


class Browser:
    """One headless Chromium with one page; ``extra`` flags such as ``--host-resolver-rules``."""

    def __init__(self, *extra: str, width: int = 1280, height: int = 900) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="bm-chromium-")
        self._process = subprocess.Popen(
            [tool("chromium", "chromium"), *FLAGS, f"--user-data-dir={self._dir.name}",
             f"--window-size={width},{height}", *extra, "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
        self._ids = itertools.count(1)
        self._ws: ClientConnection | None = None
        self._stack = contextlib.ExitStack()
        try:
            self._ws = self._stack.enter_context(connect(self._page_socket(), max_size=64 * 2**20, open_timeout=20))
        except BaseException:
            self.close()
            raise

    def _page_socket(self) -> str:
        assert self._process.stderr is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = self._process.stderr.readline()
            found = re.search(r"DevTools listening on ws://([\d.]+:\d+)/", line)
            if found:
                break
        else:
            raise RuntimeError("chromium did not start its DevTools server")
        for _ in range(100):
            pages = [t for t in httpx.get(f"http://{found[1]}/json/list").json() if t["type"] == "page"]
            if pages:
                return str(pages[0]["webSocketDebuggerUrl"])
            time.sleep(0.05)
        raise RuntimeError("chromium has no page")

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        """One DevTools command; its result (events in between are skipped)."""
        assert self._ws is not None
        ident = next(self._ids)
        self._ws.send(json.dumps({"id": ident, "method": method, "params": params}))
        while True:
            message = json.loads(self._ws.recv(timeout=60))
            if message.get("id") == ident:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return dict(message.get("result", {}))

    def open(self, url: str, settle: float = 0.3) -> None:
        """Navigates and waits until the page has loaded."""
        self.send("Page.navigate", url=url)
        deadline = time.monotonic() + 30
        while self.run("document.readyState") != "complete" and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(settle)

    def size(self, width: int, height: int = 900) -> None:
        self.send("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)

    def run(self, script: str) -> Any:
        """The value of a JavaScript expression in the page (promises awaited)."""
        result = self.send("Runtime.evaluate", expression=script, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def screenshot(self, path: Path) -> None:
        """A PNG of the whole page."""
        shot = self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        path.write_bytes(base64.b64decode(shot["data"]))

    def close(self) -> None:
        self._stack.close()
        os.killpg(self._process.pid, signal.SIGKILL)  # chromium and its helpers: the group it leads
        self._process.wait(10)
        assert self._process.stderr is not None
        self._process.stderr.close()
        deadline = time.monotonic() + 10
        while _group_alive(self._process.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        self._dir.cleanup()

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
