"""Futures of calls started on the session's loop: cancelling reaches the machine, callbacks run elsewhere.

``concurrent.futures`` runs done-callbacks in the thread that completes the future. A
call's future completes on the session's loop, which must run only the library's
short work (keepalives, every other call): a slow callback, or one that waits on
another call, would stall or deadlock the whole session. So callbacks of a future
completed on that loop run in ``CallbackThreads``, as with a ``ThreadPoolExecutor``'s
futures (docs/reliability.md).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

__all__ = ["CallFuture", "CallbackThreads", "PendingCall", "settle"]

logger = logging.getLogger(__name__)

_IDLE = 2.0  # seconds an idle callback thread waits for more work before it ends
_CLOSE_WAIT = 2.0  # seconds b.shutdown() waits for callback threads to end


class CallbackThreads:
    """Threads that run done-callbacks; one more starts whenever every thread is busy.

    Growing when all are busy means a callback that waits on another call's future
    (whose callbacks also need a thread) never deadlocks. Idle threads end after a
    while, and all end once ``close`` is called and their work is done.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._work: collections.deque[Callable[[], None]] = collections.deque()
        self._cond = threading.Condition()
        self._idle = 0
        self._started = 0
        self._threads: list[threading.Thread] = []
        self._closed = False

    def run(self, fn: Callable[[], None]) -> None:
        """Runs ``fn()`` in a callback thread, soon; from any thread."""
        with self._cond:
            self._work.append(fn)
            if len(self._work) <= self._idle:
                self._cond.notify()
                return
            self._started += 1
            thread = threading.Thread(target=self._work_loop, name=f"{self._name}_{self._started}", daemon=True)
            self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        thread.start()

    def _work_loop(self) -> None:
        while True:
            with self._cond:
                if not self._work and not self._wait_for_work():
                    return  # idle for a while, or closed
                fn = self._work.popleft()
            try:
                fn()
            except BaseException:  # a callback's failure is its own; log it as concurrent.futures does
                logger.exception("a done-callback raised")
            del fn

    def _wait_for_work(self) -> bool:
        """Waits (holding the condition) until there is work, for at most ``_IDLE`` seconds; whether there is.

        A wake-up finding the work taken by a thread that was busy (it takes the next item
        without waiting) waits on: ending then made each burst of callbacks start new threads,
        about one for every three callbacks of a busy ``Executor.map``.
        """
        deadline = time.monotonic() + _IDLE
        self._idle += 1
        try:
            while not self._work and not self._closed and (left := deadline - time.monotonic()) > 0:
                self._cond.wait(left)
        finally:
            self._idle -= 1
        return bool(self._work)

    def close(self, wait: float = _CLOSE_WAIT) -> None:
        """Lets every thread end once its work is done, and waits up to ``wait`` seconds for them
        (no longer: a callback may be waiting on something that never comes)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            threads = list(self._threads)
        deadline = time.monotonic() + wait
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))


class Cancellable(Protocol):
    """What carries a call on the loop: a task, or a ``relayed.RelayedCall``."""

    def cancel(self) -> object: ...


class PendingCall:
    """A call started on the session's loop for another thread or loop; ``cancel`` works from anywhere."""

    __slots__ = ("_loop", "handle", "cancelled")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.handle: Cancellable | None = None  # the call's task, or what carries it (relayed); set on the loop
        self.cancelled = False

    def cancel(self) -> None:
        """Cancels the call on its loop, which closes its connection: the machine cancels it too."""
        try:
            self._loop.call_soon_threadsafe(self._cancel)
        except RuntimeError:  # the session's loop is closed: nothing runs any more
            pass

    def _cancel(self) -> None:
        self.cancelled = True
        if self.handle is not None:
            self.handle.cancel()


class CallFuture(concurrent.futures.Future[Any]):
    """The future ``Machine.submit`` returns: ``cancel`` cancels the remote call; callbacks never run on the loop."""

    def __init__(self, call: PendingCall, callbacks: CallbackThreads, on_loop: Callable[[], bool]) -> None:
        super().__init__()
        self._call, self._callbacks, self._on_loop = call, callbacks, on_loop

    def cancel(self) -> bool:
        """Cancels the call, also while it runs on the machine (an ``async def`` method gets CancelledError)."""
        if not super().cancel():
            return False
        self._call.cancel()
        return True

    def _invoke_callbacks(self) -> None:
        callbacks: list[Callable[[concurrent.futures.Future[Any]], object]] = list(getattr(self, "_done_callbacks"))
        if callbacks and self._on_loop():
            self._callbacks.run(lambda: _run_callbacks(self, callbacks))
        else:
            _run_callbacks(self, callbacks)


def _run_callbacks(future: concurrent.futures.Future[Any],
                   callbacks: list[Callable[[concurrent.futures.Future[Any]], object]]) -> None:
    for callback in callbacks:
        try:
            callback(future)
        except Exception:
            logger.exception("exception calling callback for %r", future)


def settle(future: concurrent.futures.Future[Any], ok: bool, value: Any) -> bool:
    """Sets ``future``'s result (``ok``) or exception; False if it was cancelled meanwhile."""
    try:
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)
    except concurrent.futures.InvalidStateError:
        return False
    return True
