"""Fixtures of the debug server tests: a Local cluster served on loopback, an HTTP client, real tools."""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from debug_services import Busy

import bigmachine
from bigmachine import RUNNING, driver

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
PREFIX = "/debug/bigmachine"


@dataclass
class Cluster:
    b: bigmachine.B
    machines: list[bigmachine.Machine]
    base: str  # http://127.0.0.1:PORT/debug/bigmachine

    @property
    def origin(self) -> str:
        return self.base.removesuffix(PREFIX)

    def key(self, machine: bigmachine.Machine) -> str:
        return machine.addr.removeprefix("https://").rstrip("/")


def start_driver(system: str = "local") -> bigmachine.B:
    """A session the way a user's program gets one: ``driver.start`` with a debug server on any free port."""
    parser = argparse.ArgumentParser()
    driver.add_arguments(parser)
    return driver.start(parser.parse_args(["--bigm.system", system, "--bigm.debug", "127.0.0.1:0"]))


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """Two Local machines running ``Busy``, behind a debug server (shared by a module's tests)."""
    with start_driver() as b:
        machines = b.start(2, bigmachine.Services(Busy=Busy()))
        for machine in machines:
            assert machine.wait(RUNNING, timeout=60) == RUNNING
        machines[0].call("Busy.work", 3)
        assert b.debug_url is not None
        yield Cluster(b, machines, b.debug_url.removesuffix("/status"))


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=60) as client:
        yield client


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _find_go() -> str | None:
    found = shutil.which("go")
    if found:
        return found
    candidates = sorted(glob.glob("/usr/lib/go*/bin/go"))
    return candidates[-1] if candidates else None


@pytest.fixture
def go_pprof(tmp_path: Path) -> tuple[list[str], dict[str, str]]:
    """Command and environment to run `go tool pprof` offline, or a skip."""
    go = _find_go()
    if go is None:
        pytest.skip("`go` is not installed (apt install golang-go); pprof output not checked by go")
    home = tmp_path / "gohome"
    env = dict(os.environ)
    env.update(HOME=str(home), GOPATH=str(home / "go"), GOCACHE=str(home / "cache"), GOFLAGS="-mod=mod",
               GOTOOLCHAIN="local", GOPROXY="off", PPROF_TMPDIR=str(home / "pprof"))
    return [go, "tool", "pprof"], env


def tool(name: str, package: str) -> str:
    """The path of a system tool, or a skip naming the Debian package that has it."""
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"`{name}` is not installed (apt install {package})")
    return path
