"""The live call timeline (issue 13): lanes per machine, a bar per call, widths by duration, failures red,
in-flight calls growing, refreshed in place; in headless Chromium, with and without JavaScript."""

from __future__ import annotations

import concurrent.futures
import time

import httpx
import pytest
from browser import Browser
from debug_support import ARTIFACTS, Cluster

from bigmachine.rpc import trace as calltrace
from bigmachine.web.timeline import FAILED, render

pytestmark = pytest.mark.timeout(120)

DURATIONS = (0.3, 0.6, 1.2)

BARS = """
  Array.from(document.querySelectorAll("svg.timeline g.lane")).map(function (lane) {
    return [lane.getAttribute("data-machine"), Array.from(lane.querySelectorAll("rect.call")).map(function (r) {
      return [r.getAttribute("data-method"), r.getBoundingClientRect().width, r.getAttribute("class"),
              r.getAttribute("fill")];
    })];
  })
"""


def _calls_of_known_durations(cluster: Cluster) -> concurrent.futures.Future[float]:
    """Sleeps of DURATIONS on the first machine, one failure on the second, and a long call left running."""
    first, second = cluster.machines
    for seconds in DURATIONS:
        first.call("Busy.sleep", seconds)
    with pytest.raises(ValueError):
        second.call("Busy.fail")
    return second.submit("Busy.sleep", 8.0)


def test_timeline_in_chromium_shows_lanes_bars_and_refreshes(cluster: Cluster) -> None:
    running = _calls_of_known_durations(cluster)
    try:
        with Browser(width=1400) as browser:
            browser.open(cluster.base + "/status")
            lanes = dict(browser.run(BARS))
            assert set(lanes) == {cluster.key(m) for m in cluster.machines}
            sleeps = [b for b in lanes[cluster.key(cluster.machines[0])] if b[0] == "Busy.sleep"]
            assert len(sleeps) == len(DURATIONS)
            widths = [b[1] for b in sleeps]  # oldest first, as the calls were made
            for width, seconds in zip(widths[1:], DURATIONS[1:]):
                assert width / widths[0] == pytest.approx(seconds / DURATIONS[0], rel=0.3), widths
            second = lanes[cluster.key(cluster.machines[1])]
            assert [b[3] for b in second if b[0] == "Busy.fail"] == [FAILED]
            (growing,) = [b for b in second if "running" in b[2]]
            now = browser.run("+document.querySelector('svg.timeline').getAttribute('data-now')")
            time.sleep(1.6)  # the page fetches the timeline again every second
            later = browser.run("+document.querySelector('svg.timeline').getAttribute('data-now')")
            assert later > now, "the timeline did not refresh in place"
            again = [b for b in dict(browser.run(BARS))[cluster.key(cluster.machines[1])] if "running" in b[2]]
            assert again and again[0][1] > growing[1], "an in-flight call's bar should grow"
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            browser.screenshot(ARTIFACTS / "debug-status-timeline.png")
            browser.open(f"{cluster.base}/machine/{cluster.key(cluster.machines[0])}")
            (lane,) = browser.run(BARS)
            assert lane[0] == cluster.key(cluster.machines[0]) and len(lane[1]) >= len(DURATIONS)
            browser.screenshot(ARTIFACTS / "debug-machine-timeline.png")
    finally:
        running.cancel()  # the long call has been seen in flight: the machine need not sleep it out
    for name in ("debug-status-timeline.png", "debug-machine-timeline.png"):
        assert (ARTIFACTS / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_timeline_is_a_picture_without_javascript(cluster: Cluster, http: httpx.Client) -> None:
    cluster.machines[0].call("Busy.sleep", 0.1)
    with Browser("--blink-settings=scriptEnabled=false") as browser:
        browser.open(cluster.base + "/status")
        assert browser.run("document.querySelectorAll('svg.timeline g.lane').length") == 2
        assert browser.run("document.querySelectorAll('svg.timeline rect.call').length") >= 1
    svg = http.get(cluster.base + "/timeline", params={"machine": cluster.key(cluster.machines[0])})
    assert svg.status_code == 200 and svg.headers["content-type"].startswith("image/svg+xml")
    assert svg.text.count('<g class="lane"') == 1


def test_render_places_bars_by_time_and_leaves_supervisor_calls_out() -> None:
    now = 1000.0
    calls = [[now - 30, now - 15, "S.a", False], [now - 10, None, "S.b", False], [now - 5, now - 4, "S.c", True],
             [now - 2, now - 1, "Supervisor.keepalive", False], [now - 100, now - 90, "S.old", False]]
    svg = str(render([("m:1", calls)], now=now, seconds=60, width=1198))
    assert svg.count('class="call') == 3
    assert 'data-method="S.a"' in svg and "Supervisor" not in svg and "S.old" not in svg
    assert 'class="call running"' in svg and f'fill="{FAILED}"' in svg
    # 1000 px of plot for 60 s: the 15 s call is 250 px wide.
    assert 'width="250.0"' in svg


def test_call_records_are_a_bounded_ring() -> None:
    class Fake:
        pass

    machine = Fake()
    for i in range(calltrace.RING + 10):
        calltrace.record(machine, f"S.m{i}")[1] = time.time()
    kept = calltrace.calls(machine)
    assert len(kept) == calltrace.RING and kept[-1][2] == f"S.m{calltrace.RING + 9}"
