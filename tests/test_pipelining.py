"""Calls of quick methods share connections, pipelined (bigmachine/rpc/client.py): under load each still
gets its own answer, and a call that turns slow, times out, is cancelled, or streams its reply leaves
the calls queued with it their answers, or a clear error."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import signal
import time
from collections import deque
from typing import Any

import pytest
from services import Echo, Mixed
from waiting import wait_for

import bigmachine
from bigmachine import RUNNING

pytestmark = pytest.mark.timeout(120)

@pytest.fixture(scope="module")
def machines(local_session: bigmachine.B) -> list[bigmachine.Machine]:
    started = local_session.start(2, bigmachine.Services(Echo=Echo(), Mixed=Mixed()))
    for machine in started:
        assert machine.wait(RUNNING, timeout=60) == RUNNING
    return started


def _made_quick(machine: bigmachine.Machine, *methods: str) -> None:
    """Calls each method a few times, one at a time, so its next calls are pipelined."""
    for method in methods:
        for _ in range(8):
            _settle(machine.submit(method, 0))


def _ahead(machine: bigmachine.Machine, seconds: float) -> concurrent.futures.Future[Any]:
    """Makes ``Mixed.reply`` quick and starts a call of it that holds its connection ``seconds``: the
    calls of it submitted next queue behind that one."""
    _made_quick(machine, "Mixed.reply")
    return machine.submit("Mixed.reply", "ahead", seconds)


def _assert_they_fail_saying(futures: list[concurrent.futures.Future[Any]], words: str) -> None:
    for future in futures:
        ok, value = _settle(future)
        assert not ok and isinstance(value, bigmachine.Unavailable) and words in str(value), value


def _assert_still_serving(machine: bigmachine.Machine) -> None:
    assert machine.submit("Mixed.reply", "after").result(timeout=30) == "after"
    assert machine.state == RUNNING


def _settle(future: concurrent.futures.Future[Any]) -> tuple[bool, Any]:
    try:
        return True, future.result(timeout=60)
    except Exception as exc:
        return False, exc


def test_pipelined_calls_under_load_each_get_their_own_answer(machines: list[bigmachine.Machine]) -> None:
    for machine in machines:
        _made_quick(machine, "Mixed.reply", "Echo.add", "Mixed.fail")
    pending: deque[tuple[int, concurrent.futures.Future[Any]]] = deque()

    def check(k: int, future: concurrent.futures.Future[Any]) -> None:
        ok, value = _settle(future)
        if k % 5 == 4:
            assert not ok and isinstance(value, ValueError) and str(value) == f"failed for {k}", (k, value)
        elif k % 5 == 3:
            assert ok and value == k + 1, (k, value)
        else:
            assert ok and value == ("value", k, b"x" * (k % 300)), (k, value)

    for k in range(4000):
        if len(pending) >= 64:
            check(*pending.popleft())
        machine = machines[k % 2]
        if k % 5 == 4:
            future = machine.submit("Mixed.fail", k)
        elif k % 5 == 3:
            future = machine.submit("Echo.add", k, 1)
        else:
            future = machine.submit("Mixed.reply", ("value", k, b"x" * (k % 300)))
        pending.append((k, future))
    while pending:
        check(*pending.popleft())


def test_a_quick_methods_call_waits_its_turn_behind_the_one_sent_before_it(machines: list[bigmachine.Machine]) -> None:
    machine = machines[1]
    ahead = _ahead(machine, 0.5)
    behind = machine.submit("Mixed.reply", "behind")
    time.sleep(0.2)
    assert not behind.done()  # pipelined: answered after the call ahead of it on their connection
    assert ahead.result(timeout=30) == "ahead" and behind.result(timeout=30) == "behind"


def test_acalls_from_another_loop_are_pipelined_and_keep_their_answers(machines: list[bigmachine.Machine]) -> None:
    machine = machines[0]
    _made_quick(machine, "Mixed.reply")

    async def main() -> list[Any]:
        return await asyncio.gather(*(machine.acall("Mixed.reply", k) for k in range(2000)))

    assert asyncio.run(main()) == list(range(2000))


def test_a_quick_method_that_turns_slow_keeps_every_answer_and_stops_being_pipelined(
        machines: list[bigmachine.Machine]) -> None:
    machine = machines[0]
    _made_quick(machine, "Mixed.reply", "Echo.echo")
    slow = machine.submit("Mixed.reply", "slow", 1.0)
    behind = [machine.submit("Mixed.reply", k) for k in range(20)]
    assert slow.result(timeout=30) == "slow"
    assert [f.result(timeout=30) for f in behind] == list(range(20))
    # Its reply said it was slow: its next call takes a connection of its own, and no quick call waits behind it.
    slower = machine.submit("Mixed.reply", "slower", 3.0)
    quick = [machine.submit("Echo.echo", k) for k in range(20)]
    assert [f.result(timeout=2.5) for f in quick] == list(range(20))
    assert not slower.done()
    assert slower.result(timeout=30) == "slower"


def test_a_pipelined_call_that_times_out_leaves_the_calls_beside_it_their_answers(
        machines: list[bigmachine.Machine]) -> None:
    machine = machines[1]
    _made_quick(machine, "Mixed.reply")
    before = [machine.submit("Mixed.reply", k, 0.2) for k in range(3)]
    late = machine.submit("Mixed.reply", "late", 0.5, timeout=0.3)
    after = [machine.submit("Mixed.reply", k) for k in range(3, 8)]
    with pytest.raises(TimeoutError, match="no reply within 0.3 s"):
        late.result(timeout=30)
    assert [f.result(timeout=30) for f in before + after] == list(range(8))
    _assert_still_serving(machine)


def test_a_cancelled_pipelined_call_leaves_the_calls_beside_it_their_answers(
        machines: list[bigmachine.Machine]) -> None:
    machine = machines[1]
    ahead = _ahead(machine, 0.3)
    cancelled = machine.submit("Mixed.reply", "cancelled")
    after = [machine.submit("Mixed.reply", k) for k in range(5)]
    assert cancelled.cancel()
    assert ahead.result(timeout=30) == "ahead"
    assert [f.result(timeout=30) for f in after] == list(range(5))
    with pytest.raises(concurrent.futures.CancelledError):
        cancelled.result(timeout=30)


def test_a_quick_method_that_streams_its_reply_keeps_the_calls_behind_it_in_order(
        machines: list[bigmachine.Machine]) -> None:
    machine = machines[0]
    _made_quick(machine, "Mixed.reply")
    streamed = machine.submit("Mixed.reply", "s", 0.3, 500)  # slow to start: the next calls queue behind it
    behind = [machine.submit("Mixed.reply", k) for k in range(5)]
    assert b"".join(streamed.result(timeout=30)) == b"".join(b"s:%d;" % i for i in range(500))
    assert [f.result(timeout=30) for f in behind] == list(range(5))


def test_calls_behind_a_streamed_reply_its_reader_abandons_fail_and_say_why(
        machines: list[bigmachine.Machine]) -> None:
    machine = machines[0]
    _made_quick(machine, "Mixed.reply")
    streamed = machine.submit("Mixed.reply", "s", 0.3, 1 << 20)
    behind = [machine.submit("Mixed.reply", k) for k in range(3)]
    chunks = streamed.result(timeout=30)
    assert next(chunks) == b"s:0;"
    chunks.close()  # 8 MiB and more of it unread: the connection can't be read on to the replies behind it
    _assert_they_fail_saying(behind, "a streamed reply ahead of this call on its connection was abandoned by its reader")
    _assert_still_serving(machine)


def test_calls_behind_a_streamed_reply_whose_caller_gave_up_fail_and_say_why(
        machines: list[bigmachine.Machine]) -> None:
    machine = machines[1]
    ahead = _ahead(machine, 0.5)
    gave_up = machine.submit("Mixed.reply", "s", 0.0, 1 << 20, timeout=0.2)  # times out while queued
    behind = machine.submit("Mixed.reply", "behind")
    with pytest.raises(TimeoutError):
        gave_up.result(timeout=30)
    assert ahead.result(timeout=30) == "ahead"
    _assert_they_fail_saying([behind], "had no reader left")
    _assert_still_serving(machine)


def test_pipelined_calls_to_a_machine_that_dies_fail_and_none_hangs(local_session: bigmachine.B) -> None:
    (machine,) = local_session.start(1, bigmachine.Services(Mixed=Mixed(), Echo=Echo()))
    assert machine.wait(RUNNING, timeout=60) == RUNNING
    _made_quick(machine, "Mixed.reply")
    ahead = machine.submit("Mixed.reply", "ahead", 30.0)
    behind = [machine.submit("Mixed.reply", k) for k in range(7)]
    wait_for(lambda: machine.connections()["data"] >= 1)
    os.kill(machine.submit("Echo.pid").result(timeout=30), signal.SIGKILL)
    for future in [ahead, *behind]:
        ok, value = _settle(future)
        assert not ok and isinstance(value, (bigmachine.MachineStopped, bigmachine.Unavailable)), value
