"""The thread pool that runs plain (non-async) service methods, with a cheap hop to and from the loop.

``loop.run_in_executor`` wraps every call in a concurrent future, an asyncio future
and their callbacks, and wakes the loop once per result. Here a call is one queue
put, and results finished while the loop is busy share one wake-up (an ``Inbox``): that
is most of the cost of a plain method's call on the machine.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from typing import Any

from .handoff import Inbox

__all__ = ["DEFAULT_SERVICE_THREADS", "ServiceThreads"]

DEFAULT_SERVICE_THREADS = 64

_STOP = None


class ServiceThreads:
    """Up to ``max_workers`` threads, started as calls need them and kept for the next ones."""

    def __init__(self, max_workers: int, name: str) -> None:
        self._max = max_workers
        self._name = name
        self._work: queue.SimpleQueue[tuple[asyncio.Future[Any], Callable[..., Any], tuple[Any, ...]] | None] = (
            queue.SimpleQueue())
        self._threads: list[threading.Thread] = []
        self._idle = 0
        self.queued = 0  # calls waiting for a thread
        self.running = 0  # calls in a thread now
        self._lock = threading.Lock()
        self._inbox: Inbox | None = None
        self._closed = False

    def run(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        """Runs ``fn(*args)`` in a pool thread; call on the event loop, await the result."""
        future = asyncio.get_running_loop().create_future()
        if self._closed:  # the machine is ending (a Testing machine killed): it answers nothing, as a dead process
            return future  # never resolved: cancelled with the machine's loop
        if self._inbox is None:
            self._inbox = Inbox(future.get_loop())
        with self._lock:
            self.queued += 1
            if self._idle:
                self._idle -= 1
            elif len(self._threads) < self._max:
                thread = threading.Thread(target=self._work_loop, args=(self._inbox,),
                                          name=f"{self._name}_{len(self._threads)}", daemon=True)
                self._threads.append(thread)
                thread.start()
        self._work.put((future, fn, args))
        return future

    def _work_loop(self, inbox: Inbox) -> None:
        while (item := self._work.get()) is not _STOP:
            future, fn, args = item
            with self._lock:
                self.queued -= 1
                self.running += 1
            try:
                result, ok = fn(*args), True
            except BaseException as exc:  # handed to the awaiting coroutine, like an executor does
                result, ok = exc, False
            del item, fn, args
            inbox.put(future, ok, result)
            del future, result
            with self._lock:
                self.running -= 1
                self._idle += 1

    def load(self) -> dict[str, int]:
        """Calls queued and running now, and the most threads there can be."""
        return {"queued": self.queued, "running": self.running, "threads": self._max}

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stops the threads once their current calls end (``cancel_futures`` drops queued calls)."""
        self._closed = True
        if cancel_futures:
            while True:
                try:
                    item = self._work.get_nowait()
                except queue.Empty:
                    break
                if item is not None:
                    item[0].get_loop().call_soon_threadsafe(item[0].cancel)
        for _ in self._threads:
            self._work.put(_STOP)
        if wait:
            for thread in self._threads:
                thread.join()
