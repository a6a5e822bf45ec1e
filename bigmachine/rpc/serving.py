"""One connection of a machine's server, served by its own thread: requests in, replies out, in turn.

A plain method runs right in the connection's thread once it holds a service slot, so a
call costs no hop between threads: the thread wakes when the request arrives, and sleeps
again after sending the reply. An ``async def`` method runs on the machine's loop, which
the thread waits for. Whole bodies are read as they came (``wire.loads`` reads pieces
without joining them); streamed arguments and replies are frames in HTTP chunks, read and
written as the method consumes and produces them.

A caller that hangs up (``HangupWatch``) cancels its call: an ``async def`` method gets
``CancelledError``, a plain method's result is dropped, and the call is counted cancelled
at once.

Requests may be pipelined (HTTP/1.1): a small whole call can arrive before the one ahead of
it is answered. It waits in ``_queue``, parsed, and is answered after it, in order; replies
made while more calls wait are held back and go out together (``_outbox``), so a burst of
calls costs one read and one write. Only the client decides what to pipeline: calls of
methods that keep to ``codec.SLOW_CALL``, which each reply tells it (client.AsyncPool).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import logging
import socket
import ssl
import struct
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from ..errors import Error, NotFound, ProtocolError
from . import calls, codec, tls_io, wire
from .chunked import MessageReader

if TYPE_CHECKING:
    from .server import RpcServer

__all__ = ["ServerConnection"]

logger = logging.getLogger(__name__)

_READ_SIZE = 1 << 16  # a TLS record is at most 16 KiB: a read never returns more than a few
_DONE = object()


class _HungUp(Exception):
    """The caller closed the connection: nobody is left to answer."""


class _MethodRaised(Exception):
    """The service method raised its ``__cause__`` (told apart from the library's own failures around it)."""


class _Call:
    """One call in progress: counted exactly once, when it ends or when its caller hangs up."""

    __slots__ = ("method", "begun", "gone", "received", "sent", "failed", "_count_once", "_waiting", "_server")

    def __init__(self, server: RpcServer, method: str) -> None:
        self._server = server
        self.method = method
        self.begun = time.perf_counter()
        self.gone = False
        self.received = self.sent = 0
        self.failed = False
        self._count_once = [None]  # list.pop is atomic: whichever thread pops first counts the call
        self._waiting: concurrent.futures.Future[Any] | None = None  # work on the loop this call waits for

    def hang_up(self) -> None:
        """The caller is gone (on the machine's loop, from the hang-up watch): cancel what runs, count the call cancelled."""
        self.gone = True
        waiting = self._waiting
        if waiting is not None:
            waiting.cancel()
        self.count(cancelled=True)

    def count(self, cancelled: bool = False) -> None:
        try:
            self._count_once.pop()
        except IndexError:
            return
        self._server.registry.stats.record(self.method, time.perf_counter() - self.begun,
                                           self.failed and not cancelled, self.sent, self.received, cancelled)

    def on_loop(self, coroutine: Any) -> Any:
        """Runs ``coroutine`` on the machine's loop and waits for it; a hang-up cancels it."""
        future = asyncio.run_coroutine_threadsafe(coroutine, self._server.loop)
        self._waiting = future
        try:
            if self.gone:
                future.cancel()
            return future.result()
        except concurrent.futures.CancelledError:
            if self.gone:
                raise _HungUp() from None
            raise
        finally:
            self._waiting = None


class ServerConnection:
    """A TLS connection accepted by ``RpcServer``, served by one thread until either side closes it."""

    def __init__(self, server: RpcServer, raw: socket.socket) -> None:
        self.server = server
        self.raw = raw
        self.sock: ssl.SSLSocket | None = None
        self._tls: Any = None  # the TLS connection under ``sock``, written straight (tls_io)
        self._recv_into: tls_io.RecvInto | None = None  # and read straight
        self.fd = -1  # watched for hang-ups while the connection lives
        self.busy = False  # a request is being read or served
        self.call: _Call | None = None
        self._buffer = bytearray(_READ_SIZE)
        self._view = memoryview(self._buffer)
        self._reader = MessageReader(codec.RequestParser(self))
        self._request: codec.Request | None = None
        self._body: list[bytes] = []
        self._body_size = 0
        self._frames: collections.deque[tuple[bytes, bytes]] | None = None  # a streamed argument's
        self._direct: codec.DirectBody | None = None
        self._complete = False
        self.argument_ended = False
        self._queue: collections.deque[tuple[codec.Request, list[bytes]]] = collections.deque()  # pipelined calls
        self._queued: tuple[codec.Request, list[bytes]] | None = None  # the pipelined call being parsed
        self._outbox: list[bytes] = []  # replies held back while pipelined calls wait

    # ------------------------------------------------------------------ the thread

    def run(self) -> None:
        """The connection's thread: handshake, then serve requests until the caller or the server closes."""
        try:
            # A caller gone before the handshake (reset while queued: a killed driver) is let go here:
            # CPython's wrap_socket raises ConnectionResetError for it and leaks its half-made SSLSocket.
            self.raw.getpeername()
            self.raw.settimeout(self.server.handshake_timeout)
            self.sock = self.server.context.wrap_socket(self.raw, server_side=True)  # takes over raw's descriptor
            self._tls = tls_io.connection_of(self.sock)  # read and written straight, past ssl.py's wrappers
            self._recv_into = tls_io.reader(self._tls)
            tls_io.read_ahead(self._tls)
            _block_with_bound(self.sock, self.server.idle_timeout)
            self.fd = self.sock.fileno()
            if not self.server.hangups.watch(self.fd, self._hung_up):
                return  # the server ended while we shook hands
            while not self.server.closing and self._serve_next():
                pass
            if self._outbox:
                self._flush()  # answered calls of a queue cut short by the server's end
        except (OSError, ssl.SSLError, ProtocolError, _HungUp) as exc:
            logger.debug("connection from %s ended: %r", _peer(self.raw), exc)
        finally:
            self.server.forget(self)

    def _hung_up(self) -> None:
        call = self.call
        if call is not None:
            call.hang_up()

    def _serve_next(self) -> bool:
        """Reads and answers one request (the next pipelined one, if any waits); False when the connection should close."""
        self._request, self._complete = None, False
        if not self._queue:
            if self._outbox:
                self._flush()  # before waiting for more: nothing is held back while the caller waits
            if not self._reader.parser.in_head:  # mid-head, the next request's first bytes are in hand
                self._reader.start()
            while self._request is None and not self._queue:
                if not self._read():
                    return False  # closed (or idle too long) between requests: the normal end
        if self._request is None:
            self._request, self._body = self._queue.popleft()
            self._body_size = sum(map(len, self._body))
            self._complete, self.argument_ended = True, False
            self._direct = self._frames = None
        self.busy = True
        try:
            return self._answer(self._request) and self._request.keep_alive
        finally:
            self.busy = False

    def _read(self) -> bool:
        """Reads what has arrived and parses it; False at the end of the connection."""
        assert self._recv_into is not None
        reader = self._reader
        try:
            frames = reader.read_direct(self._recv_into)
            if frames is None:
                n = self._recv_into(self._buffer)
                if not n:
                    if self.busy:
                        raise _HungUp("the caller closed the connection mid-request")
                    return False
                frames = reader.feed(self._view[:n])
        except (ssl.SSLWantReadError, BlockingIOError):  # SO_RCVTIMEO passed
            if self._request is None and not self.busy:
                return False  # idle past the server's bound: the client reconnects when it needs to
            raise TimeoutError(f"nothing read for {self.server.idle_timeout:g} s in the middle of a request") from None
        except ConnectionResetError as exc:  # reset by the caller, or closed in the middle of a frame
            raise _HungUp(str(exc)) from None
        if frames is not None:
            self._take_frames(frames)
        return True

    def _take_frames(self, frames: list[tuple[bytes, bytes]]) -> None:
        """Counts and queues what a streamed argument's body brought."""
        body = self._reader.body
        assert body is not None and self._frames is not None
        grown, self._body_size = body.received - self._body_size, body.received
        if self.call is not None:
            self.call.received += grown
        self._frames.extend(frames)
        self._complete = body.done

    # ------------------------------------------------------------------ parser listener

    def request_head(self, request: codec.Request) -> None:
        if self._request is not None:
            self._queue_pipelined(request)
            return
        self._request = request
        self._body, self._body_size = [], 0
        self.argument_ended = False
        self._direct = self._frames = None
        if request.content_type == wire.CALL_STREAM:
            codec.require_chunked(request, "a call with a streamed argument")
            self._frames = collections.deque()
            raise codec.TakeOver()
        if request.content_type == wire.CALL and codec.DIRECT_BODY <= request.content_length <= wire.MAX_REQUEST:
            self._direct = codec.DirectBody(request.content_length)

    def request_body(self, data: bytes) -> None:
        if self._queued is not None:
            self._queued[1].append(data)
            return
        self._body_size += len(data)
        if self.call is not None:
            self.call.received += len(data)
        if self._direct is not None:
            self._direct.add(data)
        elif self._body_size <= wire.MAX_REQUEST:
            self._body.append(data)

    def request_complete(self) -> None:
        if self._queued is not None:
            self._queue.append(self._queued)
            self._queued = None
            return
        self._complete = True

    def _queue_pipelined(self, request: codec.Request) -> None:
        """A request that came before the one ahead of it was answered: parsed now, answered after it."""
        if request.content_type != wire.CALL or not 0 <= request.content_length <= wire.PIPELINED_MAX:
            raise ProtocolError(f"a pipelined request must be a whole call of at most {wire.PIPELINED_MAX} bytes; "
                                f"send {request.path[:80]!r} on a connection of its own")
        if len(self._queue) >= wire.PIPELINED_CALLS - 1:  # the call ahead is one of them
            raise ProtocolError(f"over {wire.PIPELINED_CALLS} calls were pipelined on one connection")
        self._queued = (request, [])

    # ------------------------------------------------------------------ answering

    def _answer(self, request: codec.Request) -> bool:
        path = request.path
        if not path.startswith(b"/rpc/"):
            return self._refuse(404, b"not found: RPC paths are /rpc/Service.method\n")
        if request.method != b"POST":
            return self._refuse(405, b"RPC calls are POST requests\n")
        method = path[5:].decode("utf-8", "replace")
        if "%" in method:
            method = unquote(method)
        call = self.call = _Call(self.server, method)
        call.received = self._body_size
        try:
            return self._serve_call(call, request)
        except _HungUp:
            call.count(cancelled=True)
            return False
        finally:
            call.count()
            self.call = None
            self._body, self._direct = [], None  # an idle connection keeps no request alive

    def _refuse(self, status: int, message: bytes) -> bool:
        """Answers a request that is not a call with a plain-text reason."""
        self._read_whole_body()
        keep_alive = self._reusable()
        self._send(codec.encode_response(status, _TEXT, message, keep_alive=keep_alive))
        return keep_alive

    def _serve_call(self, call: _Call, request: codec.Request) -> bool:
        try:
            if request.content_type == wire.CALL:
                self._read_whole_body()  # before anything can fail: the connection stays in step
            fn, is_async, limited = self.server.registry.resolve(call.method)
            if request.content_type == wire.CALL:
                if self._body_size > wire.MAX_REQUEST:
                    raise ProtocolError(f"the request is over {wire.MAX_REQUEST >> 20} MiB; stream large arguments instead")
                result = self._invoke_whole(call, fn, is_async, limited)
                stream = None
            elif request.content_type == wire.CALL_STREAM:
                stream, args, kwargs = self._streamed_arguments(call, is_async)
                result = self._invoke(call, fn, is_async, limited, args, kwargs)
                if not wire.is_stream(result):
                    stream.drain()
                    result = wire.encode_result(call.method, result)
            else:
                self._read_whole_body()
                raise ProtocolError(f"{call.method}: unexpected content type {request.content_type!r}")
        except _HungUp:
            raise
        except _MethodRaised as raised:  # whatever the method raised, library errors included, is remote
            return self._send_error(call, 500, wire.encode_error(raised.__cause__, remote=True))  # type: ignore[arg-type]
        except Error as exc:  # the library's own: NotFound, SerializationError, ProtocolError
            return self._send_error(call, 404 if isinstance(exc, NotFound) else 400, wire.encode_error(exc, remote=False))
        except MemoryError as exc:
            self.server.out_of_memory(call.method, exc)  # the machine is done for: it reports and exits
            raise _HungUp() from exc
        except Exception as exc:  # a failure around the method (its iterator's setup, say): still the caller's to see
            return self._send_error(call, 500, wire.encode_error(exc, remote=True))
        if call.gone:
            raise _HungUp()
        if isinstance(result, list):  # encode_result's pieces
            return self._send_body(call, 200, wire.RESULT, result)
        return self._stream_reply(call, result, stream)

    def _invoke_whole(self, call: _Call, fn: Callable[..., Any], is_async: bool, limited: bool) -> Any:
        """Runs a call whose arguments came whole: its pickled result, or the iterator to stream."""
        body, self._body, self._direct = self._body, [], None  # not kept while the method runs
        if is_async:
            args, kwargs = wire.decode_args(call.method, body)
            result = call.on_loop(_acall_method(fn, args, kwargs))
            return result if wire.is_stream(result) else wire.encode_result(call.method, result)
        with self._slot(call, limited):
            args, kwargs = wire.decode_args(call.method, body)
            del body
            result = _call_method(fn, args, kwargs)
            return result if wire.is_stream(result) else wire.encode_result(call.method, result)

    def _invoke(self, call: _Call, fn: Callable[..., Any], is_async: bool, limited: bool, args: tuple[Any, ...],
                kwargs: dict[str, Any]) -> Any:
        if is_async:
            return call.on_loop(_acall_method(fn, args, kwargs))
        with self._slot(call, limited):
            return _call_method(fn, args, kwargs)

    def _slot(self, call: _Call, limited: bool = True) -> _Slot | contextlib.nullcontext[None]:
        """A service slot held while a plain method runs; control methods (``limited`` False) need none."""
        return _Slot(self.server, call) if limited else _NO_SLOT

    def _read_whole_body(self) -> None:
        direct = self._direct
        if direct is not None and not self._complete:
            assert self._recv_into is not None
            try:
                read = direct.read_rest(self._recv_into)
            except ConnectionResetError as exc:
                raise _HungUp(str(exc)) from None
            self._body_size += read
            if self.call is not None:
                self.call.received += read
            self._reader.renew_parser()
            self._complete = True
        if direct is not None:
            self._body = [direct.body]  # type: ignore[list-item]
        while not self._complete:
            if not self._read():
                raise _HungUp("the caller closed the connection mid-request")
            if self._body_size > wire.MAX_REQUEST and self._frames is None:
                break  # not worth reading on: refused, and the connection closed after the reply

    # ------------------------------------------------------------------ streamed arguments

    def _streamed_arguments(self, call: _Call, is_async: bool) -> tuple[_ArgumentStream, tuple[Any, ...], dict[str, Any]]:
        """Reads the head frame of a call with a streamed argument and puts the stream in its place."""
        frames = self._frames
        assert frames is not None
        while not frames:
            if self._complete:
                raise ProtocolError(f"{call.method}: the streamed call has no head frame")
            if not self._read():
                raise _HungUp("the caller disconnected")
        kind, head = frames.popleft()
        if kind != wire.HEAD:
            raise ProtocolError(f"{call.method}: the streamed call does not start with a head frame")
        args, kwargs = wire.decode_args(call.method, head)
        stream = _ArgumentStream(self)
        value: Any = stream.aiter(self.server.loop) if is_async else iter(stream)
        args = tuple(value if isinstance(a, wire.StreamArgument) else a for a in args)
        kwargs = {k: value if isinstance(v, wire.StreamArgument) else v for k, v in kwargs.items()}
        return stream, args, kwargs

    def next_frame(self) -> tuple[bytes, bytes] | None:
        """The next frame of the streamed argument, read as needed; None once the body ended without one."""
        frames = self._frames
        assert frames is not None
        while not frames:
            if self._complete:
                return None
            if not self._read():
                raise _HungUp("the caller disconnected while streaming an argument")
        return frames.popleft()

    # ------------------------------------------------------------------ replies

    def _stream_reply(self, call: _Call, source: Any, stream: _ArgumentStream | None) -> bool:
        self._send(codec.encode_stream_head(wire.STREAM))
        try:
            for chunk in self._chunks(call, source):
                if not isinstance(chunk, (bytes, bytearray, memoryview)):
                    raise TypeError(f"{call.method}: a streamed reply must yield bytes, not {type(chunk).__qualname__}")
                if chunk:
                    self._send_frame(call, wire.DATA, chunk if type(chunk) is bytes else memoryview(chunk).cast("B"))
            if stream is not None:
                stream.drain()  # the reply ended before the argument: read the rest, then end
        except (_HungUp, OSError):
            raise _HungUp() from None
        except Exception as exc:
            logger.debug("%s: streamed reply failed: %r", call.method, exc)
            call.failed = True
            self._send_frame(call, wire.FAIL, wire.encode_error(exc, remote=True))
            self._send(codec.LAST_CHUNK)
            return self._reusable()
        self._send_frame(call, wire.END)
        self._send(codec.LAST_CHUNK)
        return self._reusable()

    def _chunks(self, call: _Call, source: Any) -> Iterator[Any]:
        """The items of a reply's iterator: a sync one advanced here (holding a slot for each step), an async one on the loop."""
        if isinstance(source, collections.abc.AsyncIterator):
            try:
                while (item := call.on_loop(_anext(source))) is not _DONE:
                    yield item
            finally:
                if call.gone or isinstance(source, collections.abc.AsyncGenerator):
                    _close_on_loop(source, self.server.loop)
            return
        try:
            while True:
                with self._slot(call):
                    item = next(source, _DONE)
                if item is _DONE:
                    return
                yield item
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()

    def _reusable(self) -> bool:
        """Whether the connection can take another request: this one read to its end. Past the end frame of
        a streamed argument only the last chunk is left: it is read; a request cut short leaves the
        connection out of step, so it is closed."""
        while not self._complete and self.argument_ended:
            if not self._read():
                return False
        return self._complete

    def _send_error(self, call: _Call, status: int, body: bytes) -> bool:
        call.failed = True
        if call.gone:
            raise _HungUp()
        return self._send_body(call, status, wire.ERROR, [body])

    def _send_body(self, call: _Call, status: int, content_type: bytes, pieces: list[bytes]) -> bool:
        """Sends a whole reply (held back while pipelined calls wait, if small); returns whether the connection
        takes another request (the reply says so)."""
        size = sum(map(len, pieces)) if len(pieces) > 1 else len(pieces[0])
        call.sent += size
        keep_alive = self._reusable()
        slow = time.perf_counter() - call.begun >= codec.SLOW_CALL
        if size > codec.JOIN_LIMIT:  # a big body: its pieces go as they are, never copied onto the head
            self._send(codec.encode_response_head(status, content_type, size, keep_alive=keep_alive, slow=slow))
            for piece in pieces:
                self._send(piece)
        else:
            reply = codec.encode_response(status, content_type, b"".join(pieces), keep_alive=keep_alive, slow=slow)
            if self._queue and keep_alive:
                self._outbox.append(reply)
            else:
                self._send(reply)
        return keep_alive

    def _send_frame(self, call: _Call, kind: bytes, payload: bytes | memoryview = b"") -> None:
        """One frame of a streamed reply; its payload is sent before the source resumes, so it is not copied."""
        call.sent += wire.FRAME_HEADER + len(payload)
        for piece in calls.framed_chunk(kind, payload):
            self._send(piece)

    def _send(self, data: bytes | memoryview) -> None:
        if self._outbox:
            self._flush()  # the replies held back go first: replies keep the order of their requests
        self._tls.write(data)

    def _flush(self) -> None:
        """Sends the replies held back, in one write."""
        held, self._outbox = self._outbox, []
        self._tls.write(held[0] if len(held) == 1 else b"".join(held))

    def close(self) -> None:
        """Closes the sockets (the connection's own thread, at its end)."""
        if self.sock is not None:
            self.sock.close()
        self.raw.close()

    def wake(self) -> None:
        """Shuts the socket down from another thread: a blocked read or write returns at once."""
        try:
            socket.socket.shutdown(self.sock or self.raw, socket.SHUT_RDWR)  # not the TLS layer: safe from another thread
        except OSError:
            pass


_TEXT = b"text/plain; charset=utf-8"
_NO_SLOT = contextlib.nullcontext()


class _Slot:
    """Holds one of the machine's service slots for a plain method; a caller that hangs up while queued gives up."""

    __slots__ = ("_server", "_call")

    def __init__(self, server: RpcServer, call: _Call) -> None:
        self._server, self._call = server, call

    def __enter__(self) -> None:
        call = self._call
        if not self._server.slots.acquire(lambda: call.gone):
            raise _HungUp("the call was abandoned while it waited for a service thread")

    def __exit__(self, *exc: object) -> None:
        self._server.slots.release()


class _ArgumentStream:
    """The streamed argument of a call: data frames read from the request body as the method asks."""

    def __init__(self, connection: ServerConnection) -> None:
        self._connection = connection
        self._ended = False

    def next_chunk(self) -> bytes | None:
        """The next chunk, or None at the end of the stream."""
        if self._ended:
            return None
        frame = self._connection.next_frame()
        if frame is None:
            raise ProtocolError("the streamed argument ended without an end frame")
        kind, payload = frame
        if kind == wire.DATA:
            return payload
        if kind == wire.END:
            self._ended = self._connection.argument_ended = True
            return None
        raise ProtocolError("the caller's stream argument failed: " + payload.decode(errors="replace"))

    def __iter__(self) -> Iterator[bytes]:
        while (chunk := self.next_chunk()) is not None:
            yield chunk

    async def aiter(self, loop: asyncio.AbstractEventLoop) -> AsyncIterator[bytes]:
        """For ``async def`` methods: each chunk is read by a worker thread while the loop serves on."""
        while (chunk := await loop.run_in_executor(None, self.next_chunk)) is not None:
            yield chunk

    def drain(self) -> None:
        """Reads what the method left unread, so the connection can be reused."""
        while self.next_chunk() is not None:
            pass


def _call_method(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    try:
        return fn(*args, **kwargs)
    except _HungUp:
        raise  # the caller left while the method read its streamed argument: a hang-up, not the method's failure
    except MemoryError:
        raise  # the machine's problem, not the call's: see RpcServer.out_of_memory
    except Exception as exc:
        raise _MethodRaised() from exc


async def _acall_method(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    try:
        return await fn(*args, **kwargs)
    except _HungUp:
        raise  # as in _call_method
    except MemoryError:
        raise
    except Exception as exc:
        raise _MethodRaised() from exc


async def _anext(source: AsyncIterator[Any]) -> Any:
    return await anext(source, _DONE)


def _close_on_loop(source: Any, loop: asyncio.AbstractEventLoop) -> None:
    aclose = getattr(source, "aclose", None)
    if aclose is not None and not loop.is_closed():
        try:
            asyncio.run_coroutine_threadsafe(aclose(), loop)
        except RuntimeError:
            pass


def _block_with_bound(sock: socket.socket, seconds: float) -> None:
    """Blocking reads and writes that give up after ``seconds`` (SO_RCVTIMEO, SO_SNDTIMEO): one system call
    per read, where a Python socket timeout costs a failed read and a poll before each."""
    sock.settimeout(None)
    bound = struct.pack("ll", int(seconds), int(seconds % 1 * 1e6))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, bound)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, bound)


def _peer(sock: socket.socket) -> str:
    try:
        peer = sock.getpeername()
    except OSError:
        return "a closed socket"
    return "%s:%s" % peer[:2] if isinstance(peer, tuple) else "a caller on the Unix socket"
