"""The wire format: pickled calls, results and errors, and the frames of streamed bodies.

A call is ``POST /rpc/Service.method`` with the pickled ``(args, kwargs)``. The reply is
a pickled result, a pickled error description, or a stream of frames. Frames carry a
kind byte and a length, so a stream that breaks half-way is told apart from one that
ended: only an ``END`` frame ends a stream successfully.
"""

from __future__ import annotations

import collections
import collections.abc
import io
import pickle
import struct
import traceback
from typing import Any, NoReturn

import cloudpickle

from ..errors import Error, ProtocolError, RemoteError, SerializationError
from . import buffers, codefile

__all__ = [
    "Body",
    "CALL",
    "CALL_STREAM",
    "ERROR",
    "RESULT",
    "STREAM",
    "FrameReader",
    "StreamArgument",
    "decode_args",
    "dump_parts",
    "dumps",
    "encode_arg_parts",
    "encode_args",
    "encode_error",
    "encode_result",
    "FRAME_HEADER",
    "frame",
    "frame_header",
    "is_stream",
    "loads",
    "raise_error",
]

codefile.install()  # shipped code keeps its driver-side file name (profiles, tracebacks)

# Content types.
CALL = b"application/x-bigmachine-call"
CALL_STREAM = b"application/x-bigmachine-call-stream"
RESULT = b"application/x-bigmachine-result"
STREAM = b"application/x-bigmachine-stream"
ERROR = b"application/x-bigmachine-error"

# Frame kinds.
DATA, END, FAIL, HEAD = b"d", b"z", b"e", b"h"
_FRAME = struct.Struct("!cQ")
FRAME_HEADER = _FRAME.size
MAX_REQUEST = 512 << 20  # a whole (not streamed) call's body or result; larger data should be streamed
# Pipelining (client.AsyncPool, serving.ServerConnection): at most this many calls in flight on one
# connection, each a whole call of at most PIPELINED_MAX bytes.
PIPELINED_CALLS = 8
PIPELINED_MAX = 1 << 16


def dumps(obj: Any) -> bytes:
    """Pickles with cloudpickle, so functions and ``__main__`` classes travel by value."""
    parts = dump_parts(obj)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def dump_parts(obj: Any) -> list[bytes]:
    """``dumps(obj)`` as the pieces to send one after another: a large ``bytes`` inside ``obj`` is a piece
    itself, never copied. In plain data (tuples, lists, dicts of plain values) it goes out of band, after
    the pickle, to be received straight into its final object (``buffers``); elsewhere pickle writes it
    straight to its file."""
    return _dump_parts(obj, _plainness(obj, 3))


def _dump_parts(obj: Any, plain: int) -> list[bytes]:
    """``dump_parts`` once ``_plainness`` is known."""
    if plain == _SMALL:
        return [pickle.dumps(obj, 5)]  # the C pickler, 5-10x faster for the common small call
    if plain == _LARGE:
        return _out_of_band(obj)
    parts = _Parts()
    cloudpickle.Pickler(parts, protocol=5).dump(obj)
    return parts.pieces


def _out_of_band(obj: Any) -> list[bytes]:
    """Plain data whose large ``bytes`` values go after the pickle, each a piece of its own."""
    sent: list[bytes] = []
    stream = pickle.dumps(_swap_large(obj, {}, sent), 5, buffer_callback=_after_the_pickle)
    return [buffers.prefix(len(stream), [len(value) for value in sent]) + stream, *sent]


def _after_the_pickle(buffer: pickle.PickleBuffer) -> bool:
    return False  # pickle's way of saying "out of band"


class _OutOfBand:
    """Stands in plain data for a large ``bytes`` value, which it sends out of band; it unpickles as the value."""

    __slots__ = ("value", "sent")

    def __init__(self, value: bytes, sent: list[bytes]) -> None:
        self.value, self.sent = value, sent

    def __reduce__(self) -> tuple[Any, ...]:
        self.sent.append(self.value)  # pickled once (then memoized): the buffers go in this order
        return bytes, (pickle.PickleBuffer(self.value),)  # bytes(b) is b itself


