"""Client side of RPC: the shared codec driven by two thin I/O layers.

- ``AsyncPool``: keep-alive ``asyncio.Protocol`` connections to one server, on one loop.
  Calls of quick methods are pipelined: up to ``wire.PIPELINED_CALLS`` share a connection
  and are answered in order, so a burst of calls costs one read and one write each way.
- ``SyncPool``: a keep-alive blocking TLS socket per (thread, server), so a sync call
  needs no hop to the event loop. ``close()`` shuts every socket down, which wakes
  callers blocked in ``recv`` at once.

Both raise transport errors as they are (``OSError``, ``ssl.SSLError``,
``ProtocolError``, ``TimeoutError``); the machine layer maps them to the library's
errors, in one place.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import select
import socket
import ssl
import threading
import time
from collections.abc import AsyncIterator, Collection, Generator
from typing import TYPE_CHECKING, Any

from ..errors import ProtocolError
from . import sockets, tls_io, wire
from .budget import ConnectionBudget
from .chunked import MessageReader
from .codec import DIRECT_BODY, DirectBody, Response, ResponseParser, TakeOver, require_chunked
from .deadlines import remaining
from .limits import DEFAULT_MAX_CONNECTIONS
from .streams import send_streamed

if TYPE_CHECKING:
    from .calls import Request

__all__ = ["IDLE_TIMEOUT", "AsyncPool", "SyncPool"]

logger = logging.getLogger(__name__)

_READ_SIZE = 1 << 18
_SYNC_READ_SIZE = 1 << 16  # a TLS record is at most 16 KiB: a blocking read never returns more than a few
CONNECT_TIMEOUT = 10.0  # a connect or TLS handshake past this is tried afresh (a host that dropped our SYN)
IDLE_TIMEOUT = 60.0  # a connection unused this long is closed (the server keeps its side 5x longer)
_STREAM_HIGH_WATER = 8 << 20  # pause reading a streamed reply past this many buffered bytes


class _Closed(ConnectionResetError):
    """The server closed the connection."""


# ---------------------------------------------------------------------------- async


class AsyncConnection(asyncio.Protocol):
    """One keep-alive connection: one request at a time, or pipelined whole calls, answered in order."""

    def __init__(self, pool: AsyncPool) -> None:
        self._pool = pool
        self._reader = MessageReader(ResponseParser(self), pipelined=True)
        self.transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()  # once: asking per request costs a getpid system call
        self._waiter: asyncio.Future[Response] | None = None  # the oldest request's response
        self._behind: collections.deque[asyncio.Future[Response]] = collections.deque()  # pipelined after it
        self.in_flight = 0  # requests sent whose responses have not ended
        self.pipelined = False  # carries pipelined calls: more may join while it has room (AsyncPool)
        self.retiring = False  # a pipelined call was abandoned: closed once the others are answered
        self.streaming = False  # a streamed reply's frames are being read by its caller
        self._held: list[bytes] = []  # pipelined requests not yet written (_send_held)
        self._stream: AsyncReplyStream | None = None
        self.reply_stream: AsyncReplyStream | None = None
        self._response: Response | None = None
        self._drain: asyncio.Future[None] | None = None
        self._request_done = True  # False while a streamed argument is still being sent
        self.pump: asyncio.Task[None] | None = None  # the task sending a streamed argument
        self.lost: BaseException | None = None
        self.idle_since = 0.0

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sockets.tune(transport.get_extra_info("socket"))

    def data_received(self, data: bytes) -> None:
        try:
            frames = self._reader.feed(data)
            if frames is not None:  # a streamed reply's
                body = self._reader.body
                assert self._stream is not None and body is not None
                self._stream.add(frames)
                if body.done:
                    self._reader.start()  # what follows is the next pipelined response, for the parser
                    self.response_complete()
                    if body.rest:
                        self.data_received(body.rest)
        except ProtocolError as exc:  # malformed, or out of step: never pooled again
            self.lost = exc
            self._fail(exc)
            self.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = self.lost or exc or _Closed("the machine closed the connection")
        self._pool._forget(self)
        self._fail(self.lost)
        if self._drain is not None and not self._drain.done():
            self._drain.set_exception(self.lost)
            self._drain.exception()  # nobody may be waiting: no "never retrieved" noise
        if self.pump is not None:
            self.pump.cancel()

    def pause_writing(self) -> None:
        self._drain = self._loop.create_future()

    def resume_writing(self) -> None:
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)
        self._drain = None

    # codec listener
    def response_head(self, response: Response) -> None:
        self._response = response
        if response.content_type == wire.STREAM:
            require_chunked(response, "a streamed reply")
            self._stream = self.reply_stream = AsyncReplyStream(self)
            self.streaming = True
            self._pool.unshare(self)  # no call joins one whose reply streams for as long as its caller reads
            if self._waiter is None or self._waiter.done():  # its caller gave up (a pipelined call): nobody reads it
                self.abort(ConnectionAbortedError("a streamed reply ahead of this call on its connection had no "
                                                  "reader left (its call timed out or was cancelled)"))
            self._resolve(response)
            raise TakeOver()

    def response_body(self, data: bytes) -> None:
        assert self._response is not None
        self._response.chunks.append(data)

    def response_complete(self) -> None:
        response, stream = self._response, self._stream
        self._response = self._stream = None
        self.in_flight -= 1
        if stream is not None:
            stream.complete()
        else:
            assert response is not None
            self._resolve(response)
        self._waiter = self._behind.popleft() if self._behind else None
        if response is not None and not response.keep_alive:
            self.abort()
        elif stream is None:
            self._settle()
        # A streamed reply's connection goes back to the pool when its reader is done (finished).

    def finished(self) -> None:
        """A streamed reply was read to its end by its caller."""
        self.streaming = False
        self._settle()

    def _settle(self) -> None:
        """A reply is done with: room for another pipelined call, else (none left) back to the pool; closed if
        a request was cut short or abandoned."""
        if self.in_flight or self.streaming:
            if self.pipelined and not self.retiring:
                self._pool.has_room(self)
            return
        if self.pipelined:
            self._pool.unshare(self)
        if self._request_done and not self.retiring:
            self._pool.release(self)
        else:  # the machine answered before reading the whole streamed argument (an error), or a call was abandoned
            self.abort()

    def abandon(self, response: asyncio.Future[Response]) -> None:
        """A caller gave up on its request (cancelled, timed out): closed at once, unless calls pipelined with it
        wait for their replies: then it takes no more, and closes once they have them. A reply already in
        leaves the connection as it is: it has moved on (to the pool, or the next reply)."""
        if response.done() and not response.cancelled():
            return
        if self.in_flight <= 1:
            self.abort()  # its reply would confuse the next caller; closing tells the machine to give up too
            return
        response.cancel()  # its reply, in its turn, is read and dropped
        self.retiring = True
        self._pool.unshare(self)

    # requests
    def send(self, data: bytes | tuple[bytes, ...], *, complete: bool = True) -> asyncio.Future[Response]:
        """Writes a request (or, ``complete=False``, the start of one), behind those in flight if any
        (pipelined); the future is its response."""
        assert self.transport is not None
        response = self._loop.create_future()
        self._reader.parser.expect()
        self._request_done = complete
        if self.in_flight:
            self._behind.append(response)
            self.in_flight += 1
            if not self._held:  # the first held back: sent once this turn of the loop is over
                self._loop.call_soon(self._send_held)
            if isinstance(data, tuple):
                self._held.extend(data)  # joined once, with the rest of the turn's, in _send_held
            else:
                self._held.append(data)
            return response
        self._waiter = response
        self._reader.start()
        self.in_flight += 1
        if isinstance(data, tuple):
            self.transport.writelines(data)
        else:
            self.transport.write(data)
        return response

    def _send_held(self) -> None:
        """Sends the pipelined requests of a turn of the loop together: one TLS record, one system call."""
        held, self._held = self._held, []
        if self.lost is None and self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(held))

    async def write(self, pieces: tuple[bytes | memoryview, ...]) -> None:
        """Writes part of a streamed request, waiting while the transport is paused."""
        if self.lost is not None:
            raise self.lost
        assert self.transport is not None
        self.transport.writelines(pieces)
        if self._drain is not None:
            await self._drain

    def finish(self, data: bytes) -> None:
        """Writes the last part of a streamed request (buffered: no wait for the transport to drain)."""
        if self.lost is not None:
            raise self.lost
        assert self.transport is not None
        self.transport.write(data)
        self._request_done = True

    def fail_request(self, exc: BaseException) -> None:
        """The request's own source failed: its caller gets ``exc`` (before or after the reply's head); closed."""
        self._fail(exc)
        self.abort()

    def abort(self, reason: BaseException | None = None) -> None:
        """Closes the connection at once; calls still in flight on it fail with ``reason`` if given."""
        if reason is not None and self.lost is None:
            self.lost = reason
        self._pool.unshare(self)  # nothing more is sent on it
        if self.transport is not None:
            self.transport.abort()

    def _resolve(self, response: Response) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(response)

    def _fail(self, exc: BaseException) -> None:
        for waiter in (self._waiter, *self._behind):
            if waiter is not None and not waiter.done():
                waiter.set_exception(exc)
                waiter.exception()  # its caller may be gone (timed out): no "never retrieved" noise; await still raises
        self._behind.clear()
        if self._stream is not None:
            self._stream.fail(exc)


class AsyncReplyStream:
    """The frames of a streamed reply, with flow control: reading pauses while the reader lags."""

    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn
        self._frames: collections.deque[tuple[bytes, bytes]] = collections.deque()
        self._buffered = 0
        self._paused = False
        self._waiter: asyncio.Future[None] | None = None
        self._error: BaseException | None = None
        self._done = False

    def add(self, frames: list[tuple[bytes, bytes]]) -> None:
        for kind_payload in frames:
            self._frames.append(kind_payload)
            self._buffered += len(kind_payload[1])
        if self._buffered > _STREAM_HIGH_WATER and not self._paused and self._conn.transport is not None:
            self._paused = True
            self._conn.transport.pause_reading()
        self._wake()

    def complete(self) -> None:
        self._done = True
        self._wake()

    def fail(self, exc: BaseException) -> None:
        if self._error is None:  # the first cause, not the connection loss that follows it
            self._error = exc
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def frames(self, deadline: float) -> AsyncIterator[tuple[bytes, bytes]]:
        """Yields ``(kind, payload)`` until an END or FAIL frame; raises if the stream breaks."""
        try:
            while True:
                if not self._frames:
                    if self._done:
                        raise ProtocolError("the streamed reply ended without an end frame")
                    await self._wait(deadline)
                    continue
                kind, payload = self._frames.popleft()
                self._buffered -= len(payload)
                if self._paused and self._buffered < _STREAM_HIGH_WATER // 2 and self._conn.transport is not None:
                    self._paused = False
                    self._conn.transport.resume_reading()
                if kind != wire.DATA:
                    break
                yield kind, payload
            while not self._done:  # the rest of the HTTP message, so the connection stays clean
                await self._wait(deadline)
        except BaseException:
            # Abandoned or broken mid-stream: the connection can't be reused, nor the calls behind it answered.
            self._conn.abort(ConnectionAbortedError("a streamed reply ahead of this call on its connection was "
                                                    "abandoned by its reader, which closed the connection"))
            raise
        if kind == wire.FAIL:  # the machine may close it after a failure (an argument left unread)
            self._conn.abort()
        else:
            self._conn.finished()  # before the last frame: a caller may drop the frames there
        yield kind, payload

    async def _wait(self, deadline: float) -> None:
        if self._error is not None:
            raise self._error
        self._waiter = asyncio.get_running_loop().create_future()
        await asyncio.wait_for(self._waiter, remaining(deadline))


_QUICK_STREAK = 4  # whole, fast replies in a row that make a method's calls pipelined


def _size(data: bytes | tuple[bytes, ...]) -> int:
    return len(data) if isinstance(data, bytes) else sum(map(len, data))


class _Counted:
    """What both pools count: connections open (``_all``) and idle (``_idle``)."""

    _all: Collection[Any]
    _idle: Collection[Any]

    @property
    def open(self) -> int:
        """Connections open now, idle ones included."""
        return len(self._all)

    @property
    def busy(self) -> int:
        """Connections carrying a call now."""
        return len(self._all) - len(self._idle)


def _drop_unwanted(connecting: asyncio.Future[tuple[asyncio.BaseTransport, AsyncConnection]]) -> None:
    """Closes a connection made for a caller cancelled meanwhile (it never joined the pool, nor took a slot)."""
    if not connecting.cancelled() and connecting.exception() is None:
        connecting.result()[1].abort()


class AsyncPool(_Counted):
    """Keep-alive connections to one server, for one event loop, within a ``ConnectionBudget``; over
    ``unix_socket`` if given (the server on this host), else TCP to ``host:port``."""

    def __init__(self, host: str, port: int, context: ssl.SSLContext, server_hostname: str,
                 budget: ConnectionBudget | None = None, *, unix_socket: str | None = None) -> None:
        self.host, self.port, self.unix_socket = host, port, unix_socket
        self._context, self._server_hostname = context, server_hostname
        self._budget = budget if budget is not None else ConnectionBudget(DEFAULT_MAX_CONNECTIONS)
        self._budget.add_reclaimer(self._reclaim_idle)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._idle: collections.deque[AsyncConnection] = collections.deque()
        self._all: set[AsyncConnection] = set()
        self._connecting: set[asyncio.Future[Any]] = set()
        self._closed: BaseException | None = None
        self._room: set[AsyncConnection] = set()  # pipelined connections that take another call
        self._quick: dict[str, int] = {}  # method: its replies in a row that came whole and fast

    async def acquire(self) -> AsyncConnection:
        """An idle connection, or a new one once the budget allows (waiting meanwhile)."""
        if self._closed is not None:
            raise self._closed
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        if (conn := self._take_idle()) is not None:
            return conn
        while True:
            handed = await self._budget.atake(self)
            if handed is None:
                break
            if self._closed is not None:
                raise self._closed
            if handed.lost is None:  # a connection released by another call, straight to us
                return handed  # type: ignore[no-any-return]
        try:
            conn = await self._connect()
        except BaseException:
            self._budget.give_back()
            raise
        self._all.add(conn)
        if conn.lost is not None:  # lost before we counted it: connection_lost could not give it back
            self._forget(conn)
            raise conn.lost
        if self._closed is not None:
            conn.abort()
            raise self._closed
        return conn

    def _take_idle(self) -> AsyncConnection | None:
        """The most recently released idle connection still open, if any."""
        while self._idle:
            conn = self._idle.pop()
            if conn.lost is None:
                return conn
        return None

    async def _connect(self) -> AsyncConnection:
        """A new connection. A connect or handshake that takes over CONNECT_TIMEOUT is tried again: the
        call's own deadline bounds it, and a machine that stops (declared dead by its keepalives) ends it."""
        while True:
            if self._closed is not None:
                raise self._closed
            connecting = asyncio.ensure_future(self._open())
            self._connecting.add(connecting)  # a machine that stops while we shake hands cancels it
            connecting.add_done_callback(self._connecting.discard)
            try:
                # Shielded: a caller cancelled mid-handshake leaves the handshake to finish, then the connection
                # is closed (_drop_unwanted). Cut short, uvloop can log "Fatal error on SSL protocol" for it.
                _, conn = await asyncio.shield(connecting)
                return conn
            except asyncio.CancelledError:
                if self._closed is not None and connecting.cancelled():
                    raise self._closed from None
                connecting.add_done_callback(_drop_unwanted)
                raise
            except TimeoutError:
                logger.debug("%s:%d: no connection within %g s; trying again", self.host, self.port, CONNECT_TIMEOUT)

    async def _open(self) -> tuple[asyncio.BaseTransport, AsyncConnection]:
        # A coroutine of its own: cancelled before it starts, nothing is left un-awaited.
        loop, context, hostname = asyncio.get_running_loop(), self._context, self._server_hostname
        if self.unix_socket is not None:
            connecting = loop.create_unix_connection(lambda: AsyncConnection(self), self.unix_socket,
                                                     ssl=context, server_hostname=hostname)
        else:
            connecting = loop.create_connection(lambda: AsyncConnection(self), self.host, self.port,
                                                ssl=context, server_hostname=hostname)
        return await asyncio.wait_for(connecting, CONNECT_TIMEOUT)

    async def call(self, request: Request, deadline: float) -> tuple[Response, AsyncConnection]:
        """Sends a call and waits, by ``deadline``, for its reply's head (and body, unless streamed: then read
        it from the connection's ``reply_stream``); a streamed argument is sent while the reply comes."""
        if deadline == math.inf:  # no timer to arm and cancel: the common call costs less
            return await self._send(request)
        async with asyncio.timeout(remaining(deadline)):
            return await self._send(request)

    async def _send(self, request: Request) -> tuple[Response, AsyncConnection]:
        if request.stream is None:
            return await self.request(request.data, request.method)
        conn = await self.acquire()
        return await send_streamed(conn, request), conn

    async def request(self, data: bytes | tuple[bytes, ...], method: str = "") -> tuple[Response, AsyncConnection]:
        """Sends a whole request and waits for the response head (and body, unless streamed).

        The call of a quick ``method`` (its last ``_QUICK_STREAK`` replies came whole, each saying its call
        held the connection under ``codec.SLOW_CALL``) goes behind other such calls on a connection with
        room, if one has: pipelined. Any other, and any request sent without its method's name (the
        lifeline's), takes a connection of its own.
        """
        quick = self._is_quick(data, method)
        conn = next(iter(self._room)) if quick and self._room else await self.acquire()
        response = self._send_on(conn, data, quick)
        try:
            reply = await response
        except BaseException:
            conn.abandon(response)  # cancelled or timed out mid-call
            raise
        self.replied(method, reply, quick)
        return reply, conn

    def start(self, data: bytes | tuple[bytes, ...],
              method: str) -> tuple[AsyncConnection, asyncio.Future[Response], bool] | None:
        """Sends a whole request at once on a connection at hand: one with room for a quick call, else an idle
        one. Returns the connection, the response's future and whether the call is pipelined; None, having
        sent nothing, if no connection is at hand (a closed pool has none): ``request`` then waits for one.
        On the loop; the caller hands the reply to ``replied``, or ``abandon``s the response."""
        quick = self._is_quick(data, method)
        conn = next(iter(self._room)) if quick and self._room else self._take_idle()
        if conn is None:
            return None
        return conn, self._send_on(conn, data, quick), quick

    def _is_quick(self, data: bytes | tuple[bytes, ...], method: str) -> bool:
        return bool(method) and self._quick.get(method, 0) >= _QUICK_STREAK and _size(data) <= wire.PIPELINED_MAX

    def _send_on(self, conn: AsyncConnection, data: bytes | tuple[bytes, ...], quick: bool) -> asyncio.Future[Response]:
        response = conn.send(data)
        if quick:
            conn.pipelined = True
            self.has_room(conn)
        return response

    def replied(self, method: str, reply: Response, quick: bool) -> None:
        """Counts a reply to ``method`` towards (or against) its calls being pipelined."""
        if reply.slow or reply.content_type == wire.STREAM:
            self._quick[method] = 0
        elif not quick and method:
            self._quick[method] = self._quick.get(method, 0) + 1

    def has_room(self, conn: AsyncConnection) -> None:
        """Notes whether a pipelined connection takes another call."""
        if conn.in_flight < wire.PIPELINED_CALLS and conn.lost is None:
            self._room.add(conn)
        else:
            self._room.discard(conn)

    def unshare(self, conn: AsyncConnection) -> None:
        """A connection takes no more pipelined calls (for now: back in the pool, it is anyone's again)."""
        conn.pipelined = False
        self._room.discard(conn)

    def release(self, conn: AsyncConnection) -> None:
        """Takes back a connection whose call is done: to the first waiter, else kept idle (on the loop)."""
        if self._closed is not None or conn.lost is not None:
            return  # closing, or lost: connection_lost gives its slot back
        if self._budget.hand_over(self, conn):
            return
        if self._budget.waiting:  # a caller of the other pool waits: closing this passes the slot on
            conn.abort()
            return
        conn.idle_since = time.monotonic()
        self._idle.append(conn)

    def _forget(self, conn: AsyncConnection) -> None:
        """A connection ended (connection_lost): its slot of the budget is free again."""
        self._room.discard(conn)
        if conn in self._all:
            self._all.remove(conn)
            self._budget.give_back()

    def close_idle(self, idle_for: float) -> None:
        """Closes connections idle for ``idle_for`` seconds or more (on the pool's loop)."""
        cutoff = time.monotonic() - idle_for
        while self._idle and self._idle[0].idle_since <= cutoff:
            self._idle.popleft().abort()

    def _reclaim_idle(self) -> None:
        """Closes the oldest idle connection, making room for a waiter of the other pool (any thread)."""
        loop = self._loop
        if not self._idle or loop is None or loop.is_closed():
            return
        try:
            if asyncio.get_running_loop() is loop:
                if self._idle:
                    self._idle.popleft().abort()  # connection_lost gives its slot back
                return
        except RuntimeError:
            pass
        try:
            loop.call_soon_threadsafe(self._reclaim_idle)
        except RuntimeError:
            pass

    def close(self, reason: BaseException) -> None:
        """Aborts every connection: pending requests fail at once with ``reason``."""
        self._closed = reason
        self._idle.clear()
        self._room.clear()
        self._budget.close()
        for connecting in list(self._connecting):
            connecting.cancel()
        for conn in list(self._all):
            conn._fail(reason)
            conn.abort()


