"""rpc/handoff.py: work handed to a loop from other threads, many hand-offs sharing one wake-up."""

from __future__ import annotations

import asyncio
import threading

import pytest

from bigmachine.rpc.handoff import Inbox, LoopQueue


def test_calls_run_on_the_loop_in_order_and_share_wake_ups() -> None:
    async def main() -> tuple[list[int], int, set[int]]:
        loop = asyncio.get_running_loop()
        queue = LoopQueue(loop)
        ran: list[int] = []
        threads: set[int] = set()
        wakeups = 0
        original = queue._run

        def counting_run() -> None:
            nonlocal wakeups
            wakeups += 1
            original()

        queue._run = counting_run  # type: ignore[method-assign]

        def put_many() -> None:
            for i in range(1000):
                queue.call_soon(lambda i=i: (ran.append(i), threads.add(threading.get_ident())))

        thread = threading.Thread(target=put_many)
        thread.start()
        thread.join()
        while len(ran) < 1000:
            await asyncio.sleep(0.01)
        return ran, wakeups, threads | {threading.get_ident()}

    ran, wakeups, threads = asyncio.run(main())
    assert ran == list(range(1000))
    assert wakeups < 1000  # queued while the loop was busy (here: asleep in the test): one wake-up for many
    assert len(threads) == 1  # every call ran on the loop's own thread


def test_a_call_that_raises_is_reported_and_the_calls_queued_after_it_still_run() -> None:
    async def main() -> tuple[list[int], list[dict[str, object]]]:
        loop = asyncio.get_running_loop()
        reported: list[dict[str, object]] = []
        loop.set_exception_handler(lambda _, context: reported.append(context))
        queue, ran = LoopQueue(loop), []

        def fail() -> None:
            raise ValueError("bad item")

        queue.call_soon(ran.append, 1)
        queue.call_soon(fail)
        queue.call_soon(ran.append, 2)  # before: stranded until something else was queued
        await asyncio.sleep(0.05)
        return ran, reported

    ran, reported = asyncio.run(main())
    assert ran == [1, 2]
    assert len(reported) == 1 and isinstance(reported[0]["exception"], ValueError)
    assert "fail" in str(reported[0]["message"])


def test_a_closed_loop_refuses_work_and_an_inbox_drops_it() -> None:
    loop = asyncio.new_event_loop()
    queue, inbox = LoopQueue(loop), Inbox(loop)
    future = loop.create_future()
    loop.close()
    with pytest.raises(RuntimeError):
        queue.call_soon(print, "never")
    inbox.put(future, True, 1)  # nobody awaits a closed loop's futures: no error
    assert not future.done()


def test_an_inbox_settles_futures_and_skips_cancelled_ones() -> None:
    async def main() -> tuple[object, BaseException | None, bool]:
        loop = asyncio.get_running_loop()
        inbox = Inbox(loop)
        ok, failed, cancelled = loop.create_future(), loop.create_future(), loop.create_future()
        cancelled.cancel()
        threading.Thread(target=lambda: (inbox.put(ok, True, "value"), inbox.put(failed, False, KeyError("k")),
                                          inbox.put(cancelled, True, "late"))).start()
        await asyncio.wait([ok, failed])
        return ok.result(), failed.exception(), cancelled.cancelled()

    value, error, still_cancelled = asyncio.run(main())
    assert value == "value" and isinstance(error, KeyError) and still_cancelled
