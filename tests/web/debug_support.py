"""Helpers of the debug server tests (plain module: test files import it; fixtures live in conftest.py)."""

from __future__ import annotations

import argparse
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path

import pytest

import bigmachine
from bigmachine import driver

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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tool(name: str, package: str) -> str:
    """The path of a system tool, or a skip naming the Debian package that has it."""
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"`{name}` is not installed (apt install {package})")
    return path