# ----------------------------------------------------------------------------- sync


class SyncConnection:
    """A blocking keep-alive TLS socket; used by one thread at a time."""

    def __init__(self, pool: SyncPool, deadline: float) -> None:
        self.pool = pool
        sock = _connected(pool, _connect_timeout(deadline))
        try:
            sockets.tune(sock)
            self.sock = pool.context.wrap_socket(sock, server_hostname=pool.server_hostname,
                                                 do_handshake_on_connect=False)
        except BaseException:
            sock.close()
            raise
        pool._connecting.add(self.sock)  # a machine that stops while we shake hands wakes us too
        try:
            if pool._closed is not None:
                raise pool._closed
            self.sock.settimeout(remaining(deadline))
            self.sock.do_handshake()
        except BaseException:
            self.sock.close()
            raise
        finally:
            pool._connecting.discard(self.sock)
        self._tls = tls_io.connection_of(self.sock)  # read and written straight, past ssl.py's wrappers
        self._recv_into = tls_io.reader(self._tls)
        self._unread = tls_io.read_ahead(self._tls)
        self._reader = MessageReader(ResponseParser(self))
        self._blocking = False  # the socket has no timeout: a read or write is one system call
        self._buffer = bytearray(_SYNC_READ_SIZE)  # every read lands here: no allocation per read
        self._view = memoryview(self._buffer)
        self._poll = select.poll()
        self._poll.register(self.sock, select.POLLIN)
        self._response: Response | None = None
        self._frames: collections.deque[tuple[bytes, bytes]] | None = None
        self._direct: DirectBody | None = None
        self._done = False
        self.broken = False
        self.in_use = True
        self.idle_since = 0.0

    def request(self, data: bytes | tuple[bytes, ...], deadline: float) -> Response:
        """Sends a whole request; returns once the response is complete or its stream begins."""
        self.send(data, deadline)
        return self.read_response(deadline)

    def send(self, data: bytes | tuple[bytes, ...], deadline: float) -> None:
        try:
            for part in data if isinstance(data, tuple) else (data,):
                self._bound(deadline)
                self._tls.write(part)  # all of it, or raises (tls_io)
        except BaseException:
            self.broken = True
            raise

    def stale(self) -> bool:
        """Whether this idle connection has bytes or an EOF waiting: closed by the server, or out of step."""
        if not (self._unread() or self._poll.poll(0)):
            return False
        self.sock.settimeout(0)
        self._blocking = False
        try:
            self.sock.recv(1)  # application data nobody asked for, or b"" at EOF
        except (ssl.SSLWantReadError, BlockingIOError):
            return False  # only TLS housekeeping (session tickets): still in step
        except OSError:
            pass
        self.broken = True
        return True

    def read_response(self, deadline: float) -> Response:
        self._response, self._frames, self._done = None, None, False
        self._reader.parser.expect()
        self._reader.start()
        while not self._done and self._frames is None:
            self._receive(deadline)
        response = self._response
        assert response is not None
        self._direct = None
        if self._frames is None:
            self._response = None  # handed over whole: an idle connection keeps no reply (a large one alive)
        return response

    def frames(self, deadline: float) -> Generator[tuple[bytes, bytes], None, None]:
        """The frames of a streamed reply, read as the caller iterates. The last (END or FAIL) comes once the
        whole message is read, so a caller may drop the frames there and the connection stays in the pool."""
        frames = self._frames
        assert frames is not None
        try:
            while True:
                if not frames:
                    if self._done:
                        raise ProtocolError("the streamed reply ended without an end frame")
                    self._receive(deadline)
                    continue
                kind, payload = frames.popleft()
                if kind != wire.DATA:
                    break
                yield kind, payload
            while not self._done:  # the rest of the HTTP message: the connection stays clean
                self._receive(deadline)
        except BaseException:
            self.broken = True  # abandoned or broken mid-stream: its bytes would confuse the next call
            raise
        if kind == wire.FAIL:  # the machine may close it after a failure (an argument left unread)
            self.broken = True
        yield kind, payload

    def _receive(self, deadline: float) -> None:
        try:
            self._bound(deadline)
            reader = self._reader
            frames = reader.read_direct(self._recv_into)
            if frames is None:
                n = self._recv_into(self._buffer)
                if not n:
                    raise _Closed("the machine closed the connection")
                frames = reader.feed(self._view[:n])
            if frames is not None:  # a streamed reply's
                assert self._frames is not None and reader.body is not None
                self._frames.extend(frames)
                if reader.body.done:
                    self.response_complete()
            if self._direct is not None and not self._done:
                self._read_direct(self._direct)
        except ProtocolError:
            self.broken = True  # out of step: closed at release
            if not self._done:
                raise  # else our own response arrived whole before the unexpected bytes
        except BaseException:
            self.broken = True
            raise

    def _bound(self, deadline: float) -> None:
        """Bounds the next read or write by ``deadline``; without one the socket stays blocking, which
        saves a failed read and a poll per read (a call without a deadline is ended by waking it)."""
        if deadline == math.inf and self._blocking:
            return
        timeout = remaining(deadline)
        self.sock.settimeout(timeout)
        self._blocking = timeout is None

    def _read_direct(self, direct: DirectBody) -> None:
        """Reads the rest of a large whole reply into its one buffer, past the parser (``DirectBody``)."""
        try:
            direct.read_rest(self._recv_into)
        except ConnectionResetError as exc:
            raise _Closed(str(exc)) from None
        assert self._response is not None
        self._response.chunks = [direct.body]  # type: ignore[list-item]
        self._reader.renew_parser()
        self.response_complete()

    # codec listener
    def response_head(self, response: Response) -> None:
        self._response = response
        self._direct = None
        if response.content_type == wire.STREAM:
            require_chunked(response, "a streamed reply")
            self._frames = collections.deque()
            raise TakeOver()
        if response.content_length >= DIRECT_BODY and response.content_type == wire.RESULT:
            self._direct = DirectBody(response.content_length)

    def response_body(self, data: bytes) -> None:
        if self._direct is not None:
            self._direct.add(data)
        else:
            assert self._response is not None
            self._response.chunks.append(data)

    def response_complete(self) -> None:
        self._done = True
        if self._response is not None and not self._response.keep_alive:
            self.broken = True

    def wake(self) -> None:
        """Shuts the socket down from another thread, so a blocked ``recv`` returns at once."""
        _shutdown(self.sock)

    def close(self) -> None:
        self.sock.close()


