"""rpc/client.py's blocking pool: the call protocol (SyncPool.call, reply_frames), large bodies read into their final buffers."""

from __future__ import annotations

import pytest
from served import Served

from bigmachine.rpc import buffers, calls, codec, wire
from bigmachine.rpc.deadlines import deadline_after

pytestmark = pytest.mark.timeout(60)


def test_a_large_reply_is_read_into_one_buffer_and_the_connection_stays_in_step(served: Served) -> None:
    pool = served.pool()
    try:
        size = 3 * codec.DIRECT_BODY
        response, conn = pool.call(calls.encode_call(b"h", "Gate.blob", (size,), {}), deadline_after(20))
        assert conn is None and len(response.chunks) == 1  # one body, not a piece per TLS record
        (body,) = response.chunks
        assert isinstance(body, buffers.Split) and len(body.buffers) == 1  # the blob went into its own bytes
        result = wire.loads(response.chunks)
        assert result is body.buffers[0] and result == bytes(range(256)) * (size // 256)
        response, conn = pool.call(calls.encode_call(b"h", "Gate.echo", ("next",), {}), deadline_after(20))
        assert wire.loads(response.body) == "next" and pool.open == 1  # the same connection
    finally:
        pool.close(ConnectionAbortedError("test over"))


def test_a_large_argument_is_sent_from_its_own_memory_and_arrives_whole(served: Served) -> None:
    blob = bytes(range(256)) * (2 * codec.DIRECT_BODY // 256)
    request = calls.encode_call(b"h", "Gate.echo", (blob,), {})
    assert isinstance(request.data, tuple) and any(part is blob for part in request.data)  # not copied
    assert request.size == sum(map(len, request.data)) > len(blob)  # what stats count as sent
    pool = served.pool()
    try:
        response, _ = pool.call(request, deadline_after(20))
        echoed = wire.loads(response.chunks)  # received on the machine into its own bytes, and sent back
        assert type(echoed) is bytes and echoed == blob
    finally:
        pool.close(ConnectionAbortedError("test over"))


def test_a_streamed_reply_dropped_half_way_closes_its_connection(served: Served) -> None:
    pool = served.pool()
    try:
        deadline = deadline_after(10)
        response, conn = pool.call(calls.encode_call(b"h", "Gate.chunks", (1000,), {}), deadline)
        assert conn is not None
        frames = pool.reply_frames(conn, deadline)
        assert next(frames) == (wire.DATA, b"0;")
        frames.close()
        assert conn.broken and pool.open == 0  # its unread frames would confuse the next call
        response, conn = pool.call(calls.encode_call(b"h", "Gate.echo", (2,), {}), deadline)
        assert wire.loads(response.body) == 2
    finally:
        pool.close(ConnectionAbortedError("test over"))
