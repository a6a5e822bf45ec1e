"""Resource history is collected from the session's start, whether or not a page is open (issue 13)."""

from __future__ import annotations

import time

import httpx
import pytest
from services import LongNames
from debug_support import start_driver

import bigmachine
from bigmachine import RUNNING
from bigmachine.web.history import PERIOD, WINDOW, History

pytestmark = pytest.mark.timeout(90)


def test_history_grows_with_no_page_open(monkeypatch: pytest.MonkeyPatch) -> None:
    period = 1.0  # the sampler's schedule, shortened from PERIOD (5 s) so the test waits 3 s, not 12.5
    monkeypatch.setattr("bigmachine.web.context.History", lambda: History(period=period))
    with start_driver("testing") as b:
        (machine,) = b.start(1, bigmachine.Services(LongNames=LongNames()))
        assert machine.wait(RUNNING, timeout=60) == RUNNING
        deadline = time.monotonic() + 30  # samples from now on have a keepalive time to record
        while not machine.keepalive_reply_times() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(3 * period)  # nobody looks meanwhile (the first request would start the history itself)
        assert b.debug_url is not None
        (row,) = httpx.get(b.debug_url + "/debug/bigmachine/machines", timeout=30).json()
        history = row["history"]
        assert len(history["cpu_percent"]) >= 2 and len(history["rss"]) >= 2 and len(history["keepalive"]) >= 2
        assert all(v >= 0 for v in history["cpu_percent"]) and all(v > 0 for v in history["rss"])
        page = httpx.get(b.debug_url + "/debug/bigmachine/status", timeout=30).text
        assert "(1 point)" not in page and "no data yet" not in page  # the first view already has a history


def test_history_keeps_ten_minutes_and_computes_cpu_from_cpu_seconds() -> None:
    history = History()
    status = {"time": 0.0, "cpu_percent": 99.0, "cpu_seconds": 1.0, "mem": {"process": {"rss": 5}}}
    for i in range(int(WINDOW / PERIOD) + 50):
        history.add("m", {**status, "time": i * PERIOD, "cpu_seconds": 1.0 + i * PERIOD / 4}, 0.001)
    assert len(history.cpu("m")) == int(WINDOW / PERIOD) + 1
    assert history.cpu("m")[-1] == pytest.approx(25.0)  # a quarter of a core, whatever cpu_percent said
    history.forget([])
    assert history.cpu("m") == []
