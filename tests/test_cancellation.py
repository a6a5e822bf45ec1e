"""Cancellation that means it (issue 9).

Before: ``future.cancel()`` on a submitted call returned True while the remote call ran
on, and an ``InvalidStateError`` traceback was logged when the result came back. Now
cancelling a ``submit`` future or an ``acall`` task closes the call's connection; the
machine notices the disconnect and cancels the call: an ``async def`` method gets
``CancelledError``; a thread method's result is dropped and the call counted cancelled.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest
from services import Calc, Waits
from waiting import wait_for

import bigmachine
from bigmachine import RUNNING
from bigmachine.systems import Testing

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(autouse=True)
def every_log(caplog: pytest.LogCaptureFixture) -> None:
    """Debug records too: ``no_error_logged`` looks at everything the machine's server said."""
    caplog.set_level(logging.DEBUG)


@pytest.fixture
def waits(testing_session: bigmachine.B) -> Iterator[bigmachine.Machine]:
    yield from waiting_machine(testing_session)


@pytest.fixture
def calm_waits() -> Iterator[bigmachine.Machine]:
    """For load tests: keepalive bounds far from the load, so only cancellation is under test (not liveness)."""
    with bigmachine.start(Testing(keepalive_period=0.5, keepalive_timeout=30, keepalive_rpc_timeout=15)) as b:
        yield from waiting_machine(b)


def waiting_machine(b: bigmachine.B) -> Iterator[bigmachine.Machine]:
    (m,) = b.start(1, bigmachine.Services(Waits=Waits(), Calc=Calc()))
    assert m.wait(RUNNING, timeout=10) == RUNNING
    yield m
    m.call("Waits.release", timeout=5)  # no service thread left blocked



def counts(m: bigmachine.Machine) -> dict[str, int]:
    return m.call("Waits.counts", timeout=5)  # type: ignore[no-any-return]


def cancel_submitted(m: bigmachine.Machine, method: str) -> None:
    future = m.submit(method)
    wait_for(lambda: counts(m)["started"] == 1, 5.0)
    assert future.cancel() is True
    assert future.cancelled()
    with pytest.raises(concurrent.futures.CancelledError):
        future.result(1)


def cancel_submitted_on_a_connection_at_hand(m: bigmachine.Machine, method: str) -> None:
    """As ``cancel_submitted``, once a call left its connection idle: the call takes it and runs without a
    task (bigmachine/relayed.py)."""
    assert m.submit("Calc.add", 1, 1).result(5) == 2
    cancel_submitted(m, method)


def cancel_acall_on_a_loop_of_its_own(m: bigmachine.Machine, method: str) -> None:
    async def main() -> None:
        task = asyncio.ensure_future(m.acall(method))
        while (await m.acall("Waits.counts"))["started"] != 1:
            await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())


def cancel_acall_on_the_session_loop(m: bigmachine.Machine, method: str) -> None:

    async def main() -> None:
        task = asyncio.ensure_future(m.acall(method))
        while (await m.acall("Waits.counts"))["started"] != 1:
            await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run_coroutine_threadsafe(main(), m._session.loop).result(20)


HOW = {"submit": cancel_submitted, "submit on a connection at hand": cancel_submitted_on_a_connection_at_hand,
       "acall": cancel_acall_on_a_loop_of_its_own,
       "acall on the session loop": cancel_acall_on_the_session_loop}


def no_error_logged(caplog: pytest.LogCaptureFixture) -> None:
    bad = [r for r in caplog.records if r.levelno >= logging.ERROR or "InvalidStateError" in r.getMessage()
           or (r.exc_info and r.exc_info[0] is not None)]
    assert not bad, [r.getMessage() for r in bad]


@pytest.mark.parametrize("how", list(HOW))
def test_cancelling_an_async_method_raises_cancelled_error_in_it(waits: bigmachine.Machine, how: str,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    HOW[how](waits, "Waits.forever")
    wait_for(lambda: counts(waits)["cancelled"] == 1, 5.0)
    assert counts(waits) == {"started": 1, "cancelled": 1, "finished": 0}
    stats = waits.call("Supervisor.stats", timeout=5)["Waits.forever"]
    assert stats["cancelled"] == 1 and stats["errors"] == 0, stats
    assert waits.call("Calc.add", 1, 2, timeout=5) == 3  # the machine serves on
    no_error_logged(caplog)


@pytest.mark.parametrize("how", list(HOW))
def test_cancelling_a_thread_method_counts_it_cancelled_and_drops_its_result(
        waits: bigmachine.Machine, how: str, caplog: pytest.LogCaptureFixture) -> None:
    HOW[how](waits, "Waits.block")
    wait_for(lambda: waits.call("Supervisor.stats", timeout=5).get("Waits.block", {}).get("cancelled") == 1, 5.0)
    assert counts(waits)["finished"] == 0  # counted at once, while the thread still runs
    waits.call("Waits.release", timeout=5)
    wait_for(lambda: counts(waits)["finished"] == 1, 5.0)
    stats = waits.call("Supervisor.stats", timeout=5)["Waits.block"]
    assert stats["calls"] == 1 and stats["cancelled"] == 1 and stats["errors"] == 0, stats
    assert waits.call("Calc.add", 2, 2, timeout=5) == 4
    no_error_logged(caplog)


def test_cancel_after_the_result_is_in_returns_false(waits: bigmachine.Machine) -> None:
    future = waits.submit("Calc.add", 1, 2)
    assert future.result(5) == 3
    assert future.cancel() is False and future.result() == 3


def test_cancel_before_the_call_starts_sends_nothing(waits: bigmachine.Machine,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    futures: list[concurrent.futures.Future[Any]] = [waits.submit("Waits.forever") for _ in range(20)]
    for future in futures:
        future.cancel()
    assert all(f.cancelled() for f in futures)
    time.sleep(0.3)
    started = counts(waits)["started"]
    wait_for(lambda: counts(waits)["cancelled"] == started, 5.0)  # whatever had started was cancelled there too
    no_error_logged(caplog)


def test_under_load_cancelled_calls_end_and_the_others_get_their_answers(calm_waits: bigmachine.Machine,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    forever = [calm_waits.submit("Waits.forever") for _ in range(30)]
    answers = [calm_waits.submit("Calc.add", i, 1) for i in range(200)]
    wait_for(lambda: counts(calm_waits)["started"] == 30, timeout=10)
    for future in forever:
        assert future.cancel()
    assert [f.result(10) for f in answers] == [i + 1 for i in range(200)]
    wait_for(lambda: counts(calm_waits)["cancelled"] == 30, timeout=10)
    stats = calm_waits.call("Supervisor.stats", timeout=5)
    assert stats["Waits.forever"]["cancelled"] == 30 and stats["Waits.forever"]["errors"] == 0
    assert stats["Calc.add"]["errors"] == 0
    no_error_logged(caplog)
