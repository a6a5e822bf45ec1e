"""A bound on the connections open to one server, shared by its sync and async pools.

Without it every call past the idle ones opens a connection of its own: 10,000 calls in
flight made 10,000 TLS handshakes, and the keepalive waited behind them (issue 9). With
it, callers past the limit wait their turn, first come first served, each within its own
deadline. A connection released while callers wait goes straight to the first of them if
it is of the same pool; otherwise it is closed, and its slot passes on.
"""

from __future__ import annotations

import asyncio
import collections
import math
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

__all__ = ["ConnectionBudget", "Owner"]


class Owner(Protocol):
    """A pool drawing on a budget."""

    def release(self, conn: Any) -> None:
        """Takes back a connection (handed to a waiter that gave up meanwhile)."""


class _Waiter:
    """One caller waiting: a thread (an Event) or a task (a future on its loop); it gets a slot or a connection."""

    __slots__ = ("event", "future", "owner", "granted", "conn")

    def __init__(self, owner: Owner, future: asyncio.Future[None] | None = None) -> None:
        self.event = threading.Event() if future is None else None
        self.future = future
        self.owner = owner
        self.granted = False
        self.conn: Any = None

    def wake(self) -> None:
        if self.event is not None:
            self.event.set()
            return
        future = self.future
        assert future is not None
        try:
            future.get_loop().call_soon_threadsafe(_resolve, future)
        except RuntimeError:  # its loop is closed: nobody waits any more
            pass


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class ConnectionBudget:
    """At most ``limit`` connections open at once (idle ones included); FIFO past that."""

    def __init__(self, limit: int) -> None:
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            raise ValueError(f"a connection limit must be a whole number >= 1, not {limit!r}")
        self.limit = limit
        self.open = 0
        self._lock = threading.Lock()
        self._waiters: collections.deque[_Waiter] = collections.deque()
        self._reclaimers: list[Callable[[], None]] = []
        self._closed = False

    @property
    def waiting(self) -> int:
        """Callers waiting for a connection now."""
        return len(self._waiters)

    def add_reclaimer(self, reclaim: Callable[[], None]) -> None:
        """``reclaim()`` closes one idle connection of a pool, if it has one (any thread)."""
        self._reclaimers.append(reclaim)

    def take(self, owner: Owner, deadline: float) -> Any:
        """A slot (None: open a connection) or a released connection; blocks until one comes.

        TimeoutError past ``deadline``.
        """
        waiter = self._enqueue(owner, None)
        if waiter is None:
            return None
        assert waiter.event is not None
        left = None if deadline == math.inf else max(0.0, deadline - time.monotonic())
        if not waiter.event.wait(left):
            self._abandon(waiter)
            raise TimeoutError("no connection to the machine became free before the deadline")
        return waiter.conn

    async def atake(self, owner: Owner) -> Any:
        """The async twin of ``take``, waiting on the running loop (cancel it to give up)."""
        waiter = self._enqueue(owner, asyncio.get_running_loop().create_future())
        if waiter is None:
            return None
        assert waiter.future is not None
        try:
            await waiter.future
        except BaseException:
            self._abandon(waiter)
            raise
        return waiter.conn

    def _enqueue(self, owner: Owner, future: asyncio.Future[None] | None) -> _Waiter | None:
        """None when a slot is free now (taken); else the caller's place in the queue."""
        with self._lock:
            if self._closed:
                return None  # the pools are closing: the caller finds out and fails at once
            if self.open < self.limit and not self._waiters:
                self.open += 1
                return None
            waiter = _Waiter(owner, future)
            self._waiters.append(waiter)
        for reclaim in self._reclaimers:  # an idle connection of the other pool makes room
            reclaim()
        return waiter

    def hand_over(self, owner: Owner, conn: Any) -> bool:
        """Gives a released connection to the first waiter if it is ``owner``'s (True); False if none waits.

        When the first waiter is another pool's, the caller closes ``conn`` and its slot passes on.
        """
        with self._lock:
            if not self._waiters or self._waiters[0].owner is not owner:
                return False
            waiter = self._waiters.popleft()
            waiter.granted, waiter.conn = True, conn
        waiter.wake()
        return True

    def give_back(self) -> None:
        """Frees a slot (a connection closed, or a take abandoned): the first waiter gets it."""
        with self._lock:
            if not self._waiters:
                self.open -= 1
                return
            waiter = self._waiters.popleft()
            waiter.granted = True  # under the lock: a waiter abandoning now sees it, see _abandon
        waiter.wake()  # the slot passes on: ``open`` stays as it is

    def close(self) -> None:
        """Wakes every waiter, and lets later takes through: the pools are closed, callers fail at once."""
        with self._lock:
            self._closed = True
            waiters = list(self._waiters)
            self._waiters.clear()
            for waiter in waiters:
                waiter.granted = True
        for waiter in waiters:
            waiter.wake()

    def _abandon(self, waiter: _Waiter) -> None:
        """A waiter gave up; what it was granted meanwhile (a slot, a connection) goes to the next."""
        with self._lock:
            if not waiter.granted:
                self._waiters.remove(waiter)
                return
        if waiter.conn is not None:
            waiter.owner.release(waiter.conn)
        else:
            self.give_back()