class SyncPool(_Counted):
    """Blocking connections to one server, shared by threads (one at a time each), within a ``ConnectionBudget``;
    over ``unix_socket`` if given, as ``AsyncPool``."""

    def __init__(self, host: str, port: int, context: ssl.SSLContext, server_hostname: str,
                 budget: ConnectionBudget | None = None, *, unix_socket: str | None = None) -> None:
        self.host, self.port, self.unix_socket = host, port, unix_socket
        self.context, self.server_hostname = context, server_hostname
        self._budget = budget if budget is not None else ConnectionBudget(DEFAULT_MAX_CONNECTIONS)
        self._budget.add_reclaimer(self._reclaim_idle)
        self._idle: collections.deque[SyncConnection] = collections.deque()  # pop/append are atomic
        self._all: set[SyncConnection] = set()
        self._lock = threading.Lock()
        self._connecting: set[ssl.SSLSocket] = set()
        self._closed: BaseException | None = None

    def acquire(self, deadline: float) -> SyncConnection:
        """The most recently used idle connection, or a new one once the budget allows."""
        if self._closed is not None:
            raise self._closed
        try:
            conn = self._idle.pop()
        except IndexError:
            pass
        else:
            conn.in_use = True
            return conn
        handed = self._budget.take(self, deadline)
        if handed is not None:  # a connection released by another thread, straight to us
            handed.in_use = True
            if self._closed is not None:
                self._discard(handed)
                raise self._closed
            return handed  # type: ignore[no-any-return]
        try:
            conn = self._connect(deadline)
        except BaseException:
            self._budget.give_back()
            raise
        with self._lock:
            self._all.add(conn)
        if self._closed is not None:
            self._discard(conn)
            raise self._closed
        return conn

    def _connect(self, deadline: float) -> SyncConnection:
        """A new connection; one that takes over CONNECT_TIMEOUT is tried again until ``deadline`` (see AsyncPool)."""
        while True:
            if self._closed is not None:
                raise self._closed
            try:
                return SyncConnection(self, deadline)
            except TimeoutError:
                if deadline != math.inf and time.monotonic() >= deadline:
                    raise
                logger.debug("%s:%d: no connection within %g s; trying again", self.host, self.port, CONNECT_TIMEOUT)

    def call(self, request: Request, deadline: float) -> tuple[Response, SyncConnection | None]:
        """Sends a whole call and reads its reply by ``deadline``. A streamed reply comes with its connection,
        to read with ``reply_frames``; otherwise the connection is back in the pool already."""
        conn = self.clean_connection(deadline)
        try:
            response = conn.request(request.data, deadline)
        except BaseException:
            conn.broken = True
            self.release(conn)
            raise
        if response.content_type == wire.STREAM:
            return response, conn
        self.release(conn)
        return response, None

    def reply_frames(self, conn: SyncConnection, deadline: float) -> Generator[tuple[bytes, bytes], None, None]:
        """The frames of a streamed reply, read as iterated; the connection goes back when they end or are dropped."""
        frames = conn.frames(deadline)
        try:
            yield from frames
        finally:
            frames.close()
            self.release(conn)

    def clean_connection(self, deadline: float) -> SyncConnection:
        """A pooled connection with nothing unread on it: one with stray bytes or an EOF is closed, never used."""
        while True:
            conn = self.acquire(deadline)
            if not conn.stale():
                return conn
            self.release(conn)  # stale() marked it broken: release closes it

    def release(self, conn: SyncConnection) -> None:
        """Keeps a healthy connection for the next call; closes a broken one."""
        conn.in_use = False
        if conn.broken or self._closed is not None:
            self._discard(conn)
            return
        if self._budget.hand_over(self, conn):
            return
        if self._budget.waiting:  # a caller of the other pool waits: closing this passes the slot on
            self._discard(conn)
            return
        conn.idle_since = time.monotonic()
        self._idle.append(conn)

    def _discard(self, conn: SyncConnection) -> None:
        conn.close()
        with self._lock:
            if conn not in self._all:
                return
            self._all.remove(conn)
        self._budget.give_back()

    def close_idle(self, idle_for: float) -> None:
        """Closes connections idle for ``idle_for`` seconds or more (any thread)."""
        cutoff = time.monotonic() - idle_for
        while self._idle and self._idle[0].idle_since <= cutoff:
            self._reclaim_idle()

    def _reclaim_idle(self) -> None:
        """Closes the oldest idle connection, if any (any thread)."""
        try:
            conn = self._idle.popleft()
        except IndexError:
            return
        self._discard(conn)

    def close(self, reason: BaseException) -> None:
        """Wakes every blocked caller; their connections are closed as they release them."""
        self._closed = reason
        self._budget.close()
        for sock in list(self._connecting):
            _shutdown(sock)
        with self._lock:
            conns = list(self._all)
        for conn in conns:
            conn.broken = True
            if conn.in_use:
                conn.wake()
            else:
                self._discard(conn)


def _shutdown(sock: socket.socket) -> None:
    """Shuts a socket down (not the TLS layer: safe while another thread is blocked on it)."""
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass


def _connected(pool: SyncPool, timeout: float) -> socket.socket:
    """A blocking socket connected to the pool's server: its Unix socket if it has one, else TCP."""
    if pool.unix_socket is None:
        return socket.create_connection((pool.host, pool.port), timeout=timeout)
    return sockets.connect_unix(pool.unix_socket, timeout)


def _connect_timeout(deadline: float) -> float:
    """A connect waits for the deadline, but never longer than CONNECT_TIMEOUT."""
    left = remaining(deadline)
    return CONNECT_TIMEOUT if left is None else min(left, CONNECT_TIMEOUT)
