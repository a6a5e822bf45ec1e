"""Tests of bigmachine.profile.threads: thread stacks and asyncio tasks, on and off loop."""

from __future__ import annotations

import asyncio
import pickle
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from bigmachine.profile import athread_dump, thread_dump, threads_to_text


def block_on_event_in_dump_test(event: threading.Event) -> None:
    """Parks a thread where the dump must find it."""
    event.wait()


async def pending_task_in_dump_test(event: asyncio.Event) -> None:
    """A task that stays pending."""
    await inner_await_in_dump_test(event)


async def inner_await_in_dump_test(event: asyncio.Event) -> None:
    """What the pending task awaits, to check the await chain is followed."""
    await event.wait()


@pytest.fixture
def blocked_thread() -> Iterator[threading.Thread]:
    release = threading.Event()
    thread = threading.Thread(
        target=block_on_event_in_dump_test, args=(release,), name="blocked-in-dump-test"
    )
    thread.start()
    yield thread
    release.set()
    thread.join()


@pytest.fixture
def loop_in_thread() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="loop-in-dump-test")
    thread.start()
    yield loop

    async def cancel_all() -> None:
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run_coroutine_threadsafe(cancel_all(), loop).result(5)
    loop.call_soon_threadsafe(loop.stop)
    thread.join()
    loop.close()


def _thread(dump: list[dict[str, Any]], name: str) -> dict[str, Any]:
    found = [e for e in dump if e["kind"] == "thread" and e["name"] == name]
    assert len(found) == 1, [e["name"] for e in dump]
    return found[0]


def _task(dump: list[dict[str, Any]], coro: str) -> dict[str, Any]:
    found = [e for e in dump if e["kind"] == "task" and coro in e["coro"]]
    assert len(found) == 1, [e.get("coro") for e in dump]
    return found[0]


def test_blocked_thread_shows_with_its_function(blocked_thread: threading.Thread) -> None:
    dump = thread_dump()
    entry = _thread(dump, "blocked-in-dump-test")
    assert entry["ident"] == blocked_thread.ident
    assert entry["daemon"] is False and entry["current"] is False
    funcs = [frame[2] for frame in entry["stack"]]
    assert "block_on_event_in_dump_test" in funcs
    assert funcs.index("block_on_event_in_dump_test") < funcs.index("Event.wait")  # root first
    own = [frame for frame in entry["stack"] if frame[2] == "block_on_event_in_dump_test"][0]
    assert own[0] == __file__ and own[3] == "event.wait()"
    assert _thread(dump, threading.current_thread().name)["current"] is True
    assert pickle.loads(pickle.dumps(dump)) == dump


def test_athread_dump_shows_pending_task_with_coroutine_stack() -> None:
    async def main() -> list[dict[str, Any]]:
        event = asyncio.Event()
        task = asyncio.create_task(pending_task_in_dump_test(event), name="pending-one")
        await asyncio.sleep(0)
        dump = await athread_dump()
        event.set()
        await task
        return dump

    dump = asyncio.run(main())
    entry = _task(dump, "pending_task_in_dump_test")
    assert entry["name"] == "pending-one" and entry["state"] == "pending"
    funcs = [frame[2] for frame in entry["stack"]]
    assert funcs[:3] == ["pending_task_in_dump_test", "inner_await_in_dump_test", "Event.wait"]
    assert "unsafe" not in entry


def test_thread_dump_off_loop_collects_tasks_on_the_loop(
    loop_in_thread: asyncio.AbstractEventLoop,
) -> None:
    event = asyncio.Event()

    async def start() -> None:
        asyncio.get_running_loop().create_task(pending_task_in_dump_test(event))

    asyncio.run_coroutine_threadsafe(start(), loop_in_thread).result(5)
    dump = thread_dump(loop_in_thread)
    entry = _task(dump, "pending_task_in_dump_test")
    assert "unsafe" not in entry
    assert any("run_forever" in f[2] for f in _thread(dump, "loop-in-dump-test")["stack"])
    loop_in_thread.call_soon_threadsafe(event.set)


def test_thread_dump_of_a_stuck_loop_reads_tasks_off_loop(
    loop_in_thread: asyncio.AbstractEventLoop,
) -> None:
    event = asyncio.Event()
    unblock = threading.Event()

    async def start() -> None:
        asyncio.get_running_loop().create_task(pending_task_in_dump_test(event))

    asyncio.run_coroutine_threadsafe(start(), loop_in_thread).result(5)
    stuck = threading.Event()

    def get_stuck() -> None:
        stuck.set()
        unblock.wait(5)

    loop_in_thread.call_soon_threadsafe(get_stuck)
    assert stuck.wait(5)
    try:
        started = time.monotonic()
        dump = thread_dump(loop_in_thread, timeout=0.2)
        assert time.monotonic() - started < 2
    finally:
        unblock.set()
    entry = _task(dump, "pending_task_in_dump_test")
    assert entry["unsafe"] is True
    loop_funcs = [f[2] for f in _thread(dump, "loop-in-dump-test")["stack"]]
    assert "get_stuck" in " ".join(loop_funcs)
    loop_in_thread.call_soon_threadsafe(event.set)


def test_threads_to_text_groups_by_machine(blocked_thread: threading.Thread) -> None:
    async def on_loop() -> list[dict[str, Any]]:
        event = asyncio.Event()
        task = asyncio.create_task(pending_task_in_dump_test(event))
        await asyncio.sleep(0)
        dump = await athread_dump()
        event.set()
        await task
        return dump

    text = threads_to_text({
        "m1:443": thread_dump(),
        "m2:443": asyncio.run(on_loop()),
        "m3:443": "did not answer within 5 s",
    })
    m1, m2, m3 = text.index("== m1:443"), text.index("== m2:443"), text.index("== m3:443")
    assert m1 < m2 < m3
    assert 'thread ' in text and '"blocked-in-dump-test"' in text[m1:m2]
    assert "in block_on_event_in_dump_test" in text[m1:m2]
    assert "pending_task_in_dump_test" in text[m2:m3]
    assert "did not answer within 5 s" in text[m3:]
