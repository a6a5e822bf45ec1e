"""Streamed arguments and replies across threads and loops.

A call whose argument streams is sent full duplex: a task pumps the argument while the
reply streams back, else a reply that echoes its argument fills both sides' buffers and
blocks. A reply living on the session's loop is read from other threads or loops
through ``SyncOverAsync``. The argument's own failure (its iterator raising) is told
apart from transport errors as ``SourceError``, so the caller gets it as is.
"""

from __future__ import annotations

import asyncio
import collections.abc
import concurrent.futures
import functools
from collections.abc import AsyncIterator
from typing import Any

from .rpc import calls
from .rpc.calls import Request
from .rpc.client import AsyncConnection
from .rpc.codec import Response

__all__ = ["SourceError", "SyncOverAsync", "send_streamed"]


class SourceError(Exception):
    """The caller's own stream argument raised (its ``__cause__``): raised as is, never as a transport error."""


async def _guarded(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    try:
        async for chunk in chunks:
            yield chunk
    except Exception as exc:
        raise SourceError() from exc


async def _achunks(source: Any) -> AsyncIterator[bytes]:
    """The chunks of a stream argument; a sync source is read off the loop."""
    if isinstance(source, collections.abc.AsyncIterator):
        async for chunk in source:
            if not isinstance(chunk, (bytes, bytearray, memoryview)):
                raise TypeError(f"a streamed argument must yield bytes, not {type(chunk).__qualname__}")
            if chunk:
                yield bytes(chunk)
        return
    chunks = calls.stream_chunks(source)
    while (chunk := await asyncio.to_thread(next, chunks, None)) is not None:
        yield chunk


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


async def send_streamed(conn: AsyncConnection, request: Request) -> Response:
    """Sends a call whose argument streams: a task pumps the argument while the reply comes back (full duplex)."""
    response = conn.send(request.data, complete=False)
    pump = conn.pump = asyncio.get_running_loop().create_task(_pump(conn, request.stream))
    try:
        return await response
    except BaseException:
        pump.cancel()
        conn.abort()
        raise


async def _pump(conn: AsyncConnection, source: Any) -> None:
    """Sends a streamed argument's chunks, then its end; the source's own failure goes to the caller."""
    try:
        async for chunk in _guarded(_achunks(source)):
            await conn.write(calls.data_chunk(chunk))
        conn.finish(calls.END_OF_STREAM)
    except SourceError as exc:
        conn.fail_request(exc)
    except BaseException:  # the connection broke or the call ended: whoever reads the reply sees that
        conn.abort()
