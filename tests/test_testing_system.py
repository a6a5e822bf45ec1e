"""Failure paths on in-process Testing machines: kills, lapsed leases, bad input, state."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from services import BadInit, Echo

import bigmachine
from bigmachine import RUNNING, STARTING, STOPPED, State
from bigmachine.systems import Testing


def start_one(b: bigmachine.B, **services: object) -> bigmachine.Machine:
    (m,) = b.start(1, bigmachine.Services(services or {"Echo": Echo()}))
    m.wait(RUNNING, timeout=10)
    return m


def test_states_are_ordered() -> None:
    assert bigmachine.UNSTARTED < STARTING < RUNNING < STOPPED
    assert isinstance(RUNNING, State) and RUNNING == State.RUNNING


def test_calls_on_testing_machines(testing_session: bigmachine.B, testing_system: Testing) -> None:
    m = start_one(testing_session)
    assert m.call("Echo.add", 2, 3) == 5
    assert testing_system.n() == 1 and not testing_system.exited(m)


def test_kill_fails_pending_calls_at_once_with_machine_stopped(testing_session: bigmachine.B, testing_system: Testing) -> None:
    m = start_one(testing_session)
    errors: list[BaseException] = []

    def pending() -> None:
        try:
            m.call("Echo.sleep", 3)
        except BaseException as exc:
            errors.append(exc)

    waiters = [threading.Thread(target=pending) for _ in range(3)]
    for t in waiters:
        t.start()
    future = m.submit("Echo.sleep", 3)
    time.sleep(0.3)
    begun = time.monotonic()
    testing_system.kill(m)
    for t in waiters:
        t.join(5)
    with pytest.raises(bigmachine.MachineStopped):
        future.result(5)
    assert time.monotonic() - begun < 2
    assert len(errors) == 3 and all(isinstance(e, bigmachine.MachineStopped) for e in errors)
    assert m.wait(STOPPED, timeout=5) == STOPPED
    assert testing_system.exited(m) and testing_system.n() == 0
    begun = time.monotonic()
    with pytest.raises(bigmachine.MachineStopped) as info:
        m.call("Echo.echo", 1)
    assert time.monotonic() - begun < 1
    assert info.value.machine == m.addr and info.value.__cause__ is m.err
    assert info.value.temporary is False


def test_lapsed_lease_ends_the_machine(testing_system: Testing) -> None:
    """...and says why, as it is: no keepalive received (not "the driver stopped": it may be busy)."""
    b = bigmachine.start(testing_system)
    try:
        m = start_one(b)
        # The driver goes silent (as if killed): no more keepalives.
        for task in list(b._tasks):
            b.loop.call_soon_threadsafe(task.cancel)
        deadline = time.monotonic() + 10
        while not testing_system.exited(m) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert testing_system.exited(m)
        reason = b._instances[m].reason  # type: ignore[attr-defined]
        assert reason.startswith("its lease lapsed: no keepalive received for "), reason
    finally:
        b.shutdown()


def test_init_failure_stops_the_machine_with_that_error(testing_session: bigmachine.B) -> None:
    (m,) = testing_session.start(1, bigmachine.Services(Bad=BadInit()))
    assert m.wait(RUNNING, timeout=10) == STOPPED
    assert isinstance(m.err, RuntimeError) and "init failed on purpose" in str(m.err)
    with pytest.raises(bigmachine.MachineStopped):
        m.call("Bad.never")


def test_wait_times_out_and_states_never_go_back(testing_session: bigmachine.B, testing_system: Testing) -> None:
    m = start_one(testing_session)
    with pytest.raises(TimeoutError, match="still RUNNING"):
        m.wait(STOPPED, timeout=0.2)
    testing_system.kill(m)
    m.wait(STOPPED, timeout=5)
    assert not m._set_state(RUNNING) and m.state == STOPPED


def test_await_state_from_another_loop(testing_session: bigmachine.B) -> None:
    m = start_one(testing_session)

    async def main() -> State:
        return await m.await_state(RUNNING, timeout=5)

    assert asyncio.run(main()) == RUNNING


def test_start_rejects_bad_params(testing_session: bigmachine.B) -> None:
    with pytest.raises(ValueError, match="n >= 1"):
        testing_session.start(0, bigmachine.Services(Echo=Echo()))
    with pytest.raises(ValueError, match="Services"):
        testing_session.start(1)
    with pytest.raises(ValueError, match="given twice"):
        testing_session.start(1, bigmachine.Services(Echo=Echo()), bigmachine.Services(Echo=Echo()))
    with pytest.raises(bigmachine.SerializationError, match="service 'Locked'.*cannot be pickled"):
        testing_session.start(1, bigmachine.Services(Locked=threading.Lock()))
    with pytest.raises(ValueError, match="reserved"):
        bigmachine.Services(Supervisor=Echo())


def test_calls_after_shutdown_fail_fast(testing_system: Testing) -> None:
    b = bigmachine.start(testing_system)
    m = start_one(b)
    b.shutdown()
    b.shutdown()  # idempotent
    begun = time.monotonic()
    with pytest.raises(bigmachine.MachineStopped):
        m.call("Echo.echo", 1)
    assert time.monotonic() - begun < 1
    with pytest.raises(bigmachine.Error, match="shut down"):
        b.start(1, bigmachine.Services(Echo=Echo()))


def test_dial_unreachable_address_stops_within_deadline(testing_session: bigmachine.B) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    m = testing_session.dial(f"https://127.0.0.1:{port}/")
    assert not m.owned
    assert m.wait(RUNNING, timeout=10) == STOPPED
    with pytest.raises(bigmachine.MachineStopped):
        m.call("Echo.echo", 1)


def test_dial_existing_machine_is_not_owned(testing_session: bigmachine.B) -> None:
    m = start_one(testing_session)
    other = bigmachine.start(Testing())
    try:
        # A second session has its own authority: it cannot reach the first one's machines.
        stranger = other.dial(m.addr)
        assert stranger.wait(RUNNING, timeout=10) == STOPPED
    finally:
        other.shutdown()
    assert testing_session.dial(m.addr) is m


def test_retry_call_retries_temporary_errors_until_deadline(testing_session: bigmachine.B, monkeypatch: pytest.MonkeyPatch) -> None:
    m = start_one(testing_session)
    attempts = []
    real_call = bigmachine.Machine.call

    def flaky(self: bigmachine.Machine, method: str, *args: object, **kwargs: object) -> object:
        attempts.append(time.monotonic())
        if len(attempts) < 4:
            raise bigmachine.Unavailable("connection refused (test)")
        return real_call(self, method, *args, **kwargs)

    monkeypatch.setattr(bigmachine.Machine, "call", flaky)
    assert m.retry_call("Echo.echo", 7, timeout=10) == 7
    assert len(attempts) == 4
    gaps = [b - a for a, b in zip(attempts, attempts[1:])]
    assert all(g > 0.02 for g in gaps)

    attempts.clear()
    monkeypatch.setattr(bigmachine.Machine, "call", lambda *a, **k: (attempts.append(1), (_ for _ in ()).throw(bigmachine.Unavailable("down")))[1])
    begun = time.monotonic()
    with pytest.raises(bigmachine.Unavailable):
        m.retry_call("Echo.echo", 1, timeout=0.5)
    assert time.monotonic() - begun < 1.0 and len(attempts) > 2


def test_retry_call_never_retries_remote_exceptions(testing_session: bigmachine.B) -> None:
    m = start_one(testing_session)
    with pytest.raises(TypeError):
        m.retry_call("Echo.add", "a", 1, timeout=5)
    assert m.call("Echo.count") == 0
