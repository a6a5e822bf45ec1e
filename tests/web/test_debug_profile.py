"""CPU profiles of the whole cluster: pstats merged with Stats.add, text, folded, pprof (go tool pprof), flame graph."""

from __future__ import annotations

import concurrent.futures
import io
import marshal
import pstats
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from debug_support import Cluster

pytestmark = pytest.mark.timeout(120)

HOT = "hot_loop_for_profile"


@pytest.fixture
def busy(cluster: Cluster) -> Iterator[list[concurrent.futures.Future[int]]]:
    """Every machine burns CPU in a service thread (not the event loop) for a few seconds."""
    futures = [m.submit("Busy.burn", 2.5) for m in cluster.machines]
    yield futures
    concurrent.futures.wait(futures)


def _stats(data: bytes) -> pstats.Stats:
    stats = pstats.Stats(stream=io.StringIO())
    stats.stats = marshal.loads(data)  # type: ignore[attr-defined]
    stats.get_top_level_stats()  # type: ignore[attr-defined]
    return stats


def test_pstats_profile_of_all_machines_finds_the_hot_function(cluster: Cluster, http: httpx.Client, busy: object,
                                                                 tmp_path: Path) -> None:
    reply = http.get(cluster.base + "/pprof/profile", params={"seconds": "1"})
    assert reply.status_code == 200
    assert reply.headers["content-type"] == "application/octet-stream"
    assert reply.headers["x-bigmachine-machines"] == "2"
    path = tmp_path / "cpu.pstats"
    path.write_bytes(reply.content)
    stats = pstats.Stats(str(path), stream=io.StringIO())  # as a user (or snakeviz) loads it
    hot = [(func, row) for func, row in stats.stats.items() if func[2] == HOT]  # type: ignore[attr-defined]
    assert hot, "the service's hot function is not in the profile"
    (filename, _, _), (_, calls, tottime, cumtime, _) = hot[0]
    assert filename.endswith("services.py")
    total = sum(row[2] for row in stats.stats.values())  # type: ignore[attr-defined]
    assert cumtime >= 0.5 * total, "the hot function should dominate a profile of busy machines"
    # Two machines' samples were merged: the hot function was seen on both.
    one = http.get(cluster.base + "/pprof/profile", params={"seconds": "0.5", "machine": cluster.machines[0].addr})
    assert one.headers["x-bigmachine-machines"] == "1"
    assert any(func[2] == HOT for func in _stats(one.content).stats)  # type: ignore[attr-defined]


def test_text_and_collapsed_formats(cluster: Cluster, http: httpx.Client, busy: object) -> None:
    text = http.get(cluster.base + "/pprof/profile", params={"seconds": "0.5", "format": "text"})
    assert text.status_code == 200 and text.headers["content-type"].startswith("text/plain")
    assert text.text.startswith("CPU profile of 2 machines over 0.5 s")
    assert "Ordered by: internal time" in text.text and HOT in text.text
    folded = http.get(cluster.base + "/pprof/profile", params={"seconds": "0.5", "format": "collapsed", "by": "machine"})
    lines = folded.text.splitlines()
    assert lines and all(line.rsplit(" ", 1)[1].isdigit() for line in lines)
    roots = {line.split(";", 1)[0] for line in lines}
    assert roots == {cluster.key(m) for m in cluster.machines}  # one root frame per machine
    assert any(HOT in line for line in lines)


def test_pprof_format_opens_in_go_tool_pprof(cluster: Cluster, http: httpx.Client, busy: object, tmp_path: Path,
                                             go_pprof: tuple[list[str], dict[str, str]]) -> None:
    reply = http.get(cluster.base + "/pprof/profile", params={"seconds": "1", "format": "pprof"})
    assert reply.status_code == 200
    assert reply.headers["content-disposition"] == 'attachment; filename="cpu.pb.gz"'
    path = tmp_path / "cpu.pb.gz"
    path.write_bytes(reply.content)
    command, env = go_pprof
    done = subprocess.run([*command, "-top", str(path)], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert HOT in done.stdout
    assert "Type: cpu" in done.stdout


def test_flame_graph_page(cluster: Cluster, http: httpx.Client, busy: object) -> None:
    reply = http.get(cluster.base + "/pprof/flame", params={"seconds": "0.5"})
    assert reply.status_code == 200
    html = reply.text
    assert '<svg xmlns="http://www.w3.org/2000/svg" class="flamegraph"' in html
    assert HOT in html
    assert "from 2 machines" in html
    by_machine = http.get(cluster.base + "/pprof/flame",
                          params={"seconds": "0.3", "by": "machine", "machine": cluster.machines[1].name}).text
    assert f'data-name="{cluster.key(cluster.machines[1])}"' in by_machine
    assert f'data-name="{cluster.key(cluster.machines[0])}"' not in by_machine
