"""The pages in a real browser: headless Chromium screenshots (kept in tests/artifacts/) and the rendered DOM."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import httpx
import pytest
from debug_support import ARTIFACTS, Cluster, tool

pytestmark = pytest.mark.timeout(120)

TEMPLATE_ERRORS = ("Traceback", "UndefinedError", "{{", "{%", "Internal Server Error")


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    chromium = tool("chromium", "chromium")
    profile = tmp_path / "chromium-profile"
    command = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--disable-dev-shm-usage", f"--user-data-dir={profile}", *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def _screenshot(tmp_path: Path, url: str, name: str, height: int) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    path.unlink(missing_ok=True)
    _chromium(tmp_path, f"--screenshot={path}", f"--window-size=1400,{height}", "--hide-scrollbars", url)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 20_000  # a rendered page, not a blank one
    return path


def _dom(tmp_path: Path, url: str) -> str:
    return _chromium(tmp_path, "--dump-dom", url).stdout


def test_status_page_in_chromium(cluster: Cluster, http: httpx.Client, tmp_path: Path) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not all(m.keepalive_reply_times() for m in cluster.machines):
        time.sleep(0.1)  # a keepalive history to chart
    for seconds in (0.1, 0.3, 0.2):  # points for the CPU sparklines
        http.get(cluster.base + "/status")
        cluster.machines[1].call("Busy.burn", seconds)
    url = cluster.base + "/status"
    _screenshot(tmp_path, url, "debug-status.png", 900)
    dom = _dom(tmp_path, url)
    assert dom.count('<tr class="machine"') == 2
    for machine in cluster.machines:
        assert cluster.key(machine) in dom
    assert dom.count('<svg class="spark') >= 4
    assert not [e for e in TEMPLATE_ERRORS if e in dom]


def test_machine_page_in_chromium(cluster: Cluster, tmp_path: Path) -> None:
    machine = cluster.machines[0]
    url = f"{cluster.base}/machine/{cluster.key(machine)}"
    _screenshot(tmp_path, url, "debug-machine.png", 1700)
    dom = _dom(tmp_path, url)
    assert machine.addr in dom and "RUNNING" in dom
    for section in ("Calls served by this machine", "Calls from the driver", "Expvars", "Recent output", "Profiles"):
        assert f"<h2>{section}</h2>" in dom
    assert "debug test service ready" in dom
    assert not [e for e in TEMPLATE_ERRORS if e in dom]


def test_profile_pages_in_chromium(cluster: Cluster, tmp_path: Path) -> None:
    _screenshot(tmp_path, cluster.base + "/pprof/", "debug-pprof.png", 900)
    future = cluster.machines[0].submit("Busy.burn", 1.5)
    try:
        url = cluster.base + "/pprof/flame?seconds=0.5"
        _screenshot(tmp_path, url, "debug-flame.png", 700)
    finally:
        future.result()
