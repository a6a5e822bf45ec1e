"""What the sync and async call paths share: request encoding, reply decoding, deadlines.

Kept free of I/O, so ``Machine.call`` (blocking socket) and ``Machine.acall``
(asyncio protocol) encode, decode and map errors the same way.
"""

from __future__ import annotations

import collections.abc
import functools
import io
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from ..errors import ProtocolError, SerializationError
from . import wire
from .codec import JOIN_LIMIT, LAST_CHUNK, Response, encode_chunk, encode_head, encode_request
from .deadlines import deadline_after, remaining

__all__ = ["Request", "STREAM_CHUNK", "check_method_name", "deadline_after", "decode_reply",
           "encode_call", "remaining"]

STREAM_CHUNK = 1 << 20


@dataclass(slots=True)
class Request:
    """A call ready to send: the whole request, or its head plus an argument to stream."""

    method: str
    data: bytes | tuple[bytes, ...]  # one buffer; or a head and the pieces of a big body, not copied together
    stream: Any = None  # a binary file, an iterator or an async iterator of bytes

    @property
    def size(self) -> int:
        """Bytes sent whole (a streamed argument's chunks not counted)."""
        data = self.data
        return len(data) if isinstance(data, bytes) else sum(map(len, data))


def _is_stream_argument(value: Any) -> bool:
    if type(value) in _NEVER_STREAMED:
        return False
    return isinstance(value, (io.RawIOBase, io.BufferedIOBase)) or wire.is_stream(value)


_NEVER_STREAMED = frozenset((int, float, str, bytes, bool, type(None), tuple, list, dict))


def check_method_name(method: Any) -> None:
    """Raises ValueError unless ``method`` is ``Service.method`` with both parts Python identifiers.

    Checked before anything is sent: a name holding a CR LF or a space would otherwise
    change the request line and put a pooled connection out of step (docs/reliability.md).
    """
    if isinstance(method, str):
        service, dot, name = method.partition(".")
        if dot and service.isidentifier() and name.isidentifier():
            return
    raise ValueError(f"method must be 'Service.method' with both parts Python identifiers (letters, digits, _; "
                     f"Unicode allowed), not {method!r}")


@functools.lru_cache(maxsize=4096)
def _path(method: str) -> bytes:
    """The request path of a checked method name: percent-encoded UTF-8 (the server decodes it)."""
    check_method_name(method)
    return b"/rpc/" + (method.encode() if method.isascii() else quote(method).encode())


def encode_call(host: bytes, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Request:
    """Pickles a call; a file or bytes-iterator argument is replaced by a marker and streamed."""
    if not isinstance(method, str):
        check_method_name(method)
    path = _path(method)
    streamed = []  # the common call, all plain values, is told so by the type check in C
    if not (_NEVER_STREAMED.issuperset(map(type, args)) and _NEVER_STREAMED.issuperset(map(type, kwargs.values()))):
        streamed = [k for k, v in [*enumerate(args), *kwargs.items()] if _is_stream_argument(v)]
    if not streamed:
        parts = wire.encode_arg_parts(method, args, kwargs)
        size = sum(map(len, parts)) if len(parts) > 1 else len(parts[0])
        if size > wire.MAX_REQUEST:
            raise SerializationError(
                f"{method}: the arguments pickle to {size / (1 << 20):.0f} MiB, over the {wire.MAX_REQUEST >> 20} MiB "
                "a call can carry whole; pass large data as a binary file or an iterator of bytes, which is streamed"
            )
        if size <= JOIN_LIMIT:
            return Request(method, encode_request(host, path, wire.CALL, parts[0] if len(parts) == 1 else b"".join(parts)))
        return Request(method, (encode_head(host, path, wire.CALL, size), *parts))
    if len(streamed) > 1:
        raise ValueError(f"{method}: only one argument can be streamed; arguments {streamed} are all streams")
    (where,) = streamed
    marker = wire.StreamArgument()
    if isinstance(where, int):
        source = args[where]
        args = (*args[:where], marker, *args[where + 1 :])
    else:
        name = str(where)
        source = kwargs[name]
        kwargs = {**kwargs, name: marker}
    head = wire.frame(wire.HEAD, wire.encode_args(method, args, kwargs))
    return Request(method, encode_request(host, path, wire.CALL_STREAM, None) + encode_chunk(head), source)


def stream_chunks(source: Any) -> collections.abc.Iterator[bytes]:
    """The chunks of a sync stream argument (a binary file or an iterator of bytes)."""
    if isinstance(source, (io.RawIOBase, io.BufferedIOBase)):
        while chunk := source.read(STREAM_CHUNK):
            yield chunk
        return
    for chunk in source:
        if not isinstance(chunk, (bytes, bytearray, memoryview)):
            raise TypeError(f"a streamed argument must yield bytes, not {type(chunk).__qualname__}")
        if chunk:
            yield bytes(chunk)


def data_chunk(chunk: bytes) -> tuple[bytes | memoryview, ...]:
    """A chunk of a streamed argument as it goes on the wire (``framed_chunk``)."""
    return framed_chunk(wire.DATA, chunk)


def framed_chunk(kind: bytes, payload: bytes | memoryview = b"") -> tuple[bytes | memoryview, ...]:
    """One frame in one HTTP chunk, as pieces to write one after another: a large payload goes as it is,
    never copied behind its headers (twice: once into the frame, once into the chunk)."""
    head = b"%x\r\n" % (wire.FRAME_HEADER + len(payload)) + wire.frame_header(kind, len(payload))
    if len(payload) > JOIN_LIMIT:
        return head, payload, b"\r\n"
    return (b"".join((head, payload, b"\r\n")),)


END_OF_STREAM = encode_chunk(wire.frame(wire.END)) + LAST_CHUNK


def decode_reply(response: Response, method: str, machine: str) -> Any:
    """The result of a whole (not streamed) reply, or the error it carries, raised."""
    if response.content_type == wire.RESULT and response.status == 200:
        try:
            return wire.loads(response.chunks)
        except Exception as exc:
            raise SerializationError(f"{method}: the result from {machine} cannot be unpickled here: {exc!r}") from exc
    if response.content_type == wire.ERROR:
        wire.raise_error(response.body, machine)
    raise ProtocolError(
        f"{method}: unexpected reply from {machine}: HTTP {response.status} {response.body[:200]!r}"
    )


def decode_frame(kind: bytes, payload: bytes, machine: str) -> bytes | None:
    """A data frame's bytes, None at the end of the stream; a failure frame is raised."""
    if kind == wire.DATA:
        return payload
    if kind == wire.END:
        return None
    wire.raise_error(payload, machine)
