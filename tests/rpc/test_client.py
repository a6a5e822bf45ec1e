"""rpc/client.py's pools: the call protocol (SyncPool.call, reply_frames), large bodies read into their final buffers,
and an async connect cut short by a cancel."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from served import Served, contexts
from test_chunked import chunked_body, stream_of

from bigmachine.rpc import buffers, calls, codec, wire
from bigmachine.rpc.client import AsyncPool, SyncPool
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


def test_an_async_call_cancelled_mid_handshake_lets_the_handshake_finish_then_closes(tmp_path: Path) -> None:
    """Cut short by a cancel, a handshake made uvloop log "Fatal error on SSL protocol" (seen in CI); it is
    now left to finish, and the connection nobody wants is closed then, its slot of the budget free."""
    server_context, client_context = contexts(tmp_path)
    listener = socket.create_server(("127.0.0.1", 0))
    accepted = threading.Event()
    seen: list[object] = []

    def slow_server() -> None:
        raw, _ = listener.accept()
        accepted.set()
        time.sleep(0.5)  # the client's call is cancelled meanwhile
        raw.settimeout(10)
        try:
            with server_context.wrap_socket(raw, server_side=True) as sock:
                seen.append("handshake done")
                seen.append(sock.recv(1))  # b"": the client closes the connection it no longer wants
        except (OSError, ssl.SSLError) as exc:
            seen.append(exc)

    server = threading.Thread(target=slow_server, daemon=True)
    server.start()
    pool = AsyncPool("127.0.0.1", listener.getsockname()[1], client_context, "127.0.0.1")

    async def main() -> None:
        call = asyncio.ensure_future(pool.call(calls.encode_call(b"h", "Gate.echo", (1,), {}), deadline_after(20)))
        while not accepted.is_set():
            await asyncio.sleep(0.01)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        while server.is_alive():
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        assert pool.open == 0
        pool.close(ConnectionAbortedError("test over"))

    asyncio.run(main())
    listener.close()
    assert seen == ["handshake done", b""]


@contextlib.contextmanager
def _requested(listener: socket.socket, server_context: ssl.SSLContext) -> Iterator[ssl.SSLSocket]:
    """The next connection's TLS socket, once its first request's head has arrived."""
    raw, _ = listener.accept()
    raw.settimeout(10)
    with server_context.wrap_socket(raw, server_side=True) as sock:
        request = b""
        while b"\r\n\r\n" not in request:
            request += sock.recv(65536)
        yield sock


def _pieces_server(tmp_path: Path, pieces: list[bytes]) -> tuple[socket.socket, ssl.SSLContext, threading.Thread]:
    """A TLS server that answers one connection's first request with ``pieces``, each a write of its own."""
    server_context, client_context = contexts(tmp_path)
    listener = socket.create_server(("127.0.0.1", 0))

    def answer() -> None:
        with _requested(listener, server_context) as sock:
            for piece in pieces:
                sock.sendall(piece)
                time.sleep(0.02)  # a read of its own

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    return listener, client_context, thread


@pytest.mark.parametrize("cut", [0, 1, 2, 3, 20])
@pytest.mark.parametrize("sync", [True, False])
def test_a_streamed_reply_arrives_whole_however_its_head_and_chunks_are_cut(tmp_path: Path, cut: int,
                                                                            sync: bool) -> None:
    blob = bytes(range(256)) * 2048  # 512 KiB, read past the parser into its frame
    frames = [(wire.DATA, b"first"), (wire.DATA, blob), (wire.END, b"")]
    message = codec.encode_stream_head(wire.STREAM) + chunked_body(stream_of(frames), [7, 100_000])
    at = message.index(b"\r\n\r\n") + 4 - cut
    listener, context, server = _pieces_server(tmp_path, [message[:at], message[at:at + 70_000], message[at + 70_000:]])
    request = calls.encode_call(b"h", "Any.stream", (), {})
    try:
        if sync:
            pool = SyncPool("127.0.0.1", listener.getsockname()[1], context, "127.0.0.1")
            response, conn = pool.call(request, deadline_after(20))
            assert conn is not None
            got = list(pool.reply_frames(conn, deadline_after(20)))
        else:
            apool = AsyncPool("127.0.0.1", listener.getsockname()[1], context, "127.0.0.1")

            async def read() -> list[tuple[bytes, bytes]]:
                try:
                    _, aconn = await apool.call(request, deadline_after(20))
                    assert aconn.reply_stream is not None
                    return [frame async for frame in aconn.reply_stream.frames(deadline_after(20))]
                finally:
                    apool.close(ConnectionAbortedError("test over"))

            got = asyncio.run(read())
        assert got == frames
    finally:
        if sync:
            pool.close(ConnectionAbortedError("test over"))
        listener.close()
        server.join(10)


