"""The bootstrap agent on separate hosts (network namespaces): shipping code, machines, leases, refusals."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from waiting import wait_for

import bigmachine
from bigmachine.systems import bootstrap
from bigmachine.systems.bootstrap import BootstrapAuthority
from bigmachine.systems.hosts import Hosts

Lan = Agents = Any  # the fixtures' types live in this directory's conftest.py

ROOT = Path(__file__).resolve().parents[2]

PROGRAM = '''
"""A driver whose service needs its own __main__ and a local module: both must be shipped."""
import json, os, socket, sys, time
from pathlib import Path

import bigmachine
from bigmachine.systems.bootstrap import BootstrapAuthority
from bigmachine.systems.hosts import Hosts

import {helper}

PROJECT = os.path.dirname(os.path.abspath(__file__))


class Echo:
    def init(self, b):
        self.b = b

    def double(self, x):
        print(f"doubling {{x}} on", socket.gethostname(), flush=True)
        return {helper}.double(x)

    def where(self):
        return {{"cwd": os.getcwd(), "argv0": sys.argv[0], "helper": {helper}.__file__,
                "project_on_path": any(os.path.abspath(p or ".") == PROJECT for p in sys.path)}}

    def peer(self, addr):
        return self.b.dial(addr).call("E.double", 21)


def main():
    agents, out = sys.argv[1].split(","), Path(sys.argv[2])
    authority = BootstrapAuthority(lifetime=120)
    for i, agent in enumerate(agents):
        (out / f"creds{{i}}.json").write_text(json.dumps(authority.credentials(agent)))
    (out / "ready").touch()
    deadline = time.monotonic() + 60
    while not (out / "go").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    system = Hosts(agents, authority=authority, machines_per_agent=2, keepalive_period=0.5, keepalive_timeout=3.0,
                   keepalive_rpc_timeout=1.0)
    with bigmachine.start(system) as b:
        machines = b.start(3, bigmachine.Services(E=Echo()))  # two on the first host, one on the second
        for m in machines:
            m.wait(bigmachine.RUNNING, timeout=60)
        m0, _, m1 = machines
        results = {{"addrs": [m.addr for m in (m0, m1)], "maxprocs": m0.maxprocs, "double": m0.call("E.double", 4),
                   "where": m0.call("E.where"), "peer": m0.call("E.peer", m1.addr), "back": m1.call("E.peer", m0.addr)}}
        # One write: print() writes the text and its newline apart, and a machine's forwarded output
        # can land between them.
        sys.stdout.write("RESULTS " + json.dumps(results) + "\\n")
        sys.stdout.flush()
        time.sleep(600)  # until the test kills this driver


if __name__ == "__main__":
    main()
'''



def test_driver_ships_its_code_to_hosts_and_a_killed_driver_powers_them_off(
        lan: Lan, agents: Agents, tmp_path: Path) -> None:
    helper = f"helper_{secrets.token_hex(3)}"
    project = tmp_path / "project"
    project.mkdir()
    (project / "prog.py").write_text(PROGRAM.format(helper=helper))
    (project / f"{helper}.py").write_text("def double(x):\n    return 2 * x\n")
    port = 9100 + secrets.randbelow(800)
    hosts = lan.hosts[:2]
    out = tmp_path / "out"
    out.mkdir()
    log = tmp_path / "driver.log"
    (tmp_path / "tmp").mkdir()  # the killed driver can't remove its session's temp dir: keep it out of the leak check
    with open(log, "wb") as sink:
        driver = subprocess.Popen(
            [sys.executable, str(project / "prog.py"), ",".join(f"{a}:{port}" for _, a in hosts), str(out)],
            stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=project,
            env={**os.environ, "TMPDIR": str(tmp_path / "tmp")})
    try:
        wait_for(lambda: (out / "ready").exists() or driver.poll() is not None, 30, "the driver's credentials")
        started = [agents.start(ns, addr, port, json.loads((out / f"creds{i}.json").read_text()))
                   for i, (ns, addr) in enumerate(hosts)]
        (out / "go").touch()
        wait_for(lambda: "RESULTS " in log.read_text() or driver.poll() is not None, 60, "the driver's results")
        text = log.read_text()
        assert "RESULTS " in text, text
        results = json.loads(text.split("RESULTS ", 1)[1].splitlines()[0])
        first, second = results["addrs"]  # on ports above the agent's, in the order the bootstraps came
        assert first in {f"https://{hosts[0][1]}:{port + i}/" for i in (1, 2)}
        assert second == f"https://{hosts[1][1]}:{port + 1}/"
        assert results["double"] == 8 and results["peer"] == 42 and results["back"] == 42  # across hosts
        where = results["where"]
        assert where["cwd"].startswith(str(started[0].workdir)) and not where["project_on_path"]
        assert where["argv0"] == os.path.join(where["cwd"], "code", "prog.py")
        assert where["helper"] == os.path.join(where["cwd"], "code", f"{helper}.py")
        assert results["maxprocs"] == max(1, len(os.sched_getaffinity(0)) // 2)  # two machines share the host
        assert f"{first.removeprefix('https://').rstrip('/')}: doubling 4 on" in text  # output streamed back with the machine's prefix

        driver.send_signal(signal.SIGKILL)  # no more keepalives: the leases lapse
        driver.wait(10)
        for agent, machines in zip(started, (2, 1)):
            agent.wait_exit(20)
            assert agent.text().count("lease lapsed") == machines, agent.text()  # each machine's own lease
            assert "exited with status 0" in agent.marker.read_text()  # the power-off command ran
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait(10)


@pytest.fixture
def authority() -> BootstrapAuthority:
    return BootstrapAuthority(lifetime=60)


def _hosts(agent: str, authority: BootstrapAuthority, **options: object) -> Hosts:
    return Hosts([agent], authority=authority, keepalive_period=0.5, keepalive_timeout=3.0,
                 keepalive_rpc_timeout=1.0, start_timeout=30, **options)  # type: ignore[arg-type]


class Adder:
    def add(self, a: int, b: int) -> int:
        return a + b


def test_python_version_mismatch_fails_fast_naming_both(lan: Lan, agents: Agents, authority: BootstrapAuthority,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    ns, addr = lan.hosts[2]
    agent = f"{addr}:{9100 + secrets.randbelow(800)}"
    process = agents.start(ns, addr, int(agent.split(":")[1]), authority.credentials(agent))
    monkeypatch.setattr(bootstrap, "_PYTHON", "3.99.1")
    begun = time.monotonic()
    with bigmachine.start(_hosts(agent, authority)) as b:
        m, = b.start(1, bigmachine.Services(A=Adder()))
        assert m.wait(bigmachine.STOPPED, timeout=10) == bigmachine.STOPPED
    assert time.monotonic() - begun < 10
    here = ".".join(map(str, sys.version_info[:3]))
    assert "3.99.1" in str(m.err) and here in str(m.err) and "mismatch" in str(m.err)
    process.wait_exit(10)
    assert "refused" in process.marker.read_text()


def test_missing_requirements_are_pip_installed_and_present_ones_skipped(
        lan: Lan, agents: Agents, authority: BootstrapAuthority, tmp_path: Path) -> None:
    ns, addr = lan.hosts[2]
    port = 9100 + secrets.randbelow(800)
    agent = f"{addr}:{port}"
    record = tmp_path / "pip.txt"
    pip = tmp_path / "pip.py"  # stands in for pip: no network here
    pip.write_text(f"import sys; from pathlib import Path; Path({str(record)!r}).write_text("
                   "' '.join(sys.argv[1:]) + '\\n' + Path(sys.argv[-1]).read_text())\n")
    process = agents.start(ns, addr, port, authority.credentials(agent), pip=f"{sys.executable} {pip}")
    import cloudpickle

    wanted = [f"cloudpickle=={cloudpickle.__version__}", "bigmachine-test-absent==0.0.1"]
    with bigmachine.start(_hosts(agent, authority, requirements=wanted)) as b:
        m, = b.start(1, bigmachine.Services(A=Adder()), bigmachine.Environ({"SHIPPED": "yes"}))
        assert m.call("A.add", 2, 3, timeout=30) == 5
    assert record.read_text().splitlines()[1:] == ["bigmachine-test-absent==0.0.1"]
    process.wait_exit(15)
    assert "killed by SIGTERM" in process.marker.read_text() or "exited" in process.marker.read_text()


def test_driver_refuses_an_agent_it_did_not_expect(lan: Lan, agents: Agents, authority: BootstrapAuthority) -> None:
    ns, addr = lan.hosts[2]
    port = 9100 + secrets.randbelow(800)
    stranger = BootstrapAuthority()
    agents.start(ns, addr, port, stranger.credentials(f"{addr}:{port}"))  # another driver's agent
    with bigmachine.start(_hosts(f"{addr}:{port}", authority)) as b:
        m, = b.start(1, bigmachine.Services(A=Adder()))
        m.wait(bigmachine.STOPPED, timeout=15)
    assert "did not sign" in str(m.err) or "certificate" in str(m.err)


def test_agent_answers_only_its_name(lan: Lan, agents: Agents, authority: BootstrapAuthority) -> None:
    ns, addr = lan.hosts[2]
    port = 9100 + secrets.randbelow(800)
    agents.start(ns, addr, port, authority.credentials("some-other-agent"))
    with bigmachine.start(_hosts(f"{addr}:{port}", authority)) as b:
        m, = b.start(1, bigmachine.Services(A=Adder()))
        m.wait(bigmachine.STOPPED, timeout=15)
    assert "bigmachine agent some-other-agent" in str(m.err)


def test_agent_refuses_clients_without_the_driver_certificate(lan: Lan, agents: Agents,
                                                              authority: BootstrapAuthority) -> None:
    import socket
    import ssl

    ns, addr = lan.hosts[2]
    port = 9100 + secrets.randbelow(800)
    agent = f"{addr}:{port}"
    process = agents.start(ns, addr, port, authority.credentials(agent))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    with socket.create_connection((addr, port), timeout=5) as raw:
        try:
            with ctx.wrap_socket(raw) as tls_sock:
                tls_sock.sendall(b"\0\0\0\2{}")
                data = tls_sock.recv(1)  # TLS 1.3: the refusal arrives with the first read
        except (ssl.SSLError, OSError):
            data = b""
    assert data == b""
    assert process.process.poll() is None  # still waiting for its driver, who still gets in:
    with bigmachine.start(_hosts(agent, authority)) as b:
        m, = b.start(1, bigmachine.Services(A=Adder()))
        assert m.call("A.add", 1, 1, timeout=30) == 2
        assert b.system._capacity == {agent: len(os.sched_getaffinity(0))}  # by default, a machine per CPU
