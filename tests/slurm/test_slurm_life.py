"""How Slurm jobs end their machines: queued too long, cancelled from outside, out of time, shut down, left over."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import bigmachine
from bigmachine.systems import Slurm
from bigmachine.systems.slurm import SlurmInstance
from services import Echo

Cluster = Any  # the fixture's type lives in this directory's conftest.py


@pytest.fixture(scope="module")
def slurm_session(slurm_cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[bigmachine.B]:
    """One session on the test cluster, shared by the module's tests (each starts its own machines)."""
    system = Slurm(workdir=tmp_path_factory.mktemp("shared"), poll_interval=1.0, keepalive_period=0.5,
                   keepalive_timeout=5.0, keepalive_rpc_timeout=2.0, start_timeout=60)
    with bigmachine.start(system) as b:
        yield b


def _instance(b: bigmachine.B, machine: bigmachine.Machine) -> SlurmInstance:
    system = b.system
    assert isinstance(system, Slurm)
    return next(i for i in system.instances.values() if i.machine is machine)


def test_status_shows_job_node_partition_state_and_core_hours(slurm_session: bigmachine.B,
                                                              slurm_cluster: Cluster) -> None:
    (m,) = slurm_session.start(1, bigmachine.Services(E=Echo()))
    m.wait(bigmachine.RUNNING, timeout=60)
    assert m.call("E.echo", "hi") == "hi"
    assert m.maxprocs == 1
    described = _instance(slurm_session, m).describe()
    assert described["node"] == slurm_cluster.host and described["partition"] == "debug"
    assert described["state"] == "RUNNING" and described["job"] in slurm_cluster.live_jobs(
        f"bigmachine:{slurm_session.name}")
    time.sleep(1.1)
    assert slurm_session.system.cost()["core_hours"] > 0  # type: ignore[attr-defined]
    from bigmachine.web.server import serve_debug

    serve_debug(slurm_session, "127.0.0.1:0")  # stopped by the session's shutdown
    assert slurm_session.debug_url is not None
    with httpx.Client(timeout=60) as http:
        base = slurm_session.debug_url + "/debug/bigmachine"
        page = http.get(base + "/status", params={"refresh": "0"})
        assert page.status_code == 200, page.text[-2000:]
        rows = http.get(base + "/machines").json()
    assert f"Slurm job {described['job']} · {slurm_cluster.host} · debug · RUNNING" in page.text
    assert "Core-hours" in page.text
    assert [r["instance"]["job"] for r in rows if r["addr"] == m.addr] == [described["job"]]
    m.cancel()


def test_scancel_from_outside_stops_the_machine_naming_it(slurm_session: bigmachine.B,
                                                          slurm_cluster: Cluster) -> None:
    (m,) = slurm_session.start(1, bigmachine.Services(E=Echo()))
    m.wait(bigmachine.RUNNING, timeout=60)
    job = _instance(slurm_session, m).id
    begun = time.monotonic()
    slurm_cluster.run("scancel", job)
    m.wait(bigmachine.STOPPED, timeout=15)
    assert time.monotonic() - begun < 10
    assert isinstance(m.err, bigmachine.MachineStopped)
    assert f"Slurm job {job}" in str(m.err) and "CANCELLED" in str(m.err) and "from outside" in str(m.err)
    with pytest.raises(bigmachine.MachineStopped):
        m.call("E.echo", 1)


def test_time_limit_reached_stops_the_machine_with_that_reason(slurm_session: bigmachine.B,
                                                               slurm_cluster: Cluster) -> None:
    (m,) = slurm_session.start(1, bigmachine.Services(E=Echo()))
    m.wait(bigmachine.RUNNING, timeout=60)
    job = _instance(slurm_session, m).id
    # Slurm counts limits in minutes: rather than wait one out, lower the limit to what the job has used.
    slurm_cluster.run("scontrol", "update", f"JobId={job}", "TimeLimit=0")
    m.wait(bigmachine.STOPPED, timeout=60)  # slurmctld enforces limits every 30 s
    assert isinstance(m.err, bigmachine.MachineStopped)
    assert "time limit" in str(m.err) and "TIMEOUT" in str(m.err)


def test_job_pending_past_start_timeout_stops_with_slurms_reason(slurm_cluster: Cluster, tmp_path: Path) -> None:
    # The tight partition gives each job whole cores: a job holding both keeps ours PENDING for Resources.
    blocker = slurm_cluster.run("sbatch", "--parsable", "--partition=tight", "--cpus-per-task=2", "--output=/dev/null",
                                "--job-name=blocker", "--wrap=sleep 300").strip()
    try:
        while "RUNNING" not in slurm_cluster.run("squeue", "--noheader", f"--jobs={blocker}", "--format=%T"):
            time.sleep(0.2)
        system = Slurm(partition="tight", workdir=tmp_path / "shared", poll_interval=1.0, start_timeout=8)
        with bigmachine.start(system) as b:
            begun = time.monotonic()
            (m,) = b.start(1, bigmachine.Services(E=Echo()))
            m.wait(bigmachine.STOPPED, timeout=20)
            assert time.monotonic() - begun <= 8 + 2
            assert isinstance(m.err, bigmachine.MachineStopped)
            assert "PENDING" in str(m.err) and "Resources" in str(m.err) and "cancelled it" in str(m.err)
            assert slurm_cluster.live_jobs(f"bigmachine:{b.name}") == []
    finally:
        slurm_cluster.run("scancel", blocker)


def test_shutdown_leaves_no_job_and_no_bootstrap_file(slurm_cluster: Cluster, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    with bigmachine.start(Slurm(workdir=shared, poll_interval=1.0)) as b:
        machines = b.start(2, bigmachine.Services(E=Echo()))
        for m in machines:
            m.wait(bigmachine.RUNNING, timeout=60)
        running = b.name
    assert slurm_cluster.live_jobs(f"bigmachine:{running}") == []
    # Jobs that never started still hold their credentials file until the session ends.
    with bigmachine.start(Slurm(workdir=shared, poll_interval=1.0, sbatch_args=["--begin=now+600"])) as b:
        b.start(2, bigmachine.Services(E=Echo()))
        credentials = list(shared.glob(f"{b.name}/*/bootstrap.json"))
        assert len(credentials) == 2
        for path in credentials:  # readable by the job's user alone
            assert (path.stat().st_mode & 0o777, path.parent.stat().st_mode & 0o777) == (0o600, 0o700)
            assert path.parent.parent.stat().st_mode & 0o777 == 0o700
        assert len(slurm_cluster.live_jobs(f"bigmachine:{b.name}")) == 2
        queued = b.name
    assert slurm_cluster.live_jobs(f"bigmachine:{queued}") == []
    assert list(shared.rglob("*")) == []


def test_list_and_cancel_find_and_end_a_leftover_job(slurm_cluster: Cluster) -> None:
    session = f"leftover-{time.monotonic_ns()}"
    job = slurm_cluster.run("sbatch", "--parsable", f"--job-name=bigmachine:{session}", "--output=/dev/null",
                            "--wrap=sleep 300").strip()

    def cli(*args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "bigmachine.systems.slurm", *args], capture_output=True,
                              text=True, timeout=60, check=False)
        assert done.returncode == 0, done.stderr
        return done.stdout

    try:
        listed = cli("list", "--all-mine")
        assert job in listed and session in listed
        assert f"cancelled 1 jobs: {job}" in cli("cancel", "--session", session)
        assert slurm_cluster.live_jobs(f"bigmachine:{session}") == []
        assert "no bigmachine jobs of session" in cli("list", "--session", session)
    finally:
        slurm_cluster.run("scancel", job)