def _swap_large(obj: Any, copies: dict[int, tuple[Any, Any]], sent: list[bytes]) -> Any:
    """A copy of plain data (as ``_plainness`` found it) with each large ``bytes`` replaced by an ``_OutOfBand``;
    an object met twice is replaced by the same copy, so the pickle shares it as the original did."""
    seen = copies.get(id(obj))
    if seen is not None:
        return seen[1]
    kind = type(obj)
    if kind is bytes:
        copy: Any = _OutOfBand(obj, sent) if len(obj) >= _LARGE_PAYLOAD else obj
    elif kind is tuple or kind is list:
        copy = kind(_swap_large(item, copies, sent) for item in obj)
    elif kind is dict:
        copy = {key: _swap_large(value, copies, sent) for key, value in obj.items()}
    else:
        return obj
    copies[id(obj)] = (obj, copy)  # the original is kept too, so no other object takes its id meanwhile
    return copy


_NOT_PLAIN, _SMALL, _LARGE = 0, 1, 2
_LARGE_PAYLOAD = 1 << 16  # pickle's own threshold for writing a payload apart
_SCALARS = frozenset((int, float, str, bool, type(None)))  # plain, and never a large payload


def _plainness(obj: Any, depth: int) -> int:
    """Whether the C pickler can take ``obj`` (nothing to pickle by value), and whether it holds a large payload."""
    kind = type(obj)
    if kind in _SCALARS:
        return _SMALL
    if kind is bytes:
        return _LARGE if len(obj) >= _LARGE_PAYLOAD else _SMALL
    if not depth or (kind is not tuple and kind is not list and kind is not dict) or len(obj) > 16:
        return _NOT_PLAIN
    items = obj
    if kind is dict:
        for key in obj:
            if type(key) is not str:
                return _NOT_PLAIN
        items = obj.values()
    found = _SMALL
    for item in items:
        if type(item) in _SCALARS:  # inline: most of a call's values
            continue
        plain = _plainness(item, depth - 1)
        if plain == _NOT_PLAIN:
            return _NOT_PLAIN
        if plain == _LARGE:
            found = _LARGE
    return found



class _Parts:
    """The file a pickler writes to: each write is kept as it is. Only ``bytes`` are kept by reference
    (immutable); a mutable buffer is copied, since the call may be sent after its caller changed it."""

    __slots__ = ("pieces",)

    def __init__(self) -> None:
        self.pieces: list[bytes] = []

    def write(self, data: Any) -> int:
        self.pieces.append(data if type(data) is bytes else bytes(data))
        return len(data)


Body = bytes | bytearray | buffers.Split
"""A received body: one buffer, or (``codec.DirectBody``) its pickle and out-of-band buffers apart."""


def loads(data: Body | collections.abc.Sequence[Body]) -> Any:
    """Unpickles a buffer, or a body that arrived in pieces without joining them first.

    Read through ``readinto``, a large bytes value is copied once, from the pieces into
    its final object, instead of twice (join, then unpickle). A body received split
    (``buffers.Split``) is not copied at all.
    """
    if not isinstance(data, (bytes, bytearray, buffers.Split)):  # pieces, as the parser passed them on
        if len(data) != 1:
            return _load_pieces(data)
        data = data[0]
    if isinstance(data, buffers.Split):
        return pickle.loads(data.stream, buffers=data.buffers)
    if data[:1] == buffers.MAGIC:
        return _load_pieces([data])
    return pickle.loads(data)


def _load_pieces(pieces: collections.abc.Sequence[Any]) -> Any:
    """Unpickles a body in pieces; out-of-band buffers are copied once each, into their final objects."""
    reader = _PiecesReader(pieces)
    if next((piece for piece in pieces if piece), b"")[:1] != buffers.MAGIC:
        return pickle.load(reader)
    size = sum(map(len, pieces))
    head = bytearray()
    while isinstance(parts := buffers.layout(head), int):
        more = bytearray(parts - len(head))
        if reader.readinto(more) < len(more):
            raise ProtocolError(f"a {size}-byte body ends inside its out-of-band layout")
        head += more
    prefix_length, lengths = parts
    if prefix_length + sum(lengths) != size:
        raise ProtocolError(f"a {size}-byte body announces parts of {lengths} bytes after a {prefix_length}-byte prefix")
    stream = bytearray(lengths[0])
    reader.readinto(stream)
    values = []
    for length in lengths[1:]:
        value, view = buffers.fresh_bytes(length)
        reader.readinto(view)
        values.append(value)
    return pickle.loads(stream, buffers=values)


