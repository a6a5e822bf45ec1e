"""How many plain service methods run at once on a machine (``service_threads``), and who waits.

Each connection is served by its own thread (``rpc/serving.py``), which runs a plain method
itself once it holds a slot: no hop to a pool and back. Waiters get slots first come,
first served, and a waiter whose caller hung up leaves the queue.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

__all__ = ["ServiceSlots"]

_RECHECK = 0.1  # seconds between a waiter's looks at whether its caller is still there


class ServiceSlots:
    """At most ``limit`` plain methods running at once; counts of queued and running calls."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._lock = threading.Lock()  # taken directly where nobody need wait: no Python-level Condition calls
        self._free = threading.Condition(self._lock)
        self.queued = 0
        self.running = 0
        self._closed = False

    def acquire(self, abandoned: Callable[[], bool]) -> bool:
        """Takes a slot, waiting in turn; False if ``abandoned()`` turns true or the machine closes first."""
        with self._lock:
            if self.running < self._limit and not self.queued and not self._closed:
                self.running += 1
                return True
            self.queued += 1
            try:
                while self.running >= self._limit:
                    if abandoned() or self._closed:
                        return False
                    self._free.wait(_RECHECK)
                if self._closed:
                    return False
                self.running += 1
                return True
            finally:
                self.queued -= 1

    def release(self) -> None:
        with self._lock:
            self.running -= 1
            if self.queued:
                self._free.notify()

    def load(self) -> dict[str, int]:
        """Calls queued and running now, and the most that run at once."""
        return {"queued": self.queued, "running": self.running, "threads": self._limit}

    def close(self) -> None:
        """The machine is ending: queued calls give up, none starts."""
        with self._free:
            self._closed = True
            self._free.notify_all()
