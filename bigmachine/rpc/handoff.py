"""Handing results to an event loop from other threads: many results, one wake-up.

``loop.call_soon_threadsafe`` per result writes to the loop's wake-up fd each time.
An inbox queues results and wakes its loop once for all that arrive while it is busy,
which is most of the cost of a hop under load (PERFORMANCE.md).
"""

from __future__ import annotations

import asyncio
import collections
import weakref
from typing import Any

__all__ = ["Inbox"]


class Inbox:
    """Delivers ``(future, ok, value)`` to futures of one loop, from any thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = weakref.ref(loop)  # weak: inboxes are kept per loop, and must not keep loops alive
        self._items: collections.deque[tuple[asyncio.Future[Any], bool, Any]] = collections.deque()
        self._scheduled = False

    def put(self, future: asyncio.Future[Any], ok: bool, value: Any) -> None:
        """Sets ``future``'s result (``ok``) or exception, soon, on its loop."""
        self._items.append((future, ok, value))
        if not self._scheduled:  # read after the append: see _deliver
            self._scheduled = True
            loop = self._loop()
            try:
                if loop is None:
                    raise RuntimeError("the loop is gone")
                loop.call_soon_threadsafe(self._deliver)
            except RuntimeError:  # the loop is closed or gone: nobody awaits these any more
                self._items.clear()

    def _deliver(self) -> None:
        self._scheduled = False  # before draining: a racing put is seen here, or schedules again
        items = self._items
        while items:
            future, ok, value = items.popleft()
            if future.cancelled():
                continue
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)