class _PiecesReader(io.RawIOBase):
    """A read-only file over a list of byte strings."""

    def __init__(self, pieces: collections.abc.Iterable[bytes | bytearray]) -> None:
        self._pieces = collections.deque(memoryview(p) for p in pieces if p)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        target = memoryview(buffer).cast("B")
        filled = 0
        pieces = self._pieces
        while pieces and filled < len(target):
            piece = pieces[0]
            n = min(len(piece), len(target) - filled)
            target[filled:filled + n] = piece[:n]
            filled += n
            if n == len(piece):
                pieces.popleft()
            else:
                pieces[0] = piece[n:]
        return filled


class StreamArgument:
    """Stands in the pickled arguments for the one argument whose bytes follow as frames."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (StreamArgument, ())


def encode_args(method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
    """Pickles a call's arguments; names the argument that can't be pickled."""
    parts = encode_arg_parts(method, args, kwargs)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def encode_arg_parts(method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[bytes]:
    """``encode_args`` as pieces to send one after another (``dump_parts``)."""
    try:
        # (args, {}) is as plain as args: judged one level down, the common call's envelope costs nothing
        return _dump_parts((args, kwargs), _plainness(args, 2) if not kwargs else _plainness((args, kwargs), 3))
    except Exception as exc:
        for where, value in [*enumerate(args), *kwargs.items()]:
            try:
                dumps(value)
            except Exception:
                raise SerializationError(
                    f"{method}: argument {where!r} of type {type(value).__qualname__} cannot be pickled: {exc}; "
                    "pass a picklable value (or a bytes iterator / binary file to stream it)"
                ) from exc
        raise SerializationError(f"{method}: arguments cannot be pickled: {exc}") from exc


def decode_args(method: str, data: bytes | list[bytes]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Unpickles a call's arguments."""
    try:
        args, kwargs = loads(data)
    except Exception as exc:
        raise SerializationError(f"{method}: arguments cannot be unpickled on the machine: {exc!r}") from exc
    return args, kwargs


def encode_result(method: str, value: Any) -> list[bytes]:
    """Pickles a method's result into pieces to send one after another (``dump_parts``); names the method
    and the result's type if it can't be pickled, or if it is too big.

    A result over ``MAX_REQUEST`` is refused on the machine, as an argument is in the driver:
    held whole it costs several times its size on both ends (docs/reliability.md).
    """
    try:
        parts = dump_parts(value)
    except Exception as exc:
        raise SerializationError(
            f"{method}: result of type {type(value).__qualname__} cannot be pickled: {exc}"
        ) from exc
    size = sum(map(len, parts))
    if size > MAX_REQUEST:
        raise SerializationError(
            f"{method}: the result of type {type(value).__qualname__} pickles to {_mib(size)}, over the "
            f"{_mib(MAX_REQUEST)} a reply can carry whole; return an iterator of bytes (a generator), which is streamed"
        )
    return parts


def _mib(size: int) -> str:
    return f"{size / (1 << 20):.0f} MiB" if size >= 10 << 20 else f"{size / (1 << 20):.2g} MiB"


def encode_error(exc: BaseException, *, remote: bool) -> bytes:
    """Describes an exception: its pickle when possible, and always its type, message and traceback."""
    try:
        blob: bytes | None = dumps(exc)
    except Exception:
        blob = None
    kind = type(exc)
    return pickle.dumps(
        {
            "remote": remote,
            "type": f"{kind.__module__}.{kind.__qualname__}",
            "message": str(exc),
            "traceback": "".join(traceback.format_exception(exc)),
            "exc": blob,
        },
        5,
    )


