"""Fixtures of the debug server tests: a Local cluster served on loopback, an HTTP client."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest
from services import Observed
from debug_support import Cluster, start_driver

import bigmachine
from bigmachine import RUNNING
from bigmachine.web.cluster import SessionView


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """Two Local machines running ``Busy``, behind a debug server (shared by a module's tests)."""
    with start_driver() as b:
        machines = b.start(2, bigmachine.Services(Busy=Observed()))
        for machine in machines:
            assert machine.wait(RUNNING, timeout=60) == RUNNING
        machines[0].call("Busy.work", 3)
        assert b.debug_url is not None
        deadline = time.monotonic() + 10  # the machines' output reaches the driver on its own time
        while not all(SessionView(b).recent_output(m) for m in machines) and time.monotonic() < deadline:
            time.sleep(0.02)
        yield Cluster(b, machines, b.debug_url + "/debug/bigmachine")


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=60) as client:
        yield client
