"""Busy is not dead (issue 9): a machine full of work keeps its lease, and calls past the limits wait.

Liveness runs on a control plane apart from the data plane: the Supervisor's methods never
wait behind service calls (not in the service threads, not in the connection pool), and
connections to a machine are bounded, so thousands of calls in flight are back-pressure, not
thousands of TLS handshakes. Each test loads machines past the keepalive timeout and checks
that no machine is declared dead and every call gets its own answer.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import psutil
import pytest
from services import Busy, Relay

import bigmachine
from bigmachine import RUNNING, STOPPED
from bigmachine.systems import Local, Testing

pytestmark = pytest.mark.timeout(180)

SLACK = 1.5
SHORT = {"keepalive_period": 0.5, "keepalive_timeout": 4.0, "keepalive_rpc_timeout": 2.0}


def start(b: bigmachine.B, n: int = 1, **services: object) -> list[bigmachine.Machine]:
    machines = b.start(n, bigmachine.Services(services or {"Busy": Busy()}))
    for m in machines:
        assert m.wait(RUNNING, timeout=60) == RUNNING, m.err
    return machines


@pytest.fixture
def short_local() -> Iterator[bigmachine.B]:
    """Local machines with a 4 s keepalive timeout, so a few seconds of work outlast it."""
    with bigmachine.start(Local(**SHORT)) as b:
        yield b


def test_long_calls_filling_the_service_threads_keep_the_machine_alive() -> None:
    """70 calls of 5 s on one machine (64 threads: 6 queue there) outlast the 4 s keepalive timeout: no false death."""
    with bigmachine.start(Local(**SHORT, max_connections=80)) as b:
        (m,) = start(b)
        check_long_calls(m)


def test_long_calls_past_the_connection_limit_wait_in_the_driver(short_local: bigmachine.B) -> None:
    """The same 70 calls with the default 64 connections: 6 wait their turn in the driver, none is lost."""
    (m,) = start(short_local)
    futures = [m.submit("Busy.sleep", 5.0, i) for i in range(70)]
    time.sleep(2.0)
    assert m.call("Supervisor.status", timeout=2)["calls"] == {"queued": 0, "running": 64, "threads": 64}
    assert m.connections()["data"] == 64
    assert [f.result(timeout=30) for f in futures] == list(range(70))
    assert m.state == RUNNING, m.err


def check_long_calls(m: bigmachine.Machine) -> None:
    futures = [m.submit("Busy.sleep", 5.0, i) for i in range(70)]
    time.sleep(2.0)
    calls = m.call("Supervisor.status", timeout=2)["calls"]  # the control plane answers meanwhile
    assert calls == {"queued": 6, "running": 64, "threads": 64}
    assert [f.result(timeout=30) for f in futures] == list(range(70))
    assert m.state == RUNNING, m.err
    assert m.call("Busy.sleep", 0, "still here", timeout=5) == "still here"


def test_thousands_of_calls_in_flight_use_a_bounded_number_of_connections() -> None:
    """3,000 submits at once: at most ``max_connections`` data connections, the rest wait their turn."""
    system = Local(**SHORT, max_connections=16)
    with bigmachine.start(system) as b:
        (m,) = start(b)
        fds_before = psutil.Process().num_fds()
        futures = [m.submit("Busy.sleep", 0.002, i) for i in range(3000)]
        peak_connections, peak_fds = 0, 0
        while not all(f.done() for f in futures):
            peak_connections = max(peak_connections, m.connections()["data"])
            peak_fds = max(peak_fds, psutil.Process().num_fds())
            time.sleep(0.01)
        assert [f.result() for f in futures] == list(range(3000))
        assert 1 <= peak_connections <= 16, peak_connections
        assert peak_fds - fds_before <= 16 + 8, (fds_before, peak_fds)
        assert m.state == RUNNING, m.err


def test_control_calls_never_wait_behind_a_full_connection_pool() -> None:
    """With every data connection busy, Supervisor calls still answer at once (their own connections)."""
    system = Testing(keepalive_period=0.2, keepalive_timeout=1.5, keepalive_rpc_timeout=0.5, max_connections=2)
    with bigmachine.start(system) as b:
        (m,) = start(b)
        long_calls = [m.submit("Busy.sleep", 3.0, i) for i in range(4)]
        time.sleep(0.5)
        assert m.connections()["data"] == 2
        begun = time.monotonic()
        assert m.call("Supervisor.info", timeout=1)["pid"] > 0
        assert "process" in m.mem_info(timeout=1)
        assert time.monotonic() - begun < 1.0
        assert [f.result(timeout=20) for f in long_calls] == [0, 1, 2, 3]
        assert m.state == RUNNING


def test_a_call_waiting_for_a_connection_keeps_its_own_deadline() -> None:
    system = Testing(keepalive_period=0.2, keepalive_timeout=1.5, keepalive_rpc_timeout=0.5, max_connections=1)
    with bigmachine.start(system) as b:
        (m,) = start(b)
        busy = m.submit("Busy.sleep", 2.0, "first")
        time.sleep(0.3)
        begun = time.monotonic()
        with pytest.raises(TimeoutError):
            m.call("Busy.sleep", 0, "second", timeout=0.5)
        assert time.monotonic() - begun < 0.5 + SLACK
        assert m.call("Busy.sleep", 0, "third") == "third"  # no deadline: it waits its turn
        assert busy.result(timeout=10) == "first"


def test_service_threads_are_an_option_and_the_status_shows_queued_calls() -> None:
    system = Testing(keepalive_period=0.2, keepalive_timeout=1.5, keepalive_rpc_timeout=0.5, service_threads=2)
    with bigmachine.start(system) as b:
        (m,) = start(b)
        futures = [m.submit("Busy.sleep", 2.5, i) for i in range(5)]  # 2 run, 3 queue, past the timeout
        time.sleep(0.5)
        calls = m.call("Supervisor.status", timeout=1)["calls"]
        assert calls == {"queued": 3, "running": 2, "threads": 2}
        assert [f.result(timeout=30) for f in futures] == [0, 1, 2, 3, 4]
        assert m.state == RUNNING, m.err
    with pytest.raises(ValueError, match="service_threads must be a whole number >= 1, not 0"):
        Testing(service_threads=0)
    with pytest.raises(ValueError, match="max_connections must be a whole number >= 1, not True"):
        Local(max_connections=True)


def test_idle_connections_are_closed(testing_session: bigmachine.B, monkeypatch: pytest.MonkeyPatch) -> None:
    (m,) = start(testing_session)
    list(concurrent.futures.ThreadPoolExecutor(4).map(lambda i: m.call("Busy.sleep", 0.1, i), range(8)))
    assert m.connections()["data"] >= 1
    testing_session.loop.call_soon_threadsafe(m.close_idle, 0.0)
    deadline = time.monotonic() + 5
    while m.connections()["data"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert m.connections()["data"] == 0
    assert m.call("Busy.sleep", 0, "again") == "again"  # and a new one opens as needed


def test_a_held_interpreter_is_not_death_and_a_longer_hold_is_reported_with_its_stacks() -> None:
    """A GIL held past half the timeout dumps the machine's stacks; held past the timeout, the machine
    is stopped with "no keepalive reply for N s" and those stacks (faulthandler runs without the GIL)."""
    with bigmachine.start(Local(**SHORT)) as b:
        (m,) = start(b)
        assert m.call("Busy.hold_gil", 2.5, timeout=10) == 2.5  # held under the timeout: alive
        assert m.state == RUNNING
        held = m.submit("Busy.hold_gil", 30.0)
        assert m.wait(STOPPED, timeout=sum(SHORT.values()) + 5 * SLACK) == STOPPED
        message = str(m.err)
        assert "no keepalive reply for" in message, message
        assert "its threads, dumped while it was held" in message and "hold_gil" in message, message
        with pytest.raises(bigmachine.MachineStopped):
            held.result(timeout=5)


# ---------------------------------------------------------------------------- dialled machines


@pytest.fixture
def pair() -> Iterator[tuple[bigmachine.B, Testing, bigmachine.Machine, bigmachine.Machine]]:
    """Two in-process machines: ``relay`` dials ``peer`` from inside."""
    system = Testing(keepalive_period=0.2, keepalive_timeout=1.5, keepalive_rpc_timeout=0.5)
    with bigmachine.start(system) as b:
        relay, peer = start(b, 2, Relay=Relay(), Busy=Busy())
        yield b, system, relay, peer


def test_a_dialled_peer_cancelled_is_dialled_afresh(pair: tuple[bigmachine.B, Testing, bigmachine.Machine, bigmachine.Machine]) -> None:
    _, _, relay, peer = pair
    assert relay.call("Relay.call", peer.addr, "Busy.sleep", 0, "one") == "one"
    assert relay.call("Relay.same_object", peer.addr)
    relay.call("Relay.cancel", peer.addr)
    assert relay.call("Relay.call", peer.addr, "Busy.sleep", 0, "two", timeout=5) == "two"  # a fresh machine
    assert peer.state == RUNNING  # cancelling a dialled machine only forgets it


def test_a_dialled_peer_that_hangs_is_stopped_and_pending_calls_fail(
        pair: tuple[bigmachine.B, Testing, bigmachine.Machine, bigmachine.Machine]) -> None:
    """The peer's loop is blocked: the relay's pings fail, and within the timeout its calls to methods on that
    loop end with MachineStopped."""
    _, _, relay, peer = pair
    assert relay.call("Relay.call", peer.addr, "Busy.sleep", 0, "warm") == "warm"
    pending = relay.submit("Relay.call", peer.addr, "Busy.asleep", 0.5)  # no deadline
    retrying = relay.submit("Relay.retry_call", peer.addr, "Busy.asleep", 0.5)  # nor here
    stall = peer.submit("Busy.stall_loop", 8.0)
    begun = time.monotonic()
    for future in (pending, retrying):
        with pytest.raises(bigmachine.MachineStopped, match="no ping reply for"):
            future.result(timeout=1.5 + 0.2 + 0.5 + 6 * SLACK)
    assert time.monotonic() - begun < 1.5 + 0.2 + 0.5 + 6 * SLACK
    assert relay.call("Relay.state", peer.addr) in ("STARTING", "STOPPED")  # a new dial, or the stopped one
    stall.cancel()


def test_calls_without_a_deadline_to_a_hung_machine_end_with_machine_stopped(monkeypatch: pytest.MonkeyPatch) -> None:
    """A SIGSTOPped machine accepts TCP but never finishes a TLS handshake: new connections time out and are
    tried again, so calls without a deadline end with MachineStopped once keepalives declare it dead,
    never with "TimeoutError: no reply within None s"."""
    from bigmachine.rpc import client

    monkeypatch.setattr(client, "CONNECT_TIMEOUT", 0.5)
    with bigmachine.start(Local(**SHORT)) as b:
        (m,) = start(b)
        pid = m.call("Busy.pid")  # a sync connection now idle: the sync call below reuses it
        os.kill(pid, signal.SIGSTOP)
        try:
            submitted = m.submit("Busy.sleep", 0, "never")  # needs a new (async) connection

            async def acall() -> Any:
                return await m.acall("Busy.sleep", 0, "never")

            in_thread = concurrent.futures.ThreadPoolExecutor(1).submit(asyncio.run, acall())
            bound = sum(SHORT.values()) + 4 * SLACK
            for future in (submitted, in_thread):
                with pytest.raises(bigmachine.MachineStopped, match="no keepalive reply for"):
                    future.result(timeout=bound)
            with pytest.raises(bigmachine.MachineStopped):
                m.call("Busy.sleep", 0, "never")
        finally:
            os.kill(pid, signal.SIGCONT)
