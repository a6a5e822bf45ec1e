"""A real Prometheus discovering every machine through ``/targets`` (http_sd): label sets exactly as README
documents them, nothing renamed to ``exported_*``, and a dead machine stays a target with ``up`` 0, which
README's alert rule catches (issue 13)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from services import Observed
from debug_support import Cluster, free_port, start_driver, tool

import bigmachine
from bigmachine import RUNNING, STOPPED

pytestmark = pytest.mark.timeout(150)

# The alert rule README shows (keep the two the same), firing at once (README: for: 1m).
RULES = """groups:
  - name: bigmachine
    rules:
      - alert: BigmachineMachineDown
        expr: up{job="bigmachine", machine!="driver"} == 0
        for: 0s
        annotations:
          summary: "machine {{ $labels.machine }} of session {{ $labels.bigmachine_session }} is down"
"""


@pytest.fixture(scope="module")
def one_dead() -> Iterator[Cluster]:
    """Two Local machines; the driver called the first; the second is cancelled (STOPPED)."""
    with start_driver() as b:
        machines = b.start(2, bigmachine.Services(Busy=Observed()))
        for machine in machines:
            assert machine.wait(RUNNING, timeout=60) == RUNNING
        machines[0].call("Busy.work", 2)
        machines[1].cancel()
        assert machines[1].wait(STOPPED, timeout=30) == STOPPED
        assert b.debug_url is not None
        yield Cluster(b, machines, b.debug_url + "/debug/bigmachine")


@pytest.fixture
def prometheus(one_dead: Cluster, tmp_path: Path) -> Iterator[str]:
    binary = tool("prometheus", "prometheus")
    port = free_port()
    rules = tmp_path / "rules.yml"
    rules.write_text(RULES)
    check = subprocess.run([tool("promtool", "prometheus"), "check", "rules", str(rules)], capture_output=True,
                           text=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n"
        f"rule_files: ['{rules}']\n"
        "scrape_configs:\n"
        "  - job_name: bigmachine\n"
        "    http_sd_configs:\n"
        f"      - url: {one_dead.base}/targets\n"
        "        refresh_interval: 1s\n"
    )
    log = (tmp_path / "prometheus.log").open("w")
    process = subprocess.Popen(
        [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"], stdout=log, stderr=subprocess.STDOUT)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def _query(http: httpx.Client, prometheus: str, query: str, want: int, timeout: float = 60) -> list[dict[str, Any]]:
    """The query's series once there are ``want`` of them (polling while Prometheus discovers and scrapes)."""
    deadline = time.monotonic() + timeout
    result: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        try:
            reply = http.get(prometheus + "/api/v1/query", params={"query": query})
            result = reply.json()["data"]["result"] if reply.status_code == 200 else []
        except httpx.TransportError:
            result = []  # not listening yet
        if len(result) >= want:
            return result
        time.sleep(0.25)
    raise AssertionError(f"{query}: {len(result)} series after {timeout} s, wanted {want}: {result}")


def test_http_sd_labels_are_as_documented_and_a_dead_machine_is_down(one_dead: Cluster, prometheus: str) -> None:
    live, dead = (m.addr for m in one_dead.machines)
    port = one_dead.origin.rsplit(":", 1)[1]
    common = {"job": "bigmachine", "instance": f"127.0.0.1:{port}", "bigmachine_session": one_dead.b.name}
    with httpx.Client(timeout=5) as http:
        up = _query(http, prometheus, "up", 3)
        assert {r["metric"]["machine"]: r["value"][1] for r in up} == {"driver": "1", live: "1", dead: "0"}
        assert all(r["metric"] == {"__name__": "up", **common, "machine": r["metric"]["machine"]} for r in up)
        (client,) = _query(http, prometheus, 'bigmachine_rpc_client_calls_total{method="Busy.work"}', 1)
        assert client["metric"] == {"__name__": "bigmachine_rpc_client_calls_total", **common, "machine": "driver",
                                    "peer": live, "method": "Busy.work"}
        (served,) = _query(http, prometheus, 'bigmachine_rpc_server_calls_total{method="Busy.work"}', 1)
        assert served["metric"] == {"__name__": "bigmachine_rpc_server_calls_total", **common, "machine": live,
                                    "method": "Busy.work"}
        (alert,) = _query(http, prometheus, 'ALERTS{alertname="BigmachineMachineDown", alertstate="firing"}', 1)
        assert alert["metric"]["machine"] == dead
        renamed = _query(http, prometheus, '{__name__=~".+", exported_machine!=""}', 0, timeout=0.5)
        assert renamed == []
