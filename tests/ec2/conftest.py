"""Fixtures for the EC2 system and the bootstrap agent: moto's server, and hosts made of network namespaces.

``moto_env``: moto's EC2/SSM server on 127.0.0.1, with boto3 pointed at it (endpoint,
dummy credentials, region) for the module only. ``lan``: a switch namespace with a
bridge, the driver's end in this namespace (10.250.N.1) and host namespaces
(10.250.N.2, ...), all named ``bm`` + 4 hex digits and torn down whatever happens.
``agents``: starts bootstrap agents inside those hosts, each with its own working
directory and a ``sys.path`` holding only a copy of the bigmachine package and the
installed dependencies (no project, no editable install), and ends them.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest

import bigmachine

# ---------------------------------------------------------------------------- moto


@dataclass
class Moto:
    url: str

    def client(self, service: str = "ec2") -> Any:
        import boto3

        return boto3.client(service)

    def reset(self) -> None:
        import urllib.request

        urllib.request.urlopen(urllib.request.Request(f"{self.url}/moto-api/reset", method="POST"), timeout=10).close()


@pytest.fixture(scope="module")
def moto_env() -> Iterator[Moto]:
    """moto's server on 127.0.0.1 and boto3 configured for it, for this module only."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    with pytest.MonkeyPatch.context() as mp:
        for name in list(os.environ):
            if name.startswith("AWS_"):
                mp.delenv(name)
        mp.setenv("AWS_ENDPOINT_URL", url)
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        mp.setenv("AWS_DEFAULT_REGION", "us-west-2")
        mp.setenv("AWS_CONFIG_FILE", os.devnull)
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
        try:
            yield Moto(url)
        finally:
            server.stop()


# ---------------------------------------------------------------------------- hosts


@dataclass
class Lan:
    """Hosts on one bridge: ``hosts[i]`` is (namespace, address); the driver is ``driver``."""

    prefix: str
    driver: str
    hosts: list[tuple[str, str]] = field(default_factory=list)


def _ip(*args: str, ns: str | None = None) -> None:
    command = ["ip", "netns", "exec", ns, "ip", *args] if ns else ["ip", *args]
    subprocess.run(command, check=True, capture_output=True, timeout=30)


def _free_subnet() -> int:
    used = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True, check=True).stdout
    taken = {int(n) for n in re.findall(r"10\.250\.(\d+)\.", used)}
    free = [n for n in range(1, 255) if n not in taken]
    return free[secrets.randbelow(len(free))]


@pytest.fixture(scope="module")
def lan() -> Iterator[Lan]:
    """Three hosts (network namespaces) on a bridge, reachable from here; skips where they can't be made."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("network namespaces need root and iproute2 (`ip`); CI runs as root with iproute2")
    prefix = f"bm{secrets.token_hex(2)}"
    subnet = _free_subnet()
    switch = f"{prefix}-sw"
    made: list[str] = []
    try:
        try:
            _ip("netns", "add", switch)
        except subprocess.CalledProcessError as exc:
            pytest.skip(f"cannot create network namespaces here: {exc.stderr.decode().strip()}")
        made.append(switch)
        _ip("link", "add", "br0", "type", "bridge", ns=switch)
        _ip("link", "set", "br0", "up", ns=switch)
        _ip("link", "add", f"{prefix}-d", "type", "veth", "peer", "name", f"{prefix}-ds")
        _ip("link", "set", f"{prefix}-ds", "netns", switch)
        _ip("link", "set", f"{prefix}-ds", "master", "br0", "up", ns=switch)
        _ip("addr", "add", f"10.250.{subnet}.1/24", "dev", f"{prefix}-d")
        _ip("link", "set", f"{prefix}-d", "up")
        lan = Lan(prefix, f"10.250.{subnet}.1")
        for i in range(1, 4):
            ns, port, addr = f"{prefix}-h{i}", f"{prefix}-s{i}", f"10.250.{subnet}.{i + 1}"
            _ip("netns", "add", ns)
            made.append(ns)
            _ip("link", "add", f"{prefix}-h{i}", "type", "veth", "peer", "name", port)
            _ip("link", "set", f"{prefix}-h{i}", "netns", ns)
            _ip("link", "set", port, "netns", switch)
            _ip("link", "set", port, "master", "br0", "up", ns=switch)
            _ip("addr", "add", f"{addr}/24", "dev", f"{prefix}-h{i}", ns=ns)
            _ip("link", "set", f"{prefix}-h{i}", "up", ns=ns)
            _ip("link", "set", "lo", "up", ns=ns)
            lan.hosts.append((ns, addr))
        yield lan
    finally:
        for ns in reversed(made):
            _kill_namespace_processes(ns)
        subprocess.run(["ip", "link", "del", f"{prefix}-d"], capture_output=True, timeout=30)
        for ns in reversed(made):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


def _kill_namespace_processes(ns: str) -> None:
    """A last resort: whatever still runs in a namespace this test made (only ours can)."""
    pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, timeout=30).stdout.split()
    for pid in pids:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass


@pytest.fixture(scope="module")
def agent_site(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """The ``sys.path`` agents get: a copy of bigmachine and the installed dependencies, nothing else."""
    site = tmp_path_factory.mktemp("agent-site")
    shutil.copytree(Path(bigmachine.__file__).parent, site / "bigmachine",
                    ignore=shutil.ignore_patterns("__pycache__"))
    return [str(site), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]


_AGENT = "import sys; sys.path[:0] = {path!r}; from bigmachine.systems.agent import main; main()"


@dataclass
class AgentProcess:
    process: subprocess.Popen[bytes]
    log: Path
    marker: Path
    workdir: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_exit(self, timeout: float) -> int:
        return self.process.wait(timeout)


class Agents:
    """Starts agents in the lan's hosts (``-I -S``: no project, no site processing) and ends them."""

    def __init__(self, site: list[str], root: Path) -> None:
        self.site, self.root = site, root
        self.started: list[AgentProcess] = []
        self._ids = itertools.count()  # agents may start from several threads at once

    def start(self, ns: str, addr: str, port: int, credentials: dict[str, Any], *, pip: str = "") -> AgentProcess:
        name = f"agent{next(self._ids)}"
        workdir, log, marker = self.root / name, self.root / f"{name}.log", self.root / f"{name}.poweroff"
        workdir.mkdir()
        creds = self.root / f"{name}.json"
        creds.write_text(json.dumps(credentials))
        command = ["ip", "netns", "exec", ns, sys.executable, "-I", "-S", "-c", _AGENT.format(path=self.site),
                   "--listen", f"{addr}:{port}", "--credentials", str(creds), "--workdir", str(workdir),
                   "--poweroff", f"sh -c 'echo \"$BIGMACHINE_POWEROFF_REASON\" > {marker}'"]
        if pip:
            command += ["--pip", pip]
        with open(log, "wb") as out:
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                       cwd=workdir, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
        agent = AgentProcess(process, log, marker, workdir)
        self.started.append(agent)
        deadline = time.monotonic() + 20
        while "listening on" not in agent.text():
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"agent in {ns} did not come up:\n{agent.text()}")
            time.sleep(0.02)
        return agent

    def stop_all(self) -> None:
        for agent in self.started:
            try:
                family = [agent.process.pid] + [p.pid for p in psutil.Process(agent.process.pid).children(True)]
            except psutil.NoSuchProcess:
                family = []
            for pid in family:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            agent.process.wait(10)


@pytest.fixture
def agents(agent_site: list[str], tmp_path: Path) -> Iterator[Agents]:
    started = Agents(agent_site, tmp_path)
    try:
        yield started
    finally:
        started.stop_all()
