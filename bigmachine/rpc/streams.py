"""Sending a call whose argument streams: full duplex, a task pumps the argument while the reply comes back.

Else a reply that echoes its argument fills both sides' buffers and blocks. The
argument's own failure (its iterator raising) is told apart from transport errors as
``SourceError``, so the caller gets it as is.
"""

from __future__ import annotations

import asyncio
import collections.abc
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from . import calls
from .calls import Request
from .codec import Response

if TYPE_CHECKING:
    from .client import AsyncConnection

__all__ = ["SourceError", "send_streamed"]


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
