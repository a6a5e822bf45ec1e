"""A dead or slow machine shows as such, and no page waits on it past its per-machine deadline (Testing machines)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from services import INIT_GATE, RELEASE, BadInit, GatedInit, Hang

import bigmachine
from bigmachine import RUNNING, STARTING, STOPPED
from bigmachine import systems
from bigmachine.web.server import DebugServer, serve_debug

pytestmark = pytest.mark.timeout(60)

DEADLINE = 0.3  # seconds each machine gets to answer a page
PATIENCE = DEADLINE + 1.5  # a page may take this long at most, whatever the machines do


@dataclass
class Served:
    b: bigmachine.B
    system: systems.Testing
    machines: list[bigmachine.Machine]
    server: DebugServer

    @property
    def base(self) -> str:
        return self.server.url + "/debug/bigmachine"


@pytest.fixture
def served() -> Iterator[Served]:
    """Three in-process machines (long leases: only the test decides who dies) behind a debug server."""
    system = systems.Testing(keepalive_period=0.2, keepalive_timeout=30, keepalive_rpc_timeout=10)
    with bigmachine.start(system) as b:
        machines = b.start(3, bigmachine.Services(Hang=Hang()))
        for machine in machines:
            machine.wait(RUNNING, timeout=30)
        server = serve_debug(b, "127.0.0.1:0", deadline=DEADLINE)
        yield Served(b, system, machines, server)


def _timed_get(http: httpx.Client, url: str, **params: str) -> tuple[httpx.Response, float]:
    begun = time.monotonic()
    reply = http.get(url, params=params)
    return reply, time.monotonic() - begun


ROUTES = ["/status", "/machines", "/vars", "/pprof/", "/pprof/threads", "/metrics"]


def test_killed_machine_shows_stopped_with_its_error(served: Served) -> None:
    dead = served.machines[1]
    served.system.kill(dead)
    with httpx.Client(timeout=30) as http:
        for path in ROUTES:  # at once, before the driver may even know
            reply, took = _timed_get(http, served.base + path)
            assert reply.status_code == 200, (path, reply.text)
            assert took < PATIENCE, f"{path} took {took:.2f} s"
        dead.wait(STOPPED, timeout=10)
        rows = {row["addr"]: row for row in http.get(served.base + "/machines").json()}
        assert rows[dead.addr]["state"] == "STOPPED"
        assert "killed by Testing.kill" in rows[dead.addr]["error"]
        assert rows[dead.addr]["status"] is None
        assert all(rows[m.addr]["status"] is not None for m in served.machines if m is not dead)
        html = http.get(served.base + "/status").text
        assert html.count('<tr class="machine"') == 3
        assert html.count('data-state="STOPPED"') == 1 and html.count('data-state="RUNNING"') == 2
        assert '<span class="pill s-STOPPED">STOPPED</span>' in html
        assert "killed by Testing.kill" in html and 'class="errbox"' in html
        page = http.get(served.base + "/machine/" + dead.addr.removeprefix("https://").rstrip("/")).text
        assert "s-STOPPED" in page and "killed by Testing.kill" in page
        values = http.get(served.base + "/vars").json()
        assert values[dead.addr]["error"].startswith("stopped")
        metrics = http.get(served.base + "/metrics").text
        assert f'bigmachine_machines{{state="STOPPED"}} 1.0' in metrics
        assert f'machine="{dead.addr}"' not in metrics.split("# HELP bigmachine_rpc_client")[0]  # no scrape of the dead
        cpu = http.get(served.base + "/pprof/profile", params={"seconds": "0.2", "format": "text"})
        assert cpu.status_code == 200 and cpu.headers["x-bigmachine-machines"] == "2"
        one = http.get(served.base + "/pprof/threads", params={"machine": dead.addr}).text
        assert "no dump" in one and "stopped" in one


def test_hung_machine_shows_slow_and_never_holds_a_page(served: Served) -> None:
    slow = served.machines[0]
    blocked = slow.submit("Hang.block", 30)  # its event loop stops answering
    time.sleep(0.1)
    try:
        with httpx.Client(timeout=30) as http:
            for path in ROUTES:
                reply, took = _timed_get(http, served.base + path)
                assert reply.status_code == 200, (path, reply.text)
                assert took < PATIENCE, f"{path} took {took:.2f} s"
            rows = {row["addr"]: row for row in http.get(served.base + "/machines").json()}
            assert rows[slow.addr]["slow"] is True and rows[slow.addr]["state"] == "RUNNING"
            assert f"no reply within {DEADLINE:g} s" in rows[slow.addr]["status_error"]
            html = http.get(served.base + "/status").text
            assert html.count('class="pill s-SLOW"') == 2  # the row and the summary card
            assert "supervisor did not answer" in html
            metrics = http.get(served.base + "/metrics").text
            assert f'bigmachine_scrape_up{{machine="{slow.addr}"}} 0.0' in metrics
            reply, took = _timed_get(http, served.base + "/pprof/profile", seconds="0.2")
            assert reply.status_code == 200 and took < 0.2 + PATIENCE
            assert reply.headers["x-bigmachine-machines"] == "2"
            assert slow.addr.removeprefix("https://").rstrip("/") in reply.headers["x-bigmachine-missing"]
            reply, took = _timed_get(http, served.base + "/pprof/profile", seconds="0.2", machine=slow.addr)
            assert reply.status_code == 503 and "no machine answered" in reply.text and took < 0.2 + PATIENCE
            assert slow.state == RUNNING
    finally:
        RELEASE.set()
        blocked.result(timeout=30)
        RELEASE.clear()


def test_no_machines_yet(http: httpx.Client) -> None:
    with bigmachine.start(systems.Testing()) as b:
        server = serve_debug(b, "127.0.0.1:0")
        base = server.url + "/debug/bigmachine"
        assert "No machines yet" in http.get(base + "/status").text
        assert http.get(base + "/machines").json() == []
        assert list(http.get(base + "/vars").json()) == ["driver"]  # the driver's own expvars (issue 13)
        assert http.get(base + "/pprof/profile", params={"seconds": "0.1"}).status_code == 503
        assert "no machines" in http.get(base + "/pprof/threads").text
        assert "bigmachine_machines" in http.get(base + "/metrics").text


def test_starting_and_failed_machines_render(http: httpx.Client) -> None:
    with bigmachine.start(systems.Testing()) as b:
        server = serve_debug(b, "127.0.0.1:0", deadline=DEADLINE)
        base = server.url + "/debug/bigmachine"
        INIT_GATE.clear()
        (starting,) = b.start(1, bigmachine.Services(Slow=GatedInit()))
        try:
            assert starting.state == STARTING
            html = http.get(base + "/status").text
            assert '<span class="pill s-STARTING">STARTING</span>' in html
            assert http.get(base + "/machines").json()[0]["status_error"] == "starting"
            assert http.get(f"{base}/machine/{starting.name}").status_code == 200
            assert http.get(base + "/metrics").status_code == 200
            cpu = http.get(base + "/pprof/profile", params={"seconds": "0.1"})
            assert cpu.status_code == 503 and "starting" in cpu.text
        finally:
            INIT_GATE.set()
        starting.wait(RUNNING, timeout=10)
        (failed,) = b.start(1, bigmachine.Services(Bad=BadInit()))
        failed.wait(STOPPED, timeout=10)
        rows = {row["name"]: row for row in http.get(base + "/machines").json()}
        assert rows[failed.name]["state"] == "STOPPED" and "init failed on purpose" in rows[failed.name]["error"]
        assert rows[starting.name]["state"] == "RUNNING"
        assert "init failed on purpose" in http.get(base + "/status").text
        page = http.get(f"{base}/machine/{failed.name}")
        assert page.status_code == 200 and "init failed on purpose" in page.text
