"""Streamed bodies decoded past the HTTP parser: each large frame payload is read straight into its final ``bytes``.

httptools hands chunk data over as a new ``bytes`` per piece it parses (at most a TLS record,
16 KiB), which ``wire.FrameReader`` then copies into its frame: two copies and a Python callback
per record. Once a streamed message's head is parsed, its owner takes the body over
(``codec.TakeOver``): ``ChunkedBody`` decodes the chunked transfer coding itself and, inside a
frame's payload, names the memory the next reads should land in (``target``), so the bytes are
copied once, out of the TLS layer, by a loop that does little else per record
(``MessageReader.read_direct``; benchmarks/RESULTS.md, the addendum).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Generic, Protocol, Self, TypeVar

from ..errors import ProtocolError
from . import codec, wire

if TYPE_CHECKING:
    from .tls_io import RecvInto

__all__ = ["ChunkedBody", "MessageReader", "head_end"]

#: Parts of a payload at least this big are read into it directly: a TLS record's worth.
DIRECT_PART = 1 << 14
_MAX_LINE = 1024  # a chunk-size or trailer line; a longer one is not a body we sent
_HEX = re.compile(rb"[0-9A-Fa-f]{1,15}")
_SIZE, _DATA, _DATA_END, _TRAILER, _DONE = range(5)
_TERMINATOR = b"\r\n\r\n"


def _head_end_from(before: bytes, piece: bytes, at: int) -> int:
    """Where in ``piece`` the head that starts at ``at`` (or before the piece, ending in ``before``) ends,
    just past its empty line; -1 if it goes on past the piece."""
    if before:
        across = (before + piece[at:at + 3]).find(_TERMINATOR)
        if across >= 0:
            return at + across + len(_TERMINATOR) - len(before)
    end = piece.find(_TERMINATOR, at)
    return -1 if end < 0 else end + len(_TERMINATOR)


def head_end(before: bytes, piece: bytes | memoryview) -> int:
    """Where in ``piece`` a message's head ends (just past its empty line), given the last bytes fed
    before it in the same message (``before``, up to 3, empty when the message began in ``piece``)."""
    end = _head_end_from(before, bytes(piece), 0)
    if end < 0:
        raise ProtocolError("a message head ended where no empty line is: the connection is out of step")
    return end


class ChunkedBody:
    """A chunked body's frames, as the bytes after its head are fed (``feed``) or read into ``target()``
    (then ``filled``). ``received`` counts its data bytes, ``done`` says the body ended, and ``rest``
    holds what was fed past its end (the next message's, on a pipelined connection)."""

    __slots__ = ("_frames", "_state", "_left", "_line", "received", "rest")

    def __init__(self) -> None:
        self._frames = wire.FrameReader()
        self._state = _SIZE
        self._left = 0  # bytes of the current chunk's data still to come
        self._line = bytearray()  # a chunk-size, chunk-end or trailer line so far
        self.received = 0
        self.rest = b""

    @property
    def done(self) -> bool:
        return self._state == _DONE

    def feed(self, data: bytes | memoryview) -> list[tuple[bytes, bytes]]:
        """Decodes bytes of the body; returns the frames they completed."""
        frames: list[tuple[bytes, bytes]] = []
        data = memoryview(data)
        while data:
            state = self._state
            if state == _DATA:
                n = min(self._left, len(data))
                frames += self._frames.feed(data[:n])
                self._took(n)
                data = data[n:]
                continue
            if state == _DONE:
                self.rest = bytes(data)
                break
            piece = bytes(data[:_MAX_LINE + 1 - len(self._line)])
            end = piece.find(b"\n")
            if end < 0:
                self._line += piece
                if len(self._line) > _MAX_LINE:
                    raise ProtocolError(f"a chunked body's line runs over {_MAX_LINE} bytes")
                break
            self._line += piece[:end + 1]
            data = data[end + 1:]
            line, self._line = bytes(self._line), bytearray()
            self._take_line(line)
        return frames

    def target(self) -> memoryview | None:
        """The memory the next read should land in: the rest of the frame payload being received, as far
        as the current chunk goes; None unless that is a large part of a payload (``DIRECT_PART``)."""
        if self._state != _DATA:
            return None
        rest = self._frames.payload_rest()
        if rest is None or min(len(rest), self._left) < DIRECT_PART:
            return None
        return rest[:self._left]

    def filled(self, n: int) -> list[tuple[bytes, bytes]]:
        """Notes ``n`` bytes read into ``target()``; returns the frame they completed, if any."""
        self._took(n)
        frame = self._frames.filled(n)
        return [] if frame is None else [frame]

    def _took(self, n: int) -> None:
        self._left -= n
        self.received += n
        if not self._left:
            self._state = _DATA_END

    def _take_line(self, line: bytes) -> None:
        if not line.endswith(b"\r\n"):
            raise ProtocolError(f"a chunked body's line does not end in CRLF: {line[:40]!r}")
        state = self._state
        if state == _SIZE:
            size = line[:-2].split(b";", 1)[0].strip(b" \t")  # chunk extensions are ignored
            if not _HEX.fullmatch(size):
                raise ProtocolError(f"a chunk size that is not hexadecimal: {line[:40]!r}")
            self._left = int(size, 16)
            self._state = _DATA if self._left else _TRAILER
        elif state == _DATA_END:
            if line != b"\r\n":
                raise ProtocolError("a chunk runs past its announced size")
            self._state = _SIZE
        elif line == b"\r\n":  # the empty line after the last chunk (and any trailer fields)
            self._state = _DONE


class _Parser(Protocol):
    in_head: bool

    def feed(self, data: bytes | memoryview) -> None: ...
    def renew(self) -> Self: ...
    def body_due(self) -> int: ...


P = TypeVar("P", bound=_Parser)


class MessageReader(Generic[P]):
    """Feeds a connection's reads to its parser (``parser``: heads, whole bodies) and, once a head asks for it
    (``codec.TakeOver``), decodes the streamed body past it (``body``), from the head's end on.

    A ``pipelined`` reader's reads may hold several messages, a streamed one among them: it feeds the
    parser one message at a time, each head up to its end and each whole body up to its length, so it
    knows where a streamed body begins. Bytes past the end of a streamed body belong to the next message:
    it leaves them in ``body.rest`` for its owner to feed once it has finished with the body. Any other
    reader refuses them.
    """

    __slots__ = ("parser", "body", "_before", "_pipelined", "_due")

    def __init__(self, parser: P, *, pipelined: bool = False) -> None:
        self.parser = parser
        self.body: ChunkedBody | None = None
        self._before = b""  # the last bytes of a head that has not ended yet
        self._pipelined = pipelined
        self._due = 0  # pipelined: bytes of a whole body still to come (0: a head is next; -1: not known)

    def start(self) -> None:
        """A new message is next."""
        self.body, self._before, self._due = None, b"", 0

    def read_direct(self, recv_into: RecvInto) -> list[tuple[bytes, bytes]] | None:
        """When a large part of a frame's payload is next (``ChunkedBody.target``), reads it with ``recv_into``
        straight into place, a TLS record per read and little else, and returns the frames it completed;
        None: the next read goes into the connection's own buffer, for ``feed``."""
        body = self.body
        view = None if body is None else body.target()
        if view is None:
            return None
        assert body is not None
        size = len(view)
        while view:
            n = recv_into(view)
            if not n:
                raise ConnectionResetError(f"the peer closed the connection {size - len(view)} bytes into a "
                                           f"{size}-byte part of a frame")
            view = view[n:]
        return body.filled(size)

    def feed(self, piece: bytes | memoryview) -> list[tuple[bytes, bytes]] | None:
        """Takes what was read into the connection's buffer: the frames it completed in a streamed body,
        or None if it went to the parser."""
        if self._pipelined:
            return self._feed_framed(piece if isinstance(piece, bytes) else bytes(piece))
        body = self.body
        if body is not None:
            return self._past_end(body, body.feed(piece))
        parser = self.parser
        try:
            parser.feed(piece)
        except codec.TakeOver:
            self.renew_parser()
            body = self.body = ChunkedBody()
            return self._past_end(body, body.feed(memoryview(piece)[head_end(self._before, piece):]))
        if parser.in_head:
            self._before = (self._before + bytes(piece[-3:]))[-3:]
        return None

    def _feed_framed(self, piece: bytes) -> list[tuple[bytes, bytes]] | None:
        """``feed`` for a pipelined reader: the parser gets each message's bytes apart."""
        view, at, size = memoryview(piece), 0, len(piece)
        while at < size:
            body = self.body
            if body is not None:
                return body.feed(view[at:])
            if self._due < 0:  # a whole body of no told length: the parser alone knows where it ends
                self.parser.feed(view[at:])
                return None
            if self._due:
                n = min(self._due, size - at)
                self.parser.feed(view[at:at + n])
                self._due -= n
                at += n
                continue
            end = _head_end_from(self._before, piece, at)
            if end < 0:
                self.parser.feed(view[at:])
                self._before = (self._before + piece[max(at, size - 3):])[-3:]
                return None
            self._before = b""
            try:
                self.parser.feed(view[at:end])
            except codec.TakeOver:
                self.renew_parser()
                self.body = ChunkedBody()
            else:
                self._due = self.parser.body_due()
            at = end
        return None

    def _past_end(self, body: ChunkedBody, frames: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        if body.rest and not self._pipelined:
            raise ProtocolError("bytes arrived after the end of a chunked body: the connection is out of step")
        return frames

    def renew_parser(self) -> None:
        """A new parser for the next message, the old one having seen only this one's head."""
        self.parser = self.parser.renew()
