"""Machines as jobs of a real (one-node) Slurm cluster: programs, shipping, peers, output, leases, leftovers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]

Cluster = Any  # the fixture's type lives in this directory's conftest.py

PROGRAM = '''
"""A driver whose service needs its own __main__ and a local module: both must be shipped."""
import json, os, socket, sys, time

import bigmachine
from bigmachine.systems import Slurm

import shipped_helper


class Echo:
    def init(self, b):
        self.b = b

    def double(self, x):
        print(f"doubling {x} on", socket.gethostname(), flush=True)
        return shipped_helper.double(x)

    def where(self):
        return {"helper": shipped_helper.__file__, "job": os.environ.get("SLURM_JOB_ID")}

    def peer(self, addr):
        return self.b.dial(addr).call("E.double", 21)


def main():
    system = Slurm(workdir=sys.argv[1], cores_per_machine=1, poll_interval=1.0, keepalive_period=0.5,
                   keepalive_timeout=3.0, keepalive_rpc_timeout=1.0, start_timeout=60)
    with bigmachine.start(system) as b:
        machines = b.start(2, bigmachine.Services(E=Echo()))
        for m in machines:
            m.wait(bigmachine.RUNNING, timeout=60)
        m0, m1 = machines
        results = {"session": b.name, "addrs": [m.addr for m in machines], "maxprocs": m0.maxprocs,
                   "double": m0.call("E.double", 4), "where": m0.call("E.where"),
                   "peer": m0.call("E.peer", m1.addr), "back": m1.call("E.peer", m0.addr)}
        # One write: print() writes the text and its newline apart, and a machine's forwarded output
        # can land between them.
        sys.stdout.write("RESULTS " + json.dumps(results) + "\\n")
        sys.stdout.flush()
        time.sleep(600)  # until the test kills this driver


if __name__ == "__main__":
    main()
'''


def _results(process: subprocess.Popen[str], timeout: float) -> tuple[dict[str, Any], list[str]]:
    """The driver's RESULTS line, and every line it printed up to it."""
    assert process.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    for line in process.stdout:
        lines.append(line.rstrip("\n"))
        if line.startswith("RESULTS "):
            return json.loads(line.removeprefix("RESULTS ")), lines
        if time.monotonic() > deadline:
            break
    pytest.fail("the driver printed no results:\n" + "\n".join(lines[-40:]))


def test_bigpi_on_two_slurm_machines(slurm_cluster: Cluster, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "bigpi.py"), "-n", "20000", "--nmach", "2", "--bigm.system=slurm",
         "--bigm.debug=none", f"--bigm.slurm.workdir={tmp_path / 'shared'}", "--bigm.slurm.poll-interval=1"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "pi = 3." in done.stdout, done.stdout
    assert not (tmp_path / "shared").exists() or not any((tmp_path / "shared").iterdir())


def test_main_and_local_modules_ship_peers_call_output_is_forwarded_and_a_killed_drivers_jobs_end(
        slurm_cluster: Cluster, tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "prog.py").write_text(PROGRAM)
    (project / "shipped_helper.py").write_text("def double(x):\n    return 2 * x\n")
    shared = tmp_path / "shared"
    driver_tmp = tmp_path / "driver-tmp"  # a SIGKILLed driver leaves its session's temp dir: keep it in here
    driver_tmp.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(driver_tmp)}
    process = subprocess.Popen([sys.executable, str(project / "prog.py"), str(shared)], cwd=project, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        results, lines = _results(process, 120)
        session = results["session"]
        assert results["double"] == 8 and results["peer"] == 42 and results["back"] == 42
        assert results["maxprocs"] == 1
        assert all(a.startswith(f"https://{slurm_cluster.host}:") for a in results["addrs"])
        assert results["where"]["job"] in slurm_cluster.live_jobs(f"bigmachine:{session}")
        helper = Path(results["where"]["helper"])
        assert not helper.is_relative_to(project) and helper.name == "shipped_helper.py"  # shipped, not shared
        prefix = results["addrs"][0].removeprefix("https://").rstrip("/")
        assert f"{prefix}: doubling 4 on" in "\n".join(lines)
        assert not list(shared.glob("*/*/bootstrap.json"))  # each job removed its credentials as it started
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        deadline = time.monotonic() + 30  # the lease is 3 s; the agents end their jobs with their machines
        while slurm_cluster.live_jobs(f"bigmachine:{session}") and time.monotonic() < deadline:
            time.sleep(0.5)
        assert slurm_cluster.live_jobs(f"bigmachine:{session}") == []
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        if process.stdout is not None:
            process.stdout.close()
