"""Every route of the debug server, with httpx over loopback, against real Local machines."""

from __future__ import annotations

import gzip
import json
import os
import re
import time

import httpx
import pytest
from debug_support import Cluster

from bigmachine import RUNNING, expvar
from bigmachine.profile import heap

pytestmark = pytest.mark.timeout(120)


def test_debug_url_is_set_and_root_redirects_to_status(cluster: Cluster, http: httpx.Client) -> None:
    assert cluster.b.debug_url is not None
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", cluster.b.debug_url), "the base URL, as README uses it (issue 13)"
    assert http.get(cluster.b.debug_url + "/debug/bigmachine/metrics").status_code == 200
    for path in ("/", "/debug/bigmachine", "/debug/bigmachine/"):
        reply = http.get(cluster.origin + path)
        assert reply.status_code == 307
        assert reply.headers["location"].endswith("/debug/bigmachine/status")


def test_status_page_has_a_row_per_machine_with_state_and_charts(cluster: Cluster, http: httpx.Client) -> None:
    reply = http.get(cluster.base + "/status")
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("text/html")
    html = reply.text
    assert html.count('<tr class="machine"') == 2
    for machine in cluster.machines:
        assert f'href="/debug/bigmachine/machine/{cluster.key(machine)}"' in html
    assert html.count('class="pill s-RUNNING"') == 2
    assert 'http-equiv="refresh"' in html
    assert "<svg class=\"spark" in html and "<svg class=\"bar\"" in html  # server-side charts
    assert "Busy.work" in html  # busiest methods
    assert "<script src" not in html and "<link" not in html and "cdn" not in html.lower()  # works offline


def test_status_page_can_stop_refreshing(cluster: Cluster, http: httpx.Client) -> None:
    html = http.get(cluster.base + "/status", params={"refresh": "0"}).text
    assert 'http-equiv="refresh"' not in html


def test_machine_page_shows_info_expvars_output_and_profile_links(cluster: Cluster, http: httpx.Client) -> None:
    machine = cluster.machines[0]
    reply = http.get(f"{cluster.base}/machine/{cluster.key(machine)}")
    assert reply.status_code == 200
    html = reply.text
    assert machine.addr in html
    assert f"pid {machine.info['pid']}" in html
    assert "<code>Busy</code>" in html  # services
    assert "<code>jobs</code>" in html and "&#34;done&#34;: 3" in html  # the service's expvar
    assert "debug test service ready" in html  # recent output forwarded by the driver
    for link in ("pprof/flame?", "pprof/profile?", "pprof/heap?", "pprof/threads?", "metrics?machine="):
        assert link in html
    assert "Busy.work" in html  # calls served and calls from the driver


def test_machine_page_by_name_and_unknown_machine(cluster: Cluster, http: httpx.Client) -> None:
    machine = cluster.machines[1]
    assert http.get(f"{cluster.base}/machine/{machine.name}").status_code == 200
    reply = http.get(f"{cluster.base}/machine/127.0.0.1:1")
    assert reply.status_code == 404
    assert "no machine" in reply.text


def test_machines_json(cluster: Cluster, http: httpx.Client) -> None:
    rows = http.get(cluster.base + "/machines").json()
    assert [row["addr"] for row in rows] == [m.addr for m in cluster.machines]
    for row, machine in zip(rows, cluster.machines):
        assert row["state"] == "RUNNING"
        assert row["error"] is None
        assert row["info"]["pid"] == machine.info["pid"]
        assert row["instance"]["pid"] == machine.info["pid"]
        assert row["uptime"] > 0
        assert row["status"]["mem"]["process"]["rss"] > 0
        assert row["status"]["disk"]["total"] > 0
        assert 0 <= row["status"]["cpu_percent"]
        assert row["status_error"] is None and row["slow"] is False
    served = rows[0]["status"]["rpc"]["Busy.work"]
    assert served["calls"] >= 1 and served["errors"] == 0 and served["mean"] > 0
    assert rows[0]["calls"]["Busy.work"]["calls"] >= 1  # the driver's own count
    one = http.get(cluster.base + "/machines", params={"machine": cluster.machines[1].addr}).json()
    assert [row["addr"] for row in one] == [cluster.machines[1].addr]


def test_rpc_errors_are_counted_on_both_sides(cluster: Cluster, http: httpx.Client) -> None:
    machine = cluster.machines[1]
    with pytest.raises(ValueError):
        machine.call("Busy.fail")
    row = http.get(cluster.base + "/machines", params={"machine": machine.name}).json()[0]
    assert row["calls"]["Busy.fail"]["errors"] >= 1
    assert row["status"]["rpc"]["Busy.fail"]["errors"] >= 1


def test_keepalive_history_is_reported(cluster: Cluster, http: httpx.Client) -> None:
    machine = cluster.machines[0]
    deadline = time.monotonic() + 10
    while not machine.keepalive_reply_times() and time.monotonic() < deadline:
        time.sleep(0.2)
    row = http.get(cluster.base + "/machines", params={"machine": machine.name}).json()[0]
    assert row["keepalive"]["history"] and row["keepalive"]["latest"] > 0
    assert row["keepalive"]["next_in"] is not None


