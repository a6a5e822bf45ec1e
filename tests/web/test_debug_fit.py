"""Pages that fit: no card or panel is wider than itself at 1280 and 1400 px, with a STOPPED machine
and long method names; a stopped machine's page offers no profiles (issue 13). Headless Chromium."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from browser import Browser
from services import LongInitError, LongNames
from debug_support import Cluster, start_driver

import bigmachine
from bigmachine import RUNNING, STOPPED

pytestmark = pytest.mark.timeout(120)

LONG = "LongNames.a_method_name_long_enough_to_push_every_column_of_the_status_table_past_its_card"

# Every card and panel whose content is wider than its box, as "class: scrollWidth > clientWidth".
OVERFLOWING = """
  Array.from(document.querySelectorAll(".card, .panel"))
    .filter(function (e) { return e.scrollWidth > e.clientWidth; })
    .map(function (e) { return e.className + " '" + e.innerText.slice(0, 40) + "': " + e.scrollWidth + " > " + e.clientWidth; })
"""


@pytest.fixture(scope="module")
def stopped() -> Iterator[Cluster]:
    """Two machines with long method names; the second one STOPPED."""
    with start_driver("testing") as b:
        machines = b.start(2, bigmachine.Services(LongNames=LongNames()))
        for machine in machines:
            assert machine.wait(RUNNING, timeout=60) == RUNNING
            for _ in range(3):
                machine.call(LONG)
        with pytest.raises(ValueError):
            machines[0].call("LongNames.fail_with_a_long_message")
        machines[1].cancel()
        assert machines[1].wait(STOPPED, timeout=30) == STOPPED
        (failing,) = b.start(1, bigmachine.Services(LongInitError=LongInitError()))
        assert failing.wait(STOPPED, timeout=30) == STOPPED and "directory_number_29" in str(failing.err)
        assert b.debug_url is not None
        yield Cluster(b, machines, b.debug_url + "/debug/bigmachine")


@pytest.mark.parametrize("width", [1280, 1400])
def test_status_and_machine_pages_fit_their_cards(stopped: Cluster, width: int) -> None:
    pages = [stopped.base + "/status"] + [f"{stopped.base}/machine/{stopped.key(m)}" for m in stopped.b.machines()]
    with Browser(width=width) as browser:
        browser.size(width)
        for url in pages:
            browser.open(url)
            assert browser.run("document.querySelectorAll('.card, .panel').length") >= 3, url
            assert browser.run(OVERFLOWING) == [], url
            assert browser.run("document.documentElement.scrollWidth") <= width, url
        browser.open(stopped.base + "/status")
        text = browser.run("document.body.innerText")
        assert LONG in text and "directory_number_29" in text  # shown, wrapped, not cut


def test_a_stopped_machines_page_has_no_profile_buttons(stopped: Cluster) -> None:
    import httpx

    running, gone = stopped.machines
    with httpx.Client(timeout=30) as http:
        dead = http.get(f"{stopped.base}/machine/{stopped.key(gone)}").text
        live = http.get(f"{stopped.base}/machine/{stopped.key(running)}").text
    assert "STOPPED" in dead and "Profiles need a running machine" in dead
    assert "/pprof/flame" not in dead and "/pprof/profile" not in dead and "/pprof/heap" not in dead
    assert "/pprof/flame" in live and "/pprof/profile" in live


def test_calls_running_and_queued_show_when_the_supervisor_reports_them(monkeypatch: pytest.MonkeyPatch) -> None:
    """``Supervisor.status()["calls"]`` (service calls queued, running, pool size): shown per machine when present."""
    import httpx

    from bigmachine.runtime.supervisor import Supervisor

    plain = Supervisor.status
    monkeypatch.setattr(Supervisor, "status",  # Testing machines run in this process (patched before they start)
                        lambda self: {**plain(self), "calls": {"queued": 3, "running": 2, "threads": 4}})
    with start_driver("testing") as b:
        (machine,) = b.start(1, bigmachine.Services(LongNames=LongNames()))
        assert machine.wait(RUNNING, timeout=60) == RUNNING
        assert b.debug_url is not None
        base = b.debug_url + "/debug/bigmachine"
        with httpx.Client(timeout=30) as http:
            status = http.get(base + "/status").text
            page = http.get(f"{base}/machine/{machine.addr.removeprefix('https://').rstrip('/')}").text
    assert "2 run" in status and "3 queued" in status
    assert "3 waiting for one of 4 threads" in page
