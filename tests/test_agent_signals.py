"""An agent told to stop by SIGTERM (Slurm's scancel, systemd) ends its machines and leaves nothing behind."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import bigmachine
from bigmachine.systems.bootstrap import BootstrapAuthority
from bigmachine.systems.hosts import Hosts
from waiting import wait_for


class Adder:
    def add(self, a: int, b: int) -> int:
        return a + b


def _two_free_ports() -> int:
    """A port whose next one is free too: the agent's, and its first machine's."""
    while True:
        with socket.socket() as first, socket.socket() as second:
            first.bind(("127.0.0.1", 0))
            port = first.getsockname()[1]
            try:
                second.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            return int(port)



def test_a_flood_of_sigterms_ends_the_machine_and_removes_the_agents_temp_dir(tmp_path: Path) -> None:
    # Each signal used to raise SystemExit wherever it landed: the second or third cut the
    # agent's clean-up short, leaving its temp dir behind or skipping its power-off.
    port = _two_free_ports()
    address = f"127.0.0.1:{port}"
    authority = BootstrapAuthority(lifetime=60)
    credentials, temp, log, marker = (tmp_path / n for n in ("credentials.json", "tmp", "agent.log", "poweroff"))
    credentials.write_text(json.dumps(authority.credentials(address)))
    temp.mkdir()
    with open(log, "wb") as out:
        agent = subprocess.Popen(
            [sys.executable, "-m", "bigmachine.systems.agent", "--listen", address, "--credentials", str(credentials),
             "--poweroff", f"sh -c 'echo \"$BIGMACHINE_POWEROFF_REASON\" > {marker}'"],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "TMPDIR": str(temp)})
    try:
        wait_for(lambda: "listening on" in log.read_text() or agent.poll() is not None, 30, "the agent to listen")
        system = Hosts([address], authority=authority, keepalive_period=0.5, keepalive_timeout=5.0,
                       keepalive_rpc_timeout=1.0, start_timeout=30)
        with bigmachine.start(system) as b:
            m, = b.start(1, bigmachine.Services(A=Adder()))
            assert m.call("A.add", 2, 3, timeout=30) == 5
            (workdir,) = temp.glob("bigmachine-agent-*")
            assert any(workdir.iterdir())  # the machine's code and keys
            deadline = time.monotonic() + 20
            while agent.poll() is None and time.monotonic() < deadline:
                agent.send_signal(signal.SIGTERM)
                time.sleep(0.002)
            # 143 from the agent; -SIGTERM where one lands after it has cleaned up (Python's exit restores the default)
            assert agent.wait(5) in (128 + signal.SIGTERM, -signal.SIGTERM), log.read_text()
            assert m.wait(bigmachine.STOPPED, timeout=5) == bigmachine.STOPPED  # told at once, not by a lapsed lease
            assert "its agent was stopped by a signal" in str(m.err)
        assert list(temp.iterdir()) == [], log.read_text()
        assert marker.read_text().strip() == "stopped by a signal"
        assert "agent: done: stopped by a signal" in log.read_text()
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait(10)
