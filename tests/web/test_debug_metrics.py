"""Prometheus exposition of the driver and every machine: promtool, a real Prometheus server, the merge rules."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from debug_support import Cluster, free_port, tool
from prometheus_client.parser import text_string_to_metric_families

from bigmachine.web.promtext import aggregate

pytestmark = pytest.mark.timeout(120)


def _families(text: str) -> dict[str, list]:  # type: ignore[type-arg]
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def test_metrics_pass_promtool_and_label_each_machine(cluster: Cluster, http: httpx.Client, tmp_path: Path) -> None:
    cluster.machines[1].call("Busy.work", 2)
    deadline = time.monotonic() + 10
    while not all(m.keepalive_reply_times() for m in cluster.machines) and time.monotonic() < deadline:
        time.sleep(0.1)
    reply = http.get(cluster.base + "/metrics")
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = reply.text
    assert http.get(cluster.origin + "/metrics").text.count("# TYPE") == text.count("# TYPE")  # also at the root
    promtool = tool("promtool", "prometheus")
    check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr
    types = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")]
    assert len(types) == len(set(types)), "HELP/TYPE once per family"
    families = _families(text)
    addrs = {m.addr for m in cluster.machines}
    # Built-ins of the machines, labelled by machine, and the users' own counter.
    served = [s for s in families["bigmachine_rpc_server_calls"] if s.labels["method"] == "Busy.work"]
    assert {s.labels["machine"] for s in served} == addrs
    jobs = {s.labels["machine"]: s.value for s in families["debug_test_jobs"] if s.name == "debug_test_jobs_total"}
    assert jobs[cluster.machines[0].addr] >= 3 and jobs[cluster.machines[1].addr] >= 2
    rss = {s.labels.get("machine") for s in families["process_resident_memory_bytes"]}
    assert rss == addrs | {None}  # the driver's own process too, unlabelled
    buckets = [s for s in families["bigmachine_rpc_server_duration_seconds"] if s.name.endswith("_bucket")]
    assert {s.labels["machine"] for s in buckets} == addrs
    assert {s.labels["machine"] for s in families["bigmachine_scrape_up"] if s.value == 1} == addrs
    # The driver's view: machines by state, its calls by machine and method, keepalive latency.
    states = {s.labels["state"]: s.value for s in families["bigmachine_machines"]}
    assert states["RUNNING"] == 2 and states["STOPPED"] == 0
    client = {(s.labels["peer"], s.labels["method"]) for s in families["bigmachine_rpc_client_calls"]}
    assert (cluster.machines[1].addr, "Busy.work") in client
    assert {s.labels["peer"] for s in families["bigmachine_keepalive_latency_seconds"]} == addrs
    assert "bigmachine_rpc_server_received_bytes" in families and "bigmachine_rpc_server_sent_bytes" in families


def test_one_source_at_a_time(cluster: Cluster, http: httpx.Client) -> None:
    machine = cluster.machines[0]
    one = http.get(cluster.base + "/metrics", params={"machine": machine.addr}).text
    assert 'machine="' not in one  # as the machine exposes it: the scraper adds the label
    assert "bigmachine_rpc_server_calls_total" in one
    driver = http.get(cluster.base + "/metrics", params={"machine": "driver"}).text
    assert "bigmachine_machines" in driver and "bigmachine_rpc_server_calls_total" not in driver


def test_aggregate_renames_a_clashing_machine_label_and_drops_mistyped_families() -> None:
    driver = "# TYPE up_things gauge\nup_things 1\n"
    machine = ('# TYPE jobs_total counter\njobs_total{machine="mine"} 3\n'
               "# TYPE up_things counter\nup_things 2\n"
               "# TYPE odd counter\nodd_total 1\n")  # a TYPE line not matching its samples' name
    text = aggregate(driver, [("https://h:1/", machine), ("https://h:2/", None)]).decode()
    families = _families(text)
    (jobs,) = [s for s in families["jobs"] if s.name == "jobs_total"]
    assert jobs.labels == {"exported_machine": "mine", "machine": "https://h:1/"}
    assert [s.value for s in families["up_things"]] == [1.0]  # the machine's counter of that name is left out
    dropped = {s.labels["source"]: s.value for s in families["bigmachine_scrape_dropped_families"]}
    assert dropped == {"https://h:1/": 1.0}
    assert [s.value for s in families["odd_total"]] == [1.0]  # kept once, untyped
    assert text.count("# TYPE odd_total ") == 1
    up = {s.labels["machine"]: s.value for s in families["bigmachine_scrape_up"]}
    assert up == {"https://h:1/": 1.0, "https://h:2/": 0.0}
    broken = aggregate(driver, [("https://h:3/", "this is { not an exposition")]).decode()
    assert 'bigmachine_scrape_up{machine="https://h:3/"} 0.0' in broken


@pytest.fixture
def prometheus(cluster: Cluster, tmp_path: Path) -> Iterator[str]:
    """A real Prometheus on loopback scraping the driver every second; its URL."""
    binary = tool("prometheus", "prometheus")
    port = free_port()
    target = cluster.origin.removeprefix("http://")
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
        "scrape_configs:\n"
        "  - job_name: bigmachine\n"
        "    metrics_path: /debug/bigmachine/metrics\n"
        f"    static_configs:\n      - targets: ['{target}']\n"
    )
    log = (tmp_path / "prometheus.log").open("w")
    process = subprocess.Popen(
        [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=log, stderr=subprocess.STDOUT,
    )
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


def test_a_real_prometheus_scrapes_per_machine_series(cluster: Cluster, prometheus: str) -> None:
    wanted = {m.addr for m in cluster.machines}
    deadline = time.monotonic() + 40
    found: set[str] = set()
    with httpx.Client(timeout=5) as http:
        while time.monotonic() < deadline:
            try:
                reply = http.get(prometheus + "/api/v1/query",
                                 params={"query": 'bigmachine_rpc_server_calls_total{method="Busy.work"}'})
            except httpx.TransportError:
                reply = None  # not listening yet
            if reply is not None and reply.status_code == 200:
                found = {r["metric"]["machine"] for r in reply.json()["data"]["result"]}
                if found >= wanted:
                    break
            time.sleep(0.25)
        assert found >= wanted, f"Prometheus has series of {found}, wanted {wanted}"
        health = http.get(prometheus + "/api/v1/targets").json()["data"]["activeTargets"]
        assert [t["health"] for t in health] == ["up"], health
        up = http.get(prometheus + "/api/v1/query", params={"query": "bigmachine_scrape_up"}).json()
        assert {r["metric"]["machine"]: r["value"][1] for r in up["data"]["result"]} == {a: "1" for a in wanted}
