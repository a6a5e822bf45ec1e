"""User callbacks never run on the session loop (issue 9).

Before: a ``submit(...)`` done-callback ran on the session loop: a 15 s callback stopped
every keepalive and both machines of the session died; a callback that waited on another
call deadlocked the session. Now callbacks of futures completed on the loop run in the
session's callback threads, as a ``ThreadPoolExecutor``'s do, and those threads end at
``b.shutdown()``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from typing import Any

import pytest
from services import Calc

import bigmachine
from bigmachine import RUNNING
from bigmachine.futures import CallbackThreads
from bigmachine.systems import Testing

pytestmark = pytest.mark.timeout(60)


def test_a_long_callback_delays_neither_keepalives_nor_other_calls() -> None:
    system = Testing(keepalive_period=0.2, keepalive_timeout=2.0, keepalive_rpc_timeout=1.0)
    with bigmachine.start(system) as b:
        machines = b.start(2, bigmachine.Services(Calc=Calc()))
        for m in machines:
            assert m.wait(RUNNING, timeout=10) == RUNNING
        release = threading.Event()
        ran_on: list[str] = []

        def slow(future: concurrent.futures.Future[Any]) -> None:
            ran_on.append(threading.current_thread().name)
            release.wait(20)  # far longer than the keepalive timeout, until the checks below are done

        future = machines[0].submit("Calc.sleep", 0.3)  # still running when the callback is added
        future.add_done_callback(slow)
        try:
            assert future.result(5) == 0.3
            deadline = time.monotonic() + 2 * system.keepalive_timeout  # a blocked loop would lose both machines
            keepalives_before = {m: m.keepalive_reply_times()[:1] for m in machines}
            while time.monotonic() < deadline:  # the callback still runs all along
                for i, m in enumerate(machines):
                    begun = time.monotonic()
                    assert m.call("Calc.add", i, 1, timeout=2) == i + 1
                    assert asyncio.run(m.acall("Calc.aadd", i, 2, timeout=2)) == i + 2
                    assert m.submit("Calc.add", i, 3).result(2) == i + 3
                    assert time.monotonic() - begun < 1.5
                    assert m.state == RUNNING and not system.exited(m), m.err
                time.sleep(0.05)
            assert ran_on and ran_on[0].startswith("bigmachine-callback") and not release.is_set()
            for m in machines:  # keepalives went on meanwhile
                assert m.keepalive_reply_times()[:1] != keepalives_before[m]
        finally:
            release.set()


def test_a_callback_can_submit_another_call_and_wait_for_it(testing_session: bigmachine.B) -> None:
    (m,) = testing_session.start(1, bigmachine.Services(Calc=Calc()))
    assert m.wait(RUNNING, timeout=10) == RUNNING
    results: list[int] = []
    done = threading.Event()

    def chain(future: concurrent.futures.Future[Any], depth: int = 0) -> None:
        results.append(future.result())
        if depth < 5:
            inner = m.submit("Calc.add", future.result(), 1)
            inner.result(5)  # waits on another call from inside a callback: no deadlock
            chain(inner, depth + 1)
        else:
            done.set()

    m.submit("Calc.add", 0, 1).add_done_callback(chain)
    assert done.wait(10)
    assert results == [1, 2, 3, 4, 5, 6]


def test_many_callbacks_waiting_on_calls_all_finish(testing_session: bigmachine.B) -> None:
    """Every callback thread busy waiting: the pool grows, so the callbacks of the awaited calls still run."""
    (m,) = testing_session.start(1, bigmachine.Services(Calc=Calc()))
    assert m.wait(RUNNING, timeout=10) == RUNNING
    finished: list[int] = []
    lock = threading.Lock()

    def waiter(i: int) -> Any:
        def callback(future: concurrent.futures.Future[Any]) -> None:
            inner = m.submit("Calc.add", i, 0)
            got: list[int] = []
            inner.add_done_callback(lambda f: got.append(f.result()))
            assert inner.result(10) == i
            deadline = time.monotonic() + 10
            while not got and time.monotonic() < deadline:  # the inner callback needs a thread too
                time.sleep(0.01)
            with lock:
                finished.extend(got)
        return callback

    for i in range(20):
        m.submit("Calc.sleep", 0.01).add_done_callback(waiter(i))
    deadline = time.monotonic() + 20
    while len(finished) < 20 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sorted(finished) == list(range(20))


def test_callback_threads_end_at_shutdown(testing_system: Testing) -> None:
    with bigmachine.start(testing_system) as b:
        (m,) = b.start(1, bigmachine.Services(Calc=Calc()))
        assert m.wait(RUNNING, timeout=10) == RUNNING
        seen = threading.Event()
        m.submit("Calc.sleep", 0.1).add_done_callback(lambda f: seen.set())
        assert seen.wait(5)
    deadline = time.monotonic() + 2
    while any(t.name.startswith("bigmachine-callback") for t in threading.enumerate()):
        assert time.monotonic() < deadline, [t.name for t in threading.enumerate()]
        time.sleep(0.02)


def test_bursts_of_callbacks_reuse_the_idle_threads() -> None:
    """A thread woken for a callback that a busy thread took first used to end: then every burst
    started new threads (12,317 for 1,000 bursts of 32; an ``Executor.map`` of 5,000 items, 1,600)."""
    threads = CallbackThreads("test-burst")
    names: set[str] = set()
    ran = [0]
    lock = threading.Lock()

    def record() -> None:
        with lock:
            names.add(threading.current_thread().name)
            ran[0] += 1

    try:
        for _ in range(300):
            for _ in range(32):
                threads.run(record)
            time.sleep(0.001)
        deadline = time.monotonic() + 30
        while ran[0] < 300 * 32 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        threads.close()
    assert ran[0] == 300 * 32
    assert len(names) <= 320, len(names)  # a few bursts' worth at most; was several thousand


def test_callback_exceptions_are_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    threads = CallbackThreads("test-callback")
    ran = threading.Event()

    def bad() -> None:
        ran.set()
        raise RuntimeError("a callback failed")

    threads.run(bad)
    assert ran.wait(5)
    threads.close()
    deadline = time.monotonic() + 2
    while any(t.name.startswith("test-callback") for t in threading.enumerate()):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert "a done-callback raised" in caplog.text and "a callback failed" in caplog.text
