"""Calls another thread or loop starts on the session's loop, carried to their end by callbacks, not a task.

``Machine.submit`` (and ``acall`` from another loop) hands each call to the session's loop. When
a connection is at hand there (one with room for a pipelined call, or an idle one), the call is
sent at once and the reply settles it from its future's done-callback: no task to create and
step, and no coroutine frames to pass the reply up through, which is about a quarter of the loop's
work per call under load (docs/architecture.md). Otherwise, and for a streamed argument, the
machine runs the call as a task. Both ways keep the same deadline, cancellation, error mapping,
stats and trace.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from .errors import Cancelled
from .futures import PendingCall
from .rpc import calls, stats, wire
from .rpc.calls import Request
from .rpc.client import AsyncConnection, AsyncPool
from .rpc.codec import Response

__all__ = ["RelayedCall", "Target", "cancelled"]


@dataclass(slots=True, frozen=True)
class Target:
    """What a relayed call needs of the machine it calls, made once its address is known."""

    machine: Any  # whose stats and trace ring count the call (rpc.stats)
    addr: str
    error: Callable[[BaseException, str, float | None], Awaitable[BaseException]]  # maps a failure (Machine)
    stream: Callable[[AsyncConnection, float, str, float | None], AsyncIterator[bytes]]  # a streamed reply's chunks


def cancelled(addr: str, method: str) -> Cancelled:
    """What the caller of a cancelled call gets."""
    return Cancelled(f"{addr} {method}: the call was cancelled")


class RelayedCall:
    """A call sent on a connection ``AsyncPool.start`` had at hand; ``deliver(ok, value)`` gets its outcome,
    once. ``cancel`` (on the loop) ends it at once, and closes or retires its connection as a cancelled
    task's call would (``AsyncConnection.abandon``)."""

    __slots__ = ("_target", "_pool", "_request", "_deadline", "_timeout", "_deliver", "_pending", "_conn",
                 "_response", "_quick", "_started", "_timer", "_mapping", "_over")

    def __init__(self, target: Target, pool: AsyncPool, request: Request, deadline: float, timeout: float | None,
                 deliver: Callable[[bool, Any], None], pending: PendingCall,
                 sent: tuple[AsyncConnection, asyncio.Future[Response], bool]) -> None:
        self._target, self._pool, self._request = target, pool, request
        self._deadline, self._timeout, self._deliver = deadline, timeout, deliver
        self._pending = pending  # its handle is this call until it ends
        self._conn, self._response, self._quick = sent
        self._started = stats.begin(target.machine, request.method)
        self._mapping: asyncio.Task[BaseException] | None = None  # a failure being mapped (_fail)
        self._over = False  # delivered
        self._timer = None if deadline == math.inf else \
            asyncio.get_running_loop().call_later(deadline - time.monotonic(), self._timed_out)
        self._response.add_done_callback(self._replied)

    def cancel(self) -> None:
        """Ends the call as cancelled, the machine told so (its connection closed) unless the reply is in."""
        if self._over:
            return
        self._conn.abandon(self._response)
        if self._mapping is not None:
            self._mapping.cancel()
        self._end(False, cancelled(self._target.addr, self._request.method))

    def _timed_out(self) -> None:
        if self._over or self._mapping is not None:
            return
        self._conn.abandon(self._response)
        self._fail(TimeoutError())

    def _replied(self, response: asyncio.Future[Response]) -> None:
        if self._over or self._mapping is not None:  # cancelled or timed out before the reply came
            if not response.cancelled() and response.exception() is None and \
                    response.result().content_type == wire.STREAM:
                self._conn.abort()  # a streamed reply nobody will read
            return
        exc = response.exception()  # a timer firing while it is mapped finds _mapping set; _end cancels it
        if exc is not None:
            self._fail(exc)
            return
        reply, method = response.result(), self._request.method
        self._pool.replied(method, reply, self._quick)
        try:
            if reply.content_type == wire.STREAM:
                value: Any = self._target.stream(self._conn, self._deadline, method, self._timeout)
            else:
                value = calls.decode_reply(reply, method, self._target.addr)
        except BaseException as exc:  # the method raised: a RemoteError, as the call's task would give
            self._end(False, exc)
            return
        self._end(True, value)

    def _fail(self, exc: BaseException) -> None:
        """Maps a failure to send or to hear back as the machine does for any call (which may wait a moment
        for the machine to be found dead), then delivers it."""
        self._mapping = asyncio.ensure_future(self._target.error(exc, self._request.method, self._timeout))
        self._mapping.add_done_callback(self._mapped)

    def _mapped(self, mapping: asyncio.Task[BaseException]) -> None:
        if self._over:
            return
        if mapping.cancelled():  # the session is shutting down: as for a cancelled task
            self._end(False, cancelled(self._target.addr, self._request.method))
        else:
            self._end(False, mapping.result())

    def _end(self, ok: bool, value: Any) -> None:
        self._over = True
        if self._timer is not None:
            self._timer.cancel()
        stats.end(self._target.machine, self._request, self._started, not ok)
        # The caller's future keeps its pending call: let go of this one, and with it of the request and
        # the reply's bytes (kept, they would double what a caller holding futures holds), and of the
        # cycle through the caller's future, which only the cycle collector would free.
        self._pending.handle = None
        self._deliver(ok, value)