def raise_error(payload: bytes, machine: str) -> NoReturn:
    """Raises the exception an error payload describes, with a ``RemoteError`` as its cause."""
    try:
        info = loads(payload)
    except Exception as exc:
        raise ProtocolError(f"{machine}: malformed error reply: {exc!r}") from exc
    original: BaseException | None = None
    if info["exc"] is not None:
        try:
            original = loads(info["exc"])
        except Exception:
            original = None
    if not info["remote"] and isinstance(original, Error):
        raise original  # the library's own error, e.g. NotFound: no remote frames worth showing
    remote = RemoteError(
        info["message"], machine=machine, remote_traceback=info["traceback"], exc_type=info["type"]
    )
    if isinstance(original, BaseException):
        raise original from remote
    raise remote


_WHOLE = (bytes, bytearray, memoryview, str, list, tuple, dict, set, frozenset)
_SCALARS = frozenset({int, float, bool, complex, type(None)})  # exact types: a subclass may be an iterator too


def is_stream(value: Any) -> bool:
    """Whether a result (or argument) goes as a stream of frames: an iterator or async iterator, not a
    collection. A binary file argument is streamed too (``calls``)."""
    if type(value) in _SCALARS or isinstance(value, _WHOLE):  # the common results, told without the ABCs' checks
        return False
    return isinstance(value, (collections.abc.Iterator, collections.abc.AsyncIterator))


def frame(kind: bytes, payload: bytes = b"") -> bytes:
    """One frame of a streamed body."""
    return _FRAME.pack(kind, len(payload)) + payload


def frame_header(kind: bytes, length: int) -> bytes:
    """The header of a frame whose payload of ``length`` bytes follows it (``FRAME_HEADER`` bytes)."""
    return _FRAME.pack(kind, length)


class FrameReader:
    """Splits a byte stream into frames; ``feed`` returns the frames completed so far.

    A frame that arrives whole in one piece is copied out of it once; a longer one is copied
    piece by piece straight into its final ``bytes`` object (``buffers.fresh_bytes``), never
    gathered first.
    """

    __slots__ = ("_header", "_kind", "_value", "_rest")

    def __init__(self) -> None:
        self._header = bytearray()  # the bytes of a frame header seen so far
        self._kind = b""
        self._value = b""  # the payload being filled ...
        self._rest: memoryview | None = None  # ... and the part of it still to fill

    def feed(self, data: bytes | memoryview) -> list[tuple[bytes, bytes]]:
        frames: list[tuple[bytes, bytes]] = []
        data = memoryview(data)
        while data:
            rest = self._rest
            if rest is not None:  # inside a payload
                n = min(len(rest), len(data))
                rest[:n] = data[:n]
                data = data[n:]
                done = self.filled(n)
                if done is None:
                    break
                frames.append(done)
                continue
            header = self._header
            if header or len(data) < FRAME_HEADER:
                taken = FRAME_HEADER - len(header)
                header += data[:taken]
                data = data[taken:]
                if len(header) < FRAME_HEADER:
                    break
                kind, length = _FRAME.unpack(header)
                header.clear()
            else:
                kind, length = _FRAME.unpack_from(data)
                data = data[FRAME_HEADER:]
            if kind not in (DATA, END, FAIL, HEAD):
                raise ProtocolError(f"unknown frame kind {kind!r}")
            if length <= len(data):
                frames.append((kind, bytes(data[:length])))
                data = data[length:]
            elif length > MAX_REQUEST:
                raise ProtocolError(f"a {length}-byte frame, over the {_mib(MAX_REQUEST)} any sender makes")
            else:
                self._kind = kind
                self._value, self._rest = buffers.fresh_bytes(length)
        return frames

    def payload_rest(self) -> memoryview | None:
        """The part of a frame's payload still to arrive, which a read may fill directly; None between payloads."""
        return self._rest

    def filled(self, n: int) -> tuple[bytes, bytes] | None:
        """Notes ``n`` bytes written at the front of ``payload_rest()``; the frame, once its payload is whole."""
        rest = self._rest
        assert rest is not None
        if n < len(rest):
            self._rest = rest[n:]
            return None
        frame = (self._kind, self._value)
        self._rest, self._value = None, b""
        return frame
