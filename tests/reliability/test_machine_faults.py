"""A machine that hangs, answers keepalives slowly, exits by itself or never finishes ``init``.

Each fault ends in a defined state (STOPPED with a clear error, or still RUNNING) within a
bound the test asserts. A machine killed outright is in tests/test_process_faults.py and
tests/test_testing_system.py.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import psutil
import pytest
from services import SlowInit, Work

import bigmachine
from bigmachine import RUNNING, STOPPED
from bigmachine.systems import Local, Testing

pytestmark = pytest.mark.timeout(120)

SLACK = 1.5  # seconds of scheduling slack on a busy 2-core host


def stop_bound(system: Any) -> float:
    """The longest a silent machine stays RUNNING after its last good keepalive.

    The keepalive loop stops the machine at the first failed keepalive at least
    ``keepalive_timeout`` after the last good one; failures come every period + rpc timeout.
    """
    return system.keepalive_timeout + system.keepalive_period + system.keepalive_rpc_timeout


def start_one(b: bigmachine.B, timeout: float = 60, **services: Any) -> bigmachine.Machine:
    (m,) = b.start(1, bigmachine.Services(services or {"Work": Work()}))
    assert m.wait(RUNNING, timeout=timeout) == RUNNING, m.err
    return m


class Pending:
    """A sync call left waiting in a thread of its own; records how it ended and when.

    ``warm``: the thread first makes a call, so its pending call goes over an open
    connection; otherwise the pending call has to connect (TCP and TLS handshake) first.
    """

    def __init__(self, m: bigmachine.Machine, method: str, *args: Any, warm: bool = False) -> None:
        self.error: BaseException | None = None
        self.result: Any = None
        self.ended = 0.0
        self._go = threading.Event()
        self._ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(m, method, args, warm), name="pending-call")
        self.thread.start()
        assert self._ready.wait(10), "the warm-up call did not return"

    def _run(self, m: bigmachine.Machine, method: str, args: tuple[Any, ...], warm: bool) -> None:
        try:
            if warm:
                m.call("Supervisor.info", timeout=10)
            self._ready.set()
            self._go.wait()
            self.result = m.call(method, *args)
        except BaseException as exc:
            self.error = exc
        finally:
            self._ready.set()
            self.ended = time.monotonic()

    def go(self) -> Pending:
        self._go.set()
        return self

    def join(self, timeout: float) -> None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"a pending call still waits {timeout} s after the machine stopped"


def submitted_calls(m: bigmachine.Machine, n: int, seconds: float) -> list[Any]:
    """Async calls in flight at once (each beyond the first needs a new connection)."""
    return [m.submit("Work.sleep", seconds) for _ in range(n)]


# --------------------------------------------------------------------- a hung machine


def wait_all(stopped: float, pending: dict[str, Pending], futures: list[Any], within: float) -> dict[str, str]:
    """How each pending call ended, waiting at most ``within`` seconds after ``stopped``; names the late ones."""
    ended: dict[str, str] = {}
    for name, call in pending.items():
        call.thread.join(max(0.0, stopped + within - time.monotonic()))
        ended[name] = "still waiting" if call.thread.is_alive() else type(call.error).__name__
    for i, future in enumerate(futures):
        try:
            future.result(max(0.0, stopped + within - time.monotonic()))
            ended[f"submit {i}"] = "returned"
        except BaseException as exc:
            ended[f"submit {i}"] = "still waiting" if isinstance(exc, TimeoutError) and not future.done() \
                else type(exc).__name__
    return ended


def test_hung_machine_is_stopped_by_keepalive_and_pending_calls_fail() -> None:
    """The machine's loop is blocked (it keeps its socket, answers nothing): STOPPED within the bound,
    and every pending call (on an open connection or still connecting) fails with MachineStopped."""
    system = Testing(keepalive_period=0.2, keepalive_timeout=1.5, keepalive_rpc_timeout=0.5)
    with bigmachine.start(system) as b:
        m = start_one(b)
        # In-process machines can't end a sleeping service thread: keep their sleeps short.
        pending = {"call on an open connection": Pending(m, "Work.sleep", 3, warm=True),
                   "call still connecting": Pending(m, "Work.sleep", 3)}
        stall = m.submit("Work.stall", 6.0)  # blocks the machine's event loop for 6 s
        time.sleep(0.1)
        begun = time.monotonic()
        for call in pending.values():
            call.go()
        futures = [stall, *submitted_calls(m, 3, 3)]
        assert m.wait(STOPPED, timeout=stop_bound(system) + SLACK) == STOPPED
        stopped = time.monotonic()
        # Not before the keepalive timeout could have lapsed (the last good keepalive may predate the stall).
        assert system.keepalive_timeout - system.keepalive_period - system.keepalive_rpc_timeout <= stopped - begun \
            <= stop_bound(system) + SLACK
        assert isinstance(m.err, bigmachine.MachineStopped) and "no keepalive reply" in str(m.err)
        ended = wait_all(stopped, pending, futures, within=1.0)
        assert set(ended.values()) == {"MachineStopped"}, f"1 s after the machine stopped: {ended}"
        assert all(call.error.__cause__ is m.err for call in pending.values())  # type: ignore[union-attr]
        begun = time.monotonic()
        with pytest.raises(bigmachine.MachineStopped):
            m.call("Work.add", 1, 2)
        assert time.monotonic() - begun < 1


def test_stopped_local_process_is_stopped_by_keepalive_and_killed() -> None:
    """SIGSTOP: the process keeps its socket but answers nothing; the driver gives up and kills it."""
    system = Local(keepalive_period=0.5, keepalive_timeout=2.0, keepalive_rpc_timeout=0.5)
    with bigmachine.start(system) as b:
        m = start_one(b)
        pid = m.call("Work.pid", timeout=10)
        try:
            pending = {"call on an open connection": Pending(m, "Work.sleep", 30, warm=True),
                       "call still connecting": Pending(m, "Work.sleep", 30)}
            os.kill(pid, signal.SIGSTOP)
            begun = time.monotonic()
            for call in pending.values():
                call.go()
            futures = submitted_calls(m, 2, 30)
            assert m.wait(STOPPED, timeout=stop_bound(system) + SLACK) == STOPPED
            stopped = time.monotonic()
            assert stopped - begun <= stop_bound(system) + SLACK
            assert isinstance(m.err, bigmachine.MachineStopped) and "no keepalive reply" in str(m.err)
            ended = wait_all(stopped, pending, futures, within=1.0)
            assert set(ended.values()) == {"MachineStopped"}, f"1 s after the machine stopped: {ended}"
            # The driver kills what it stopped: SIGTERM can't reach a stopped process, SIGKILL follows.
            gone, alive = psutil.wait_procs([psutil.Process(pid)], timeout=5)
            assert not alive, "the hung machine's process was not killed"
        finally:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass


def test_slow_keepalive_replies_under_the_rpc_timeout_keep_the_machine() -> None:
    system = Testing(keepalive_period=0.2, keepalive_timeout=1.0, keepalive_rpc_timeout=0.6)
    with bigmachine.start(system) as b:
        m = start_one(b)
        server = system._instance(m).server
        supervisor = server.registry.services["Supervisor"]  # the view the RPC layer dispatches to
        fast = supervisor.keepalive

        async def slow(lease: float) -> float:
            await asyncio.sleep(0.4)  # as a slow host or network would answer
            return await fast(lease)  # type: ignore[no-any-return]

        supervisor.keepalive = slow
        server.registry._methods.pop("Supervisor.keepalive", None)
        time.sleep(3 * system.keepalive_timeout)
        assert m.state == RUNNING, m.err
        times = m.keepalive_reply_times()
        assert len(times) >= 3 and all(t >= 0.35 for t in times[:3]), times
        assert m.call("Work.add", 2, 3, timeout=5) == 5


# --------------------------------------------------------------------- a machine that exits by itself


def test_local_machine_exiting_cleanly_is_stopped_with_its_exit_status() -> None:
    with bigmachine.start(Local()) as b:
        m = start_one(b)
        pid = m.call("Work.pid", timeout=10)
        pending = Pending(m, "Work.sleep", 30, warm=True).go()
        time.sleep(0.2)
        begun = time.monotonic()
        with pytest.raises(bigmachine.MachineStopped) as info:
            m.call("Work.exit_process", 0, timeout=10)  # os._exit(0) inside a service
        assert time.monotonic() - begun < 2
        assert m.state == STOPPED
        assert isinstance(m.err, bigmachine.MachineStopped)
        assert f"machine process {pid} exited with status 0" in str(m.err)
        assert info.value.__cause__ is m.err
        pending.join(2)
        assert isinstance(pending.error, bigmachine.MachineStopped)


@pytest.mark.parametrize("kind", ["testing", "local"])
def test_supervisor_exit_stops_the_machine_with_a_clear_error(kind: str) -> None:
    system = Testing() if kind == "testing" else Local()
    with bigmachine.start(system) as b:
        m = start_one(b)
        pending = Pending(m, "Work.sleep", 3 if kind == "testing" else 30).go()
        time.sleep(0.2)
        begun = time.monotonic()
        assert m.call("Supervisor.exit", "finished on purpose", timeout=10) is None  # replies, then exits
        assert m.wait(STOPPED, timeout=3) == STOPPED
        assert time.monotonic() - begun < 3
        assert isinstance(m.err, bigmachine.MachineStopped)
        expected = "finished on purpose" if kind == "testing" else "exited with status 0"
        assert expected in str(m.err)
        pending.join(2)
        assert isinstance(pending.error, bigmachine.MachineStopped)
        with pytest.raises(bigmachine.MachineStopped):
            m.call("Work.add", 1, 2)


# --------------------------------------------------------------------- init that never finishes


@pytest.mark.parametrize("kind", ["testing", "local"])
def test_init_that_hangs_stops_the_machine_with_timeout_error(kind: str) -> None:
    start_timeout = 2.0 if kind == "testing" else 3.0
    system = Testing(start_timeout=start_timeout) if kind == "testing" else Local(start_timeout=start_timeout)
    hang = 4.0 if kind == "testing" else 60.0  # a Testing machine's init thread can't be killed: keep it short
    with bigmachine.start(system) as b:
        begun = time.monotonic()
        (m,) = b.start(1, bigmachine.Services(Slow=SlowInit(hang)))
        assert m.wait(RUNNING, timeout=start_timeout + SLACK) == STOPPED
        took = time.monotonic() - begun
        assert start_timeout - 0.1 <= took <= start_timeout + SLACK
        assert isinstance(m.err, TimeoutError)
        assert m.addr and m.addr in str(m.err) and f"did not start within {start_timeout}" in str(m.err)
        with pytest.raises(bigmachine.MachineStopped) as info:
            m.call("Slow.never", timeout=5)
        assert info.value.__cause__ is m.err
        if kind == "local":
            pid = b._instances[m].process.pid
            gone, alive = psutil.wait_procs([psutil.Process(pid)] if psutil.pid_exists(pid) else [], timeout=5)
            assert not alive, "the machine whose init hung is still running"


# --------------------------------------------------------------------- a stream cut by the machine's death


def _read_some_then_kill(chunks: Iterator[bytes], kill: Any) -> list[bytes]:
    got = [next(chunks), next(chunks)]
    kill()
    for chunk in chunks:
        got.append(chunk)
    return got


def test_stream_cut_by_a_killed_machine_raises_machine_stopped_to_the_reader(testing_session: bigmachine.B,
                                                                              testing_system: Testing) -> None:
    m = start_one(testing_session)
    stream = m.call("Work.chunks", 200, 10, 0.02)
    with pytest.raises(bigmachine.MachineStopped):
        _read_some_then_kill(stream, lambda: testing_system.kill(m))


def test_async_stream_cut_by_a_killed_machine_raises_machine_stopped_to_the_reader(
        testing_session: bigmachine.B, testing_system: Testing) -> None:
    m = start_one(testing_session)

    async def main() -> list[bytes]:
        stream = await m.acall("Work.chunks", 200, 10, 0.02, timeout=10)
        got = [await stream.__anext__(), await stream.__anext__()]
        testing_system.kill(m)
        async for chunk in stream:
            got.append(chunk)
        return got

    with pytest.raises(bigmachine.MachineStopped):
        asyncio.run(main())
