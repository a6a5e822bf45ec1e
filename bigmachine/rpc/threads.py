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

__all__ = ["ServiceThreads"]

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
        self._lock = threading.Lock()
        self._inbox: Inbox | None = None
        self._closed = False

    def run(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        """Runs ``fn(*args)`` in a pool thread; call on the event loop, await the result."""
        if self._closed:
            raise RuntimeError("the machine's service threads are shut down")
        future = asyncio.get_running_loop().create_future()
        if self._inbox is None:
            self._inbox = Inbox(future.get_loop())
        with self._lock:
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
            try:
                result, ok = fn(*args), True
            except BaseException as exc:  # handed to the awaiting coroutine, like an executor does
                result, ok = exc, False
            del item, fn, args
            inbox.put(future, ok, result)
            del future, result
            with self._lock:
                self._idle += 1

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