def test_a_machine_that_closes_in_the_middle_of_a_large_frame_breaks_the_call(tmp_path: Path) -> None:
    head = codec.encode_stream_head(wire.STREAM) + b"%x\r\n" % (wire.FRAME_HEADER + (1 << 20))
    listener, context, server = _pieces_server(tmp_path, [head + wire.frame_header(wire.DATA, 1 << 20), b"p" * 300_000])
    pool = SyncPool("127.0.0.1", listener.getsockname()[1], context, "127.0.0.1")
    try:
        response, conn = pool.call(calls.encode_call(b"h", "Any.stream", (), {}), deadline_after(20))
        assert conn is not None
        with pytest.raises(ConnectionResetError, match="bytes into a"):
            list(pool.reply_frames(conn, deadline_after(20)))
        assert conn.broken
    finally:
        pool.close(ConnectionAbortedError("test over"))
        listener.close()
        server.join(10)


def _until_last(frames: Any) -> list[bytes]:
    """The kinds of frames read up to the last (END or FAIL), where a caller stops, as the machine layer does."""
    kinds = []
    for kind, _ in frames:
        kinds.append(kind)
        if kind != wire.DATA:
            break
    return kinds


def test_a_streamed_reply_dropped_at_its_end_frame_leaves_its_connection_in_the_pool(served: Served) -> None:
    """Dropped right after the END frame (blocking._chunks does), a reply broke its connection: every streamed
    call then cost the next call a new TLS connection (7-16 ms on a 2-core host)."""
    pool = served.pool()
    try:
        conns = set()
        for _ in range(3):
            _, conn = pool.call(calls.encode_call(b"h", "Gate.chunks", (2,), {}), deadline_after(10))
            assert conn is not None
            frames = pool.reply_frames(conn, deadline_after(10))
            assert _until_last(frames) == [wire.DATA, wire.DATA, wire.END]
            frames.close()
            assert not conn.broken
            conns.add(conn)
        assert len(conns) == 1 and pool.open == 1
    finally:
        pool.close(ConnectionAbortedError("test over"))


def test_an_async_streamed_reply_dropped_at_its_end_frame_leaves_its_connection_in_the_pool(served: Served) -> None:
    pool = AsyncPool("127.0.0.1", served.port, served.client, "127.0.0.1")

    async def main() -> set[object]:
        conns = set()
        try:
            for _ in range(3):
                _, conn = await pool.call(calls.encode_call(b"h", "Gate.chunks", (2,), {}), deadline_after(10))
                assert conn.reply_stream is not None
                frames = conn.reply_stream.frames(deadline_after(10))
                kinds = []
                async for kind, _ in frames:
                    kinds.append(kind)
                    if kind != wire.DATA:
                        break
                await frames.aclose()  # type: ignore[attr-defined]
                assert kinds == [wire.DATA, wire.DATA, wire.END]
                conns.add(conn)
            return conns
        finally:
            pool.close(ConnectionAbortedError("test over"))

    assert len(asyncio.run(main())) == 1


def test_a_streamed_reply_that_failed_never_returns_its_connection_to_the_pool(served: Served) -> None:
    """After a FAIL frame the machine may close the connection (a streamed argument left unread): reusing it
    would race with that close."""
    pool = served.pool()
    apool = AsyncPool("127.0.0.1", served.port, served.client, "127.0.0.1")
    try:
        _, conn = pool.call(calls.encode_call(b"h", "Gate.failing", (1,), {}), deadline_after(10))
        assert conn is not None
        frames = pool.reply_frames(conn, deadline_after(10))
        assert _until_last(frames) == [wire.DATA, wire.FAIL]
        frames.close()
        assert conn.broken and pool.open == 0

        async def main() -> None:
            try:
                _, aconn = await apool.call(calls.encode_call(b"h", "Gate.failing", (1,), {}), deadline_after(10))
                assert aconn.reply_stream is not None
                kinds = [kind async for kind, _ in aconn.reply_stream.frames(deadline_after(10))]
                assert kinds == [wire.DATA, wire.FAIL]
                for _ in range(100):  # closed: forgotten by the pool once the transport says it is lost
                    if apool.open == 0:
                        break
                    await asyncio.sleep(0.01)
                assert apool.open == 0
            finally:
                apool.close(ConnectionAbortedError("test over"))

        asyncio.run(main())
    finally:
        pool.close(ConnectionAbortedError("test over"))


def test_a_reply_nobody_asked_for_read_ahead_with_the_last_makes_its_connection_stale(tmp_path: Path) -> None:
    """Read ahead, a stray record waits inside OpenSSL, where neither a poll of the socket nor ``pending()``
    sees it; used again, the connection would hand the next call that stray reply as its answer."""
    server_context, client_context = contexts(tmp_path)
    listener = socket.create_server(("127.0.0.1", 0))
    answers = [b"first", b"second"]

    def serve() -> None:
        for answer in answers:
            with _requested(listener, server_context) as sock:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)  # both records in one segment, one read
                sock.sendall(codec.encode_response(200, wire.RESULT, answer))
                sock.sendall(codec.encode_response(200, wire.RESULT, b"stray"))
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 0)
                sock.recv(1)  # held open until the client closes it

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    pool = SyncPool("127.0.0.1", listener.getsockname()[1], client_context, "127.0.0.1")
    try:
        bodies = [pool.call(calls.encode_call(b"h", "Any.echo", (), {}), deadline_after(20))[0].body
                  for _ in answers]
        assert bodies == answers
    finally:
        pool.close(ConnectionAbortedError("test over"))
        listener.close()
        server.join(10)
