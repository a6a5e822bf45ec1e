"""Handing work to an event loop from other threads: many hand-offs, one wake-up.

``loop.call_soon_threadsafe`` per item writes to the loop's wake-up fd each time. A
``LoopQueue`` queues callbacks and wakes its loop once for all that arrive while it is
busy, which is most of the cost of a hop under load (docs/architecture.md). The session
uses one to start calls on its loop; an ``Inbox`` is one that settles futures.
"""

from __future__ import annotations

import asyncio
import collections
import weakref
from collections.abc import Callable
from typing import Any

__all__ = ["Inbox", "LoopQueue"]


class LoopQueue:
    """Runs ``fn(*args)`` on one loop, soon, from any thread, in the order queued."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = weakref.ref(loop)  # weak: queues are kept per loop, and must not keep loops alive
        self._items: collections.deque[tuple[Callable[..., Any], tuple[Any, ...]]] = collections.deque()
        self._scheduled = False

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """Queues ``fn(*args)``; RuntimeError if the loop is closed or gone (nothing queued then runs)."""
        self._items.append((fn, args))
        if not self._scheduled:  # read after the append: see _run
            self._scheduled = True
            loop = self._loop()
            try:
                if loop is None:
                    raise RuntimeError("the event loop is gone")
                loop.call_soon_threadsafe(self._run)
            except RuntimeError:
                self._items.clear()
                self._scheduled = False
                raise

    def _run(self) -> None:
        self._scheduled = False  # before draining: an append racing with us is seen, or schedules again
        items = self._items
        while items:
            fn, args = items.popleft()
            try:
                fn(*args)
            except Exception as exc:  # its own failure: reported as the loop reports a callback's; the rest run
                loop = self._loop()
                if loop is not None:
                    loop.call_exception_handler({"message": f"Exception in {fn!r}, queued for the loop",
                                                 "exception": exc})


class Inbox(LoopQueue):
    """Delivers ``(future, ok, value)`` to futures of one loop, from any thread."""

    def put(self, future: asyncio.Future[Any], ok: bool, value: Any) -> None:
        """Sets ``future``'s result (``ok``) or exception, soon, on its loop."""
        try:
            self.call_soon(_settle, future, ok, value)
        except RuntimeError:  # the loop is closed or gone: nobody awaits these any more
            pass


def _settle(future: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if future.cancelled():
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)
