"""Streamed replies across threads and loops: a reply living on the session's loop is read from other
threads or loops through ``SyncOverAsync`` (sending streamed arguments is ``rpc/streams.py``)."""

from __future__ import annotations

import asyncio
import collections.abc
import concurrent.futures
import functools
from collections.abc import AsyncIterator
from typing import Any

__all__ = ["SyncOverAsync"]


class SyncOverAsync(collections.abc.Iterator[bytes]):
    """A streamed reply living on the session's loop, read from another thread or loop.

    Each chunk is one ``call_soon_threadsafe`` hop and a future (streams may hop; calls don't).
    """

    def __init__(self, source: AsyncIterator[bytes], loop: asyncio.AbstractEventLoop) -> None:
        self._source, self._loop = source, loop

    def _next(self) -> concurrent.futures.Future[bytes]:
        future: concurrent.futures.Future[bytes] = concurrent.futures.Future()
        self._loop.call_soon_threadsafe(self._step, future)
        return future

    def _step(self, future: concurrent.futures.Future[bytes]) -> None:
        """On the loop: advances the source; its outcome goes to ``future``."""
        task = asyncio.ensure_future(self._source.__anext__())
        task.add_done_callback(functools.partial(_copy_outcome, future))

    def __next__(self) -> bytes:
        try:
            return self._next().result()
        except StopAsyncIteration:
            raise StopIteration from None

    def close(self) -> None:
        """Stops reading: the reply's connection is closed, as an abandoned stream's is."""
        aclose = getattr(self._source, "aclose", None)
        if aclose is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(lambda: asyncio.ensure_future(aclose()))

    async def foreign(self) -> AsyncIterator[bytes]:
        while True:
            try:
                yield await asyncio.wrap_future(self._next())
            except StopAsyncIteration:
                return


def _copy_outcome(future: concurrent.futures.Future[Any], task: asyncio.Future[Any]) -> None:
    if task.cancelled():
        future.cancel()
    elif (exc := task.exception()) is not None:
        future.set_exception(exc)
    else:
        future.set_result(task.result())
