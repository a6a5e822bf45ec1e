"""bigmachine.Executor: concurrent.futures over a session's machines, least-loaded first, resubmitting lost calls."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import re
import signal
import time
from collections.abc import Iterator

import pytest

import bigmachine
import bigmachine.executor
from bigmachine.executor import Progress
from bigmachine.systems import Testing


def slow_pid(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def boom(x: int) -> int:
    if x == 3:
        raise ValueError(f"boom at {x}")
    return x


@pytest.fixture(scope="module")
def local_machines(local_session: bigmachine.B) -> Iterator[list[bigmachine.Machine]]:
    """Four Local machines running a user service of their own: the Executor runs beside it."""
    machines = local_session.start(4, bigmachine.Services(Noop=object()))
    for m in machines:
        m.wait(bigmachine.RUNNING, timeout=60)
    yield machines


def test_map_of_10000_items_on_4_local_machines_comes_back_in_order(local_session: bigmachine.B,
                                                                    local_machines: list[bigmachine.Machine]) -> None:
    offset = 7  # a closure: shipped by value
    with local_session.executor(machines=local_machines) as executor:
        assert list(executor.map(lambda x: x * x + offset, range(10_000))) == [x * x + offset for x in range(10_000)]
        assert list(executor.map(pow, range(500), [2] * 500, chunksize=64)) == [x * x for x in range(500)]
    for m in local_machines:  # every machine took a share, and stays running: the executor didn't own them
        assert m.state == bigmachine.RUNNING
        assert m.rpc_stats.snapshot()["Functions.run_chunk"]["calls"] > 100


def test_calls_go_to_the_machine_with_fewest_in_flight(local_session: bigmachine.B,
                                                       local_machines: list[bigmachine.Machine]) -> None:
    with bigmachine.Executor(local_session, machines=local_machines) as executor:
        futures = [executor.submit(slow_pid, 0.5) for _ in range(8)]
        pids = [f.result(timeout=60) for f in futures]
    assert sorted(pids.count(pid) for pid in set(pids)) == [2, 2, 2, 2]
    assert set(pids) == {m.info["pid"] for m in local_machines}


def test_exceptions_keep_their_type_and_the_remote_traceback(local_session: bigmachine.B,
                                                            local_machines: list[bigmachine.Machine]) -> None:
    with local_session.executor(machines=local_machines) as executor:
        with pytest.raises(ValueError, match="boom at 3") as raised:
            executor.submit(boom, 3).result(timeout=60)
        cause = raised.value.__cause__
        assert isinstance(cause, bigmachine.RemoteError) and cause.machine in {m.addr for m in local_machines}
        assert "in boom" in cause.remote_traceback and "boom at 3" in cause.remote_traceback
        results = executor.map(boom, range(6), chunksize=2)
        assert [next(results), next(results)] == [0, 1]  # the chunk [2, 3] fails as a whole
        with pytest.raises(ValueError, match="boom at 3"):
            next(results)


async def double_later(x: int) -> int:
    await asyncio.sleep(0.01)
    return 2 * x


def test_keywords_reach_the_function_even_timeout_and_async_functions_run(testing_session: bigmachine.B) -> None:
    testing_session.start(1, bigmachine.Services(Noop=object()))
    with testing_session.executor() as executor:
        assert executor.submit(lambda a, timeout: (a, timeout), 1, timeout=5).result(timeout=30) == (1, 5)
        assert executor.submit(double_later, 4).result(timeout=30) == 8
        assert list(executor.map(double_later, range(5), chunksize=2)) == [0, 2, 4, 6, 8]


def test_a_machine_killed_mid_map_loses_nothing(local_session: bigmachine.B, caplog: pytest.LogCaptureFixture) -> None:
    machines = local_session.start(2, bigmachine.Services(Noop=object()))
    for m in machines:
        m.wait(bigmachine.RUNNING, timeout=60)
    victim = machines[0]
    seen: list[Progress] = []
    killed: list[int] = []

    def kill_once(progress: Progress) -> None:
        # Once: the process is reaped before the machine's state says STOPPED, so a second kill finds no process.
        seen.append(progress)
        if progress.done >= 20 and not killed:
            killed.append(victim.info["pid"])
            os.kill(victim.info["pid"], signal.SIGKILL)

    caplog.set_level(logging.WARNING, "bigmachine.executor")
    with local_session.executor(machines=machines, calls_per_machine=4) as executor:
        results = list(executor.map(lambda x: (time.sleep(0.02), x)[1], range(300), progress=kill_once))
    assert results == list(range(300)) and killed
    assert victim.state == bigmachine.STOPPED and machines[1].state == bigmachine.RUNNING
    assert f"machine {victim.addr} stopped" in caplog.text
    assert seen[-1].done == seen[-1].total == 300 and seen[-1].rate > 0 and seen[-1].eta == 0
    machines[1].cancel()


def test_a_long_map_logs_done_total_rate_and_eta(testing_session: bigmachine.B, monkeypatch: pytest.MonkeyPatch,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(bigmachine.executor, "_LOG_EVERY", 0.05)  # what counts as long, and how often it logs
    testing_session.start(1, bigmachine.Services(Noop=object()))
    caplog.set_level(logging.INFO, "bigmachine.executor")
    with testing_session.executor(calls_per_machine=2) as executor:
        assert list(executor.map(lambda x: (time.sleep(0.01), x)[1], range(40))) == list(range(40))
    lines = [r.getMessage() for r in caplog.records]
    assert any(re.fullmatch(r"map of <lambda>: \d+/40 done, [\d.]+/s, ETA (\d+ s|\?)", line) for line in lines), lines
    assert re.fullmatch(r"map of <lambda>: 40 items done in [\d.]+ s \([\d.]+/s\)", lines[-1])


def test_with_no_machine_left_calls_fail_with_machine_stopped(testing_system: Testing) -> None:
    with bigmachine.start(testing_system) as b:
        with bigmachine.Executor(b, n=1) as executor:
            [machine] = b.machines()
            machine.wait(bigmachine.RUNNING, timeout=30)
            running = executor.submit(time.sleep, 5)
            queued = [executor.submit(abs, -1) for _ in range(20)]
            testing_system.kill(machine)
            for future in [running, *queued]:
                with pytest.raises(bigmachine.MachineStopped, match="no machine is left") as raised:
                    future.result(timeout=30)
                assert raised.value.machine == machine.addr and raised.value.__cause__ is machine.err


def test_shutdown_with_cancel_futures_drops_queued_work(testing_session: bigmachine.B) -> None:
    testing_session.start(1, bigmachine.Services(Noop=object()))
    executor = testing_session.executor(calls_per_machine=1)
    running = executor.submit(time.sleep, 0.5)
    queued = [executor.submit(abs, -i) for i in range(10)]
    executor.shutdown(wait=True, cancel_futures=True)
    assert running.result() is None
    assert all(f.cancelled() for f in queued)
    with pytest.raises(RuntimeError, match="after the Executor's shutdown"):
        executor.submit(abs, 1)


def test_as_completed_wait_and_cancel_work_as_with_the_standard_executors(testing_session: bigmachine.B) -> None:
    testing_session.start(2, bigmachine.Services(Noop=object()))
    with testing_session.executor(calls_per_machine=1) as executor:
        slow, fast = executor.submit(time.sleep, 1.0), executor.submit(lambda: time.sleep(0.3) or "fast")
        queued = executor.submit(lambda: "never")  # both machines are busy: it waits in the executor's queue
        assert queued.cancel() and queued.cancelled()
        assert next(concurrent.futures.as_completed([slow, fast], timeout=30)) is fast
        assert fast.result() == "fast"
        done, not_done = concurrent.futures.wait([slow, fast], timeout=30)
        assert done == {slow, fast} and not not_done


def test_map_timeout_raises_and_cancels_the_rest(testing_session: bigmachine.B) -> None:
    testing_session.start(1, bigmachine.Services(Noop=object()))
    with testing_session.executor(calls_per_machine=1) as executor:
        results = executor.map(time.sleep, [0.0, 2.0, 2.0, 2.0], timeout=0.5)
        assert next(results) is None
        with pytest.raises(TimeoutError, match="within the timeout"):
            next(results)


@pytest.mark.parametrize("system", [None, Testing()], ids=["Local", "Testing"])
def test_own_session_is_made_and_shut_down(system: Testing | None) -> None:
    with bigmachine.Executor(n=2, system=system) as executor:
        assert list(executor.map(str.upper, ["a", "b"])) == ["A", "B"]
        session = executor.session
        assert type(session.system).__name__ == ("Local" if system is None else "Testing")
    assert all(m.state == bigmachine.STOPPED for m in session.machines())
    with pytest.raises(bigmachine.Error, match="shut down"):
        session.start(1, bigmachine.Services(Noop=object()))


def test_a_session_executor_uses_machines_started_later(testing_session: bigmachine.B) -> None:
    [first] = testing_session.start(1, bigmachine.Services(Noop=object()))
    with testing_session.executor(calls_per_machine=1) as executor:
        second = testing_session.start(1, bigmachine.Services(Noop=object()))[0]
        list(executor.map(time.sleep, [0.05] * 8))
    assert first.rpc_stats.snapshot()["Functions.run_chunk"]["calls"] >= 2
    assert second.rpc_stats.snapshot()["Functions.run_chunk"]["calls"] >= 2


def test_bad_arguments_say_what_to_give(testing_session: bigmachine.B) -> None:
    with pytest.raises(ValueError, match="Executor needs a session, machines, or n"):
        bigmachine.Executor()
    with pytest.raises(ValueError, match="has no running or starting machine"):
        testing_session.executor()
    with pytest.raises(ValueError, match="not both"):
        bigmachine.Executor(testing_session, n=1, machines=[])
    testing_session.start(1, bigmachine.Services(Noop=object()))
    with testing_session.executor() as executor, pytest.raises(ValueError, match="chunksize"):
        executor.map(abs, [1], chunksize=0)
