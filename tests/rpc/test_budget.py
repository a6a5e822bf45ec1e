"""ConnectionBudget: a bound on connections, first come first served, shared by sync and async pools."""

from __future__ import annotations

import asyncio
import math
import threading
import time
from typing import Any

import pytest

from bigmachine.rpc.budget import ConnectionBudget


class Pool:
    """An owner that records what is released back to it."""

    def __init__(self) -> None:
        self.released: list[Any] = []

    def release(self, conn: Any) -> None:
        self.released.append(conn)


def test_slots_up_to_the_limit_then_waiters_get_freed_slots_in_order() -> None:
    budget, pool = ConnectionBudget(2), Pool()
    assert budget.take(pool, math.inf) is None and budget.take(pool, math.inf) is None
    assert budget.open == 2
    order: list[int] = []

    def wait(i: int) -> None:
        assert budget.take(pool, math.inf) is None  # a slot, not a connection
        order.append(i)

    threads = [threading.Thread(target=wait, args=(i,)) for i in range(3)]
    for queued, t in enumerate(threads, 1):
        t.start()
        while budget.waiting < queued:  # in this order
            time.sleep(0.001)
    for _ in range(3):
        budget.give_back()
        time.sleep(0.05)
    for t in threads:
        t.join(5)
    assert order == [0, 1, 2] and budget.open == 2


def test_a_released_connection_goes_straight_to_a_waiter_of_the_same_pool() -> None:
    budget, pool = ConnectionBudget(1), Pool()
    budget.take(pool, math.inf)
    got: list[Any] = []
    waiter = threading.Thread(target=lambda: got.append(budget.take(pool, math.inf)))
    waiter.start()
    while not budget.waiting:
        time.sleep(0.001)
    assert budget.hand_over(pool, "conn-1")
    waiter.join(5)
    assert got == ["conn-1"] and budget.open == 1  # the connection changed hands; no slot was freed


def test_a_waiter_of_another_pool_is_not_handed_a_connection() -> None:
    budget, sync_pool, async_pool = ConnectionBudget(1), Pool(), Pool()
    budget.take(sync_pool, math.inf)
    waiter = threading.Thread(target=lambda: budget.take(async_pool, math.inf))
    waiter.start()
    while not budget.waiting:
        time.sleep(0.001)
    assert not budget.hand_over(sync_pool, "sync-conn")  # the caller closes it instead...
    budget.give_back()  # ...and its slot passes on
    waiter.join(5)
    assert not waiter.is_alive() and budget.open == 1


def test_a_waiter_past_its_deadline_gets_timeout_error_and_leaves_the_queue() -> None:
    budget, pool = ConnectionBudget(1), Pool()
    budget.take(pool, math.inf)
    begun = time.monotonic()
    with pytest.raises(TimeoutError, match="no connection to the machine became free"):
        budget.take(pool, time.monotonic() + 0.2)
    assert 0.15 < time.monotonic() - begun < 2
    assert budget.waiting == 0
    budget.give_back()
    assert budget.open == 0


def test_a_connection_handed_to_a_waiter_that_gave_up_goes_back_to_its_pool() -> None:
    budget, pool = ConnectionBudget(1), Pool()
    budget.take(pool, math.inf)

    async def give_up() -> None:
        task = asyncio.ensure_future(budget.atake(pool))
        while not budget.waiting:
            await asyncio.sleep(0.001)
        assert budget.hand_over(pool, "conn")  # granted, but the waiter is cancelled before it runs
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(give_up())
    assert pool.released == ["conn"]


def test_async_waiters_are_woken_from_other_threads() -> None:
    budget, pool = ConnectionBudget(1), Pool()
    budget.take(pool, math.inf)

    async def wait() -> Any:
        return await asyncio.wait_for(budget.atake(pool), 5)

    async def main() -> Any:
        task = asyncio.ensure_future(wait())
        while not budget.waiting:
            await asyncio.sleep(0.001)
        threading.Thread(target=budget.give_back).start()
        return await task

    assert asyncio.run(main()) is None and budget.open == 1


def test_close_wakes_every_waiter_and_lets_later_takes_through() -> None:
    budget, pool = ConnectionBudget(1), Pool()
    budget.take(pool, math.inf)
    waiter = threading.Thread(target=lambda: budget.take(pool, math.inf))
    waiter.start()
    while not budget.waiting:
        time.sleep(0.001)
    budget.close()
    waiter.join(5)
    assert not waiter.is_alive()
    assert budget.take(pool, math.inf) is None  # at once: the pool finds itself closed and fails the call


def test_reclaimers_are_asked_for_room_when_a_caller_waits() -> None:
    budget, pool = ConnectionBudget(1), Pool()
    asked: list[int] = []
    budget.add_reclaimer(lambda: (asked.append(1), budget.give_back()))  # closes an idle connection of another pool
    budget.take(pool, math.inf)
    assert budget.take(pool, time.monotonic() + 2) is None
    assert asked == [1] and budget.open == 1


@pytest.mark.parametrize("limit", [0, -1, True, 1.5, "2"])
def test_the_limit_is_a_whole_number_of_at_least_one(limit: Any) -> None:
    with pytest.raises(ValueError, match="a connection limit must be a whole number >= 1"):
        ConnectionBudget(limit)