def test_vars_has_builtins_and_published_values_per_machine(cluster: Cluster, http: httpx.Client) -> None:
    expvar.publish("driver_test_var", {"driver": True})
    values = http.get(cluster.base + "/vars").json()
    assert set(values) == {m.addr for m in cluster.machines} | {"driver"}
    assert values["driver"]["driver_test_var"] == {"driver": True}  # the driver's own expvars (issue 13)
    assert values["driver"]["pid"] == os.getpid()
    assert list(http.get(cluster.base + "/vars", params={"machine": "driver"}).json()) == ["driver"]
    for machine in cluster.machines:
        mine = values[machine.addr]
        assert mine["pid"] == machine.info["pid"]
        assert isinstance(mine["cmdline"], list)
        assert mine["memstats"]["rss"] > 0
        assert "done" in mine["jobs"]
    assert values[cluster.machines[0].addr]["jobs"]["done"] >= 3


def test_pprof_index_lists_kinds_with_counts(cluster: Cluster, http: httpx.Client) -> None:
    for path in ("/pprof/", "/pprof"):
        reply = http.get(cluster.base + path)
        assert reply.status_code == 200
    html = reply.text
    for kind in ("<b>profile</b>", "<b>heap</b>", "<b>threads</b>"):
        assert kind in html
    assert "2<small> of 2</small>" in html  # both machines answered
    for machine in cluster.machines:
        assert cluster.key(machine) in html


def test_threads_grouped_by_machine(cluster: Cluster, http: httpx.Client) -> None:
    text = http.get(cluster.base + "/pprof/threads").text
    for machine in cluster.machines:
        assert f"== {cluster.key(machine)}:" in text
    assert "MainThread" in text and "task " in text  # threads and asyncio tasks
    dumps = http.get(cluster.base + "/pprof/threads", params={"format": "json"}).json()
    assert set(dumps) == {cluster.key(m) for m in cluster.machines}
    assert any(entry["kind"] == "task" for entry in dumps[cluster.key(cluster.machines[0])])
    one = http.get(cluster.base + "/pprof/threads", params={"machine": cluster.machines[0].name}).text
    assert one.count("== ") == 1


def test_heap_text_and_pprof(cluster: Cluster, http: httpx.Client) -> None:
    first = http.get(cluster.base + "/pprof/heap")
    assert first.status_code == 200
    assert first.headers["x-bigmachine-machines"] == "2"
    cluster.machines[0].call("Busy.work", 1)
    text = http.get(cluster.base + "/pprof/heap").text
    assert "live blocks" in text
    reply = http.get(cluster.base + "/pprof/heap", params={"format": "pprof"})
    assert reply.status_code == 200
    assert gzip.decompress(reply.content)  # a gzipped protobuf
    assert "heap tracing is ON since" in reply.headers["x-bigmachine-heap-tracing"]
    assert f"(tracebacks of {heap.FRAMES} frames)" in text and "stops by itself 60 s after the last heap request" in text
    assert "sampled: one allocation per 512.0 KiB" in text
    shallower = http.get(cluster.base + "/pprof/heap", params={"frames": "3", "rate": "4096"}).text
    assert "(tracebacks of 3 frames)" in shallower and "one allocation per 4.0 KiB" in shallower
    index = http.get(cluster.base + "/pprof/").text
    assert "tracing ON</span> on 2 machines" in index and heap.SAMPLED_COST in index and "512.0 KiB" in index


def test_targets_are_http_sd_groups(cluster: Cluster, http: httpx.Client) -> None:
    groups = http.get(cluster.base + "/targets").json()
    netloc = cluster.origin.removeprefix("http://")
    assert all(group["targets"] == [netloc] for group in groups)
    params = [group["labels"]["__param_machine"] for group in groups]
    assert params == ["driver"] + [m.addr for m in cluster.machines]
    assert all(group["labels"]["__metrics_path__"] == "/debug/bigmachine/metrics" for group in groups)


def test_bad_parameters_and_methods_are_refused(cluster: Cluster, http: httpx.Client) -> None:
    assert http.get(cluster.base + "/pprof/profile", params={"format": "svg"}).status_code == 400
    assert http.get(cluster.base + "/pprof/profile", params={"seconds": "forever"}).status_code == 400
    assert http.get(cluster.base + "/pprof/profile", params={"seconds": "99999"}).status_code == 400
    assert http.get(cluster.base + "/pprof/heap", params={"machine": "nowhere"}).status_code == 404
    for path in ("/status", "/machines", "/vars", "/metrics", "/pprof/profile"):
        assert http.post(cluster.base + path).status_code == 405  # read-only: GET only


def test_machines_keep_running_after_all_pages(cluster: Cluster) -> None:
    assert all(m.state == RUNNING for m in cluster.machines)
    assert json.dumps(cluster.machines[0].call("Supervisor.stats"))  # plain data
