"""The thread pool that runs plain (non-async) service methods, with a cheap hop to and from the loop.

``loop.run_in_executor`` wraps every call in a concurrent future, an asyncio future
and their callbacks, and wakes the loop once per result. Here a call is one queue
put, and results finished while the loop is busy share one wake-up: that is most of
the cost of a plain method's call on the machine.
"""

from __future__ import annotations

import asyncio
import collections
import queue
import threading
from collections.abc import Callable
from typing import Any

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
        self._done: collections.deque[tuple[asyncio.Future[Any], bool, Any]] = collections.deque()
        self._wake_scheduled = False
        self._closed = False

    def run(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        """Runs ``fn(*args)`` in a pool thread; call on the event loop, await the result."""
        if self._closed:
            raise RuntimeError("the machine's service threads are shut down")
        future = asyncio.get_running_loop().create_future()
        with self._lock:
            if self._idle:
                self._idle -= 1
            elif len(self._threads) < self._max:
                thread = threading.Thread(target=self._work_loop, args=(future.get_loop(),),
                                          name=f"{self._name}_{len(self._threads)}", daemon=True)
                self._threads.append(thread)
                thread.start()
        self._work.put((future, fn, args))
        return future

    def _work_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        while (item := self._work.get()) is not _STOP:
            future, fn, args = item
            try:
                result, ok = fn(*args), True
            except BaseException as exc:  # handed to the awaiting coroutine, like an executor does
                result, ok = exc, False
            del item, fn, args
            self._finish(loop, future, ok, result)
            del future, result
            with self._lock:
                self._idle += 1

    def _finish(self, loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any], ok: bool, result: Any) -> None:
        self._done.append((future, ok, result))
        if not self._wake_scheduled:  # read after the append: see _deliver
            self._wake_scheduled = True
            try:
                loop.call_soon_threadsafe(self._deliver)
            except RuntimeError:  # the loop is closed: the machine is gone, nobody awaits this
                self._done.clear()

    def _deliver(self) -> None:
        self._wake_scheduled = False  # before draining: a racing append is seen here, or reschedules
        done = self._done
        while done:
            future, ok, result = done.popleft()
            if future.cancelled():
                continue
            if ok:
                future.set_result(result)
            else:
                future.set_exception(result)

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
