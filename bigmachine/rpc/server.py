"""Server side of RPC: a raw ASGI callable that dispatches ``/rpc/Service.method`` to services.

Plain methods run in a thread pool (unpickling, the call and pickling all in the
worker thread, so big payloads never stall the event loop and its keepalives);
``async def`` methods run on the loop. Everything else goes to an optional fallback
ASGI app (the debug pages), imported only when first needed.

A caller that disconnects cancels its call: uvicorn never cancels the app, so each
call watches ``receive()`` for ``http.disconnect`` once its request is read (``_Watch``).
A streamed reply may read a streamed argument as it arrives; what it leaves unread is
drained before the final frame.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

from ..errors import Error, NotFound, ProtocolError
from .stats import CallStats
from . import wire
from .threads import ServiceThreads

__all__ = ["Registry", "RpcApp"]

logger = logging.getLogger(__name__)

ASGIApp = Callable[[dict[str, Any], Callable[[], Awaitable[dict[str, Any]]], Callable[[dict[str, Any]], Awaitable[None]]], Awaitable[None]]
_DONE = object()


class Registry:
    """The services installed on this process, and their public methods by ``"Service.method"``."""

    def __init__(self) -> None:
        self.services: dict[str, Any] = {}
        self.stats = CallStats()  # per-method latency and bytes served; read by Supervisor.metrics
        self._methods: dict[str, tuple[Callable[..., Any], bool]] = {}

    def add(self, name: str, service: Any) -> None:
        self.services[name] = service
        self._methods.clear()

    def resolve(self, method: str) -> tuple[Callable[..., Any], bool]:
        """The bound method and whether it is a coroutine function; ``NotFound`` lists what exists."""
        try:
            return self._methods[method]
        except KeyError:
            pass
        service_name, _, name = method.partition(".")
        service = self.services.get(service_name)
        if service is None:
            raise NotFound(
                f"no service {service_name!r} (calling {method!r}); services here: {sorted(self.services)}"
            )
        fn = getattr(service, name, None) if name and not name.startswith("_") else None
        if not callable(fn):
            methods = public_methods(service)
            hint = next((f"; did you mean {m!r}?" for m in methods if _folded(m) == _folded(name)), "")
            raise NotFound(f"service {service_name!r} has no public method {name!r}{hint}; its methods: {methods}")
        if inspect.isasyncgenfunction(fn):  # `async def` with `yield`: on the loop, with async stream arguments
            fn = _returning(fn)
        entry = (fn, inspect.iscoroutinefunction(fn))
        self._methods[method] = entry
        return entry


def _returning(generator_function: Callable[..., Any]) -> Callable[..., Awaitable[Any]]:
    """A coroutine function returning the async generator that ``generator_function`` makes."""

    async def call(*args: Any, **kwargs: Any) -> Any:
        return generator_function(*args, **kwargs)

    return call


def _folded(name: str) -> str:
    """A method name without case or underscores: Go's ``MemInfo`` and Python's ``mem_info`` fold alike."""
    return name.replace("_", "").casefold()


def public_methods(service: Any) -> list[str]:
    """The names callable remotely on ``service``."""
    return sorted(n for n in dir(service) if not n.startswith("_") and callable(getattr(service, n, None)))



class _RequestStream:
    """The streamed argument of a call: data frames read from the request body on demand."""

    def __init__(self, receive: Callable[[], Awaitable[dict[str, Any]]], reader: wire.FrameReader,
                 frames: list[tuple[bytes, bytes]], loop: asyncio.AbstractEventLoop, watch: _Watch, *,
                 body_done: bool) -> None:
        self._receive, self._reader, self._loop, self._watch = receive, reader, loop, watch
        self._frames = collections.deque(frames)
        self._ended = False
        self._body_done = body_done  # the HTTP body is all read: no frame will come
        if body_done:
            watch.start()

    async def next_chunk(self) -> bytes | None:
        """The next chunk, or None at the end of the stream."""
        while True:
            if self._frames:
                kind, payload = self._frames.popleft()
                if kind == wire.DATA:
                    return payload
                if kind == wire.END:
                    self._ended = True
                    self._watch.start()  # nothing more to read: from now on receive() only says "disconnected"
                    return None
                raise ProtocolError("the caller's stream argument failed: " + payload.decode(errors="replace"))
            if self._ended:
                return None
            if self._body_done:
                raise ProtocolError("the streamed argument ended without an end frame")
            message = await self._receive()
            if message["type"] == "http.disconnect":
                self._watch.disconnected()
                raise ProtocolError("the caller disconnected while streaming an argument")
            self._frames.extend(self._reader.feed(message.get("body", b"")))
            self._body_done = not message.get("more_body")

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while (chunk := await self.next_chunk()) is not None:
            yield chunk

    def __iter__(self) -> Iterator[bytes]:
        """For plain methods, which run in a worker thread: each chunk is fetched on the loop."""
        while (chunk := asyncio.run_coroutine_threadsafe(self.next_chunk(), self._loop).result()) is not None:
            yield chunk

    async def drain(self) -> None:
        """Reads what the method left unread, so the connection can be reused."""
        while await self.next_chunk() is not None:
            pass


class RpcApp:
    """The ASGI application every machine serves."""

    def __init__(self, registry: Registry, executor: ServiceThreads,
                 fallback: Callable[[], ASGIApp] | None = None,
                 on_memory_error: Callable[[str, MemoryError], None] | None = None) -> None:
        self.registry = registry
        self._on_memory_error = on_memory_error
        self.executor = executor
        self._fallback_factory = fallback
        self._fallback: ASGIApp | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        if path.startswith("/rpc/"):
            await self.registry.stats.measure(path[5:], self._rpc, scope, receive, send)
        elif self._fallback_factory is not None:
            if self._fallback is None:
                self._fallback = self._fallback_factory()
            await self._fallback(scope, receive, send)
        else:
            await _send_plain(send, 404, b"not found: RPC paths are /rpc/Service.method\n")

    async def _rpc(self, method: str, scope: dict[str, Any], receive: Any, send: Any) -> bool:
        """Serves one call; returns True when the caller cancelled it by disconnecting."""
        if scope["method"] != "POST":
            await _send_plain(send, 405, b"RPC calls are POST requests\n")
            return False
        watch = _Watch(receive)
        try:
            reply, stream = await self._serve(method, scope, receive, watch)
            if isinstance(reply, bytes):
                watch.stop()
                await _send_reply(send, 200, wire.RESULT, reply)
            else:
                await self._stream_reply(method, reply, stream, watch, send)
        except asyncio.CancelledError:
            if not watch.cancelled_call():
                raise
            return True  # the caller is gone: nobody to answer (a thread method's result is dropped)
        except _MethodRaised as raised:  # whatever the method raised, library errors included, is remote
            await _send_error(send, watch, 500, wire.encode_error(raised.__cause__, remote=True))  # type: ignore[arg-type]
        except Error as exc:  # the library's own: NotFound, SerializationError, ProtocolError
            status = 404 if isinstance(exc, NotFound) else 400
            await _send_error(send, watch, status, wire.encode_error(exc, remote=False))
        except MemoryError as exc:
            watch.stop()
            if self._on_memory_error is None:
                raise
            self._on_memory_error(method, exc)  # the machine is done for: it reports and exits
        except Exception as exc:  # a failure around the method (its iterator's setup, say): still the caller's to see
            await _send_error(send, watch, 500, wire.encode_error(exc, remote=True))
        finally:
            watch.stop()
        return watch.gone

    async def _serve(self, method: str, scope: dict[str, Any], receive: Any,
                     watch: _Watch) -> tuple[Any, _RequestStream | None]:
        """Runs the method: its pickled result, or the iterator to stream (and the argument stream it may read)."""
        content_type = _header(scope, b"content-type")
        fn, is_async = self.registry.resolve(method)
        if content_type == wire.CALL:
            body = await _read_body(receive)
            watch.start()
            if is_async:
                args, kwargs = wire.decode_args(method, body)
                result = await _acall_method(fn, args, kwargs)
                return (result if wire.is_stream(result) else wire.encode_result(method, result)), None
            return await self.executor.run(_call_plain, method, fn, body), None
        if content_type == wire.CALL_STREAM:
            stream, args, kwargs = await _read_streamed_call(method, receive, is_async, watch)
            result = await _invoke(fn, is_async, args, kwargs, self.executor)
            if wire.is_stream(result):
                return result, stream  # streamed while the argument still arrives; drained after
            await stream.drain()
            return wire.encode_result(method, result), None
        raise ProtocolError(f"{method}: unexpected content type {content_type!r}")

    async def _stream_reply(self, method: str, source: Any, stream: _RequestStream | None, watch: _Watch,
                            send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", wire.STREAM)]})
        try:
            async for chunk in _aiterate(source, self.executor):
                if not isinstance(chunk, (bytes, bytearray, memoryview)):
                    raise TypeError(f"{method}: a streamed reply must yield bytes, not {type(chunk).__qualname__}")
                if chunk:
                    await send({"type": "http.response.body", "body": wire.frame(wire.DATA, bytes(chunk)), "more_body": True})
            if stream is not None:
                await stream.drain()  # the reply ended before the argument: read the rest, then end
        except Exception as exc:
            logger.debug("%s: streamed reply failed: %r", method, exc)
            watch.stop()
            await send({"type": "http.response.body", "body": wire.frame(wire.FAIL, wire.encode_error(exc, remote=True))})
            return
        watch.stop()
        await send({"type": "http.response.body", "body": wire.frame(wire.END)})


class _Watch:
    """Cancels the task serving a call when its caller disconnects (uvicorn does not cancel the app).

    Started once the request is read, so it never takes body messages from the method;
    stopped before the final reply message, after which ``receive()`` returns a
    disconnect for every call.
    """

    __slots__ = ("_receive", "_task", "_serving", "_gone", "_stopped")

    def __init__(self, receive: Callable[[], Awaitable[dict[str, Any]]]) -> None:
        self._receive = receive
        self._task: asyncio.Task[None] | None = None
        self._serving = asyncio.current_task()
        self._gone = self._stopped = False

    def start(self) -> None:
        if self._task is None and not self._stopped:
            self._task = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        while (await self._receive())["type"] != "http.disconnect":
            pass  # an empty end of body after the END frame
        self.disconnected()

    @property
    def gone(self) -> bool:
        return self._gone

    def disconnected(self) -> None:
        """The caller is gone: cancel what serves it (from within, the caller's ProtocolError says so instead).

        A cancel requested here reaches the serving task at an ``await`` inside ``RpcApp._rpc``'s
        ``try``, never in uvicorn, which would log it as an error.
        """
        if not self._stopped and not self._gone:
            self._gone = True
            if self._serving is not None and self._serving is not asyncio.current_task():
                self._serving.cancel()

    def cancelled_call(self) -> bool:
        """Whether a CancelledError is this watch's doing (then it is taken back: the call ends quietly)."""
        if not self._gone:
            return False
        if self._serving is not None:
            self._serving.uncancel()
        return True

    def stop(self) -> None:
        self._stopped = True
        if self._task is not None:
            self._task.cancel()
            self._task = None


class _MethodRaised(Exception):
    """The service method raised its ``__cause__`` (told apart from the library's own failures around it)."""


def _call_method(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    try:
        return fn(*args, **kwargs)
    except MemoryError:
        raise  # the machine's problem, not the call's: see RpcApp's on_memory_error
    except Exception as exc:
        raise _MethodRaised() from exc


async def _acall_method(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    try:
        return await fn(*args, **kwargs)
    except MemoryError:
        raise
    except Exception as exc:
        raise _MethodRaised() from exc


def _call_plain(method: str, fn: Callable[..., Any], body: list[bytes]) -> Any:
    """Runs in a worker thread: unpickle, call, pickle (or hand back an iterator to stream)."""
    args, kwargs = wire.decode_args(method, body)
    result = _call_method(fn, args, kwargs)
    return result if wire.is_stream(result) else wire.encode_result(method, result)


async def _invoke(fn: Callable[..., Any], is_async: bool, args: tuple[Any, ...], kwargs: dict[str, Any],
                  executor: ServiceThreads) -> Any:
    if is_async:
        return await _acall_method(fn, args, kwargs)
    return await executor.run(_call_method, fn, args, kwargs)


async def _read_streamed_call(method: str, receive: Any, is_async: bool,
                             watch: _Watch) -> tuple[_RequestStream, tuple[Any, ...], dict[str, Any]]:
    """Reads the head frame of a call with a streamed argument and puts the stream in its place."""
    reader = wire.FrameReader()
    frames: list[tuple[bytes, bytes]] = []
    while not frames:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ProtocolError(f"{method}: the caller disconnected")
        frames = reader.feed(message.get("body", b""))
        if not frames and not message.get("more_body"):
            raise ProtocolError(f"{method}: the streamed call has no head frame")
    kind, head = frames.pop(0)
    if kind != wire.HEAD:
        raise ProtocolError(f"{method}: the streamed call does not start with a head frame")
    args, kwargs = wire.decode_args(method, head)
    stream = _RequestStream(receive, reader, frames, asyncio.get_running_loop(), watch,
                            body_done=not message.get("more_body"))
    value: Any = stream if is_async else iter(stream)
    args = tuple(value if isinstance(a, wire.StreamArgument) else a for a in args)
    kwargs = {k: value if isinstance(v, wire.StreamArgument) else v for k, v in kwargs.items()}
    return stream, args, kwargs


async def _aiterate(source: Any, executor: ServiceThreads) -> AsyncIterator[Any]:
    """Iterates a sync or async iterator; a sync one is advanced in the thread pool."""
    if isinstance(source, collections.abc.AsyncIterator):
        async for item in source:
            yield item
        return
    try:
        while (item := await executor.run(next, source, _DONE)) is not _DONE:
            yield item
    finally:
        close = getattr(source, "close", None)
        if close is not None:
            try:
                close()
            except ValueError:  # cancelled while a pool thread runs it ("generator already executing")
                pass


async def _read_body(receive: Any) -> list[bytes]:
    """A request's body, in the pieces it came in (``wire.loads`` reads them without a join)."""
    message = await receive()
    body: bytes = message.get("body", b"")
    chunks = [body]
    if not message.get("more_body"):
        return chunks
    size = len(body)
    while message.get("more_body"):
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ProtocolError("the caller disconnected before sending the whole request")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > wire.MAX_REQUEST:
            raise ProtocolError(f"the request is over {wire.MAX_REQUEST >> 20} MiB; stream large arguments instead")
        chunks.append(chunk)
    return chunks


def _header(scope: dict[str, Any], name: bytes) -> bytes:
    for key, value in scope["headers"]:
        if key == name:
            return value  # type: ignore[no-any-return]
    return b""


async def _send_reply(send: Any, status: int, content_type: bytes, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type), (b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})


async def _send_error(send: Any, watch: _Watch, status: int, body: bytes) -> None:
    watch.stop()
    await _send_reply(send, status, wire.ERROR, body)


async def _send_plain(send: Any, status: int, body: bytes) -> None:
    await _send_reply(send, status, b"text/plain; charset=utf-8", body)
