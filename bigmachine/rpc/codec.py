"""A sans-I/O HTTP/1.1 codec, both ways: requests and responses encoded as ``bytes``, parsed by httptools.

Both client transports (the asyncio protocol and the blocking socket) and the machine's
server share it, so a message head and a small body always go in a single write and
parsing is the same C parser on both ends.
"""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING, Any, Protocol

import httptools

from ..errors import ProtocolError
from . import buffers

if TYPE_CHECKING:
    from .tls_io import RecvInto

__all__ = ["DIRECT_BODY", "JOIN_LIMIT", "DirectBody", "LAST_CHUNK", "Request", "RequestListener", "RequestParser", "Response", "ResponseListener",
           "ResponseParser", "SLOW_CALL", "TakeOver", "encode_chunk", "encode_head", "encode_request", "encode_response",
           "encode_response_head", "encode_stream_head", "require_chunked"]

LAST_CHUNK = b"0\r\n\r\n"
JOIN_LIMIT = 1 << 16  # a body past this goes in its own write after its head: copying it onto the head costs more
DIRECT_BODY = 1 << 20  # a whole body this big is read straight into one buffer of its size (DirectBody)


def encode_head(host: bytes, path: bytes, content_type: bytes, length: int | None) -> bytes:
    """The head of a POST request; ``length=None`` announces a chunked body."""
    framing = b"Transfer-Encoding: chunked\r\n" if length is None else b"Content-Length: %d\r\n" % length
    return b"".join(
        (b"POST ", path, b" HTTP/1.1\r\nHost: ", host, b"\r\nContent-Type: ", content_type, b"\r\n", framing, b"\r\n")
    )


def encode_request(host: bytes, path: bytes, content_type: bytes, body: bytes | None) -> bytes:
    """A POST request, head and body in one buffer (one write); ``body=None`` starts a chunked body."""
    if body is None:
        return encode_head(host, path, content_type, None)
    return encode_head(host, path, content_type, len(body)) + body


def encode_response(status: int, content_type: bytes, body: bytes, *, keep_alive: bool = True, slow: bool = False) -> bytes:
    """A whole response, head and body in one buffer (a big body is better sent apart: ``encode_response_head``)."""
    return encode_response_head(status, content_type, len(body), keep_alive=keep_alive, slow=slow) + body


def encode_response_head(status: int, content_type: bytes, length: int, *, keep_alive: bool = True,
                         slow: bool = False) -> bytes:
    """A response's head; ``keep_alive=False`` tells the client the connection closes after it, ``slow`` that
    the call held its connection long enough (``SLOW_CALL``) that no call should queue behind its method's."""
    return b"HTTP/1.1 %d %b\r\nContent-Type: %b\r\nContent-Length: %d\r\n%b%b\r\n" % (
        status, _REASONS.get(status, b"Status"), content_type, length, b"" if keep_alive else b"Connection: close\r\n",
        _SLOW_HEADER if slow else b"")


def encode_stream_head(content_type: bytes) -> bytes:
    """The head of a 200 response whose body follows in chunks (``encode_chunk``, then ``LAST_CHUNK``)."""
    return b"HTTP/1.1 200 OK\r\nContent-Type: %b\r\nTransfer-Encoding: chunked\r\n\r\n" % content_type


#: A call that holds its connection this long (seconds) is slow: its reply says so (``Response.slow``), and
#: the client stops queueing calls behind its method's (``client.AsyncPool``, pipelining).
SLOW_CALL = 0.001
_SLOW_HEADER = b"Bm-Slow: 1\r\n"

_REASONS = {200: b"OK", 400: b"Bad Request", 404: b"Not Found", 405: b"Method Not Allowed",
            413: b"Content Too Large", 500: b"Internal Server Error"}


def encode_chunk(data: bytes) -> bytes:
    """One chunk of a chunked body (never empty: an empty chunk ends the body)."""
    return b"%x\r\n%b\r\n" % (len(data), data)


class TakeOver(Exception):
    """Raised by a listener's head callback to read the body past the parser (``chunked``): the parser
    stops at the head, and its owner replaces it once the body is read."""


def require_chunked(head: Request | Response, what: str) -> None:
    """A streamed body (``what``) must be chunked: any other would leave the connection out of step."""
    if not head.chunked:
        raise ProtocolError(f"{what} without a chunked body")


class Response:
    """The head of a response, and its body when it was not streamed."""

    __slots__ = ("status", "content_type", "content_length", "chunked", "chunks", "keep_alive", "slow")

    def __init__(self) -> None:
        self.status = 0
        self.content_type = b""
        self.content_length = -1  # -1: chunked, or not given
        self.chunked = False
        self.chunks: list[bytes] = []
        self.keep_alive = True
        self.slow = False  # the call held its connection SLOW_CALL or longer

    @property
    def body(self) -> bytes:
        return self.chunks[0] if len(self.chunks) == 1 else b"".join(self.chunks)


def _take_header(head: Request | Response, name: bytes, value: bytes) -> None:
    """Keeps the headers the RPC layer reads of a request or response head: its content type and framing."""
    name = name.lower()
    if name == b"content-type":
        head.content_type = value
    elif name == b"content-length":
        head.content_length = int(value)
    elif name == b"transfer-encoding":
        head.chunked = value.rsplit(b",", 1)[-1].strip().lower() == b"chunked"


class ResponseListener(Protocol):
    """What a transport implements to receive parsed responses."""

    def response_head(self, response: Response) -> None: ...
    def response_body(self, data: bytes) -> None: ...
    def response_complete(self) -> None: ...


class ResponseParser:
    """Feeds bytes to httptools and reports heads, body pieces and completions to a listener."""

    __slots__ = ("_parser", "_listener", "_outstanding", "response", "in_head")

    def __init__(self, listener: ResponseListener) -> None:
        self._listener = listener
        self._parser = httptools.HttpResponseParser(self)
        self._outstanding = 0  # requests sent whose responses have not begun to complete
        self.response: Response | None = None
        self.in_head = False  # a head began and has not ended

    def expect(self) -> None:
        """Notes that a request was sent: one more response may now begin (several, for pipelined requests)."""
        self._outstanding += 1

    def renew(self) -> ResponseParser:
        """A parser for the next response, this one having seen only the current one's head (its body
        was read past it: ``DirectBody``, ``chunked``); the responses still to come are the new one's."""
        self.response = None  # it holds the reply in a cycle (with httptools' parser) that only gc breaks
        fresh = ResponseParser(self._listener)
        fresh._outstanding = max(self._outstanding - 1, 0)
        return fresh

    def body_due(self) -> int:
        """Body bytes still due of the response whose head was fed: its length; 0 once it ended; -1 if not told."""
        return 0 if self.response is None else self.response.content_length

    def feed(self, data: bytes | memoryview) -> None:
        """Parses ``data``; raises ProtocolError on a malformed response or one nobody asked for.

        A response with no request outstanding (one more than were asked for, bytes after the
        last) means the connection is out of step: its owner must close it, never reuse it.
        """
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, (ProtocolError, TakeOver)):
                raise exc.__context__ from None
            raise
        except httptools.HttpParserError as exc:
            raise ProtocolError(f"malformed HTTP response: {exc}") from exc

    # httptools callbacks
    def on_message_begin(self) -> None:
        if not self._outstanding:
            raise ProtocolError("bytes arrived with no request outstanding: the connection is out of step")
        self.response = Response()
        self.in_head = True

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.response is not None
        if name == b"Bm-Slow":  # only our servers send it, spelled so
            self.response.slow = True
        else:
            _take_header(self.response, name, value)

    def on_headers_complete(self) -> None:
        response = self.response
        assert response is not None
        response.status = self._parser.get_status_code()
        response.keep_alive = self._parser.should_keep_alive()
        self.in_head = False
        self._listener.response_head(response)

    def on_body(self, body: bytes) -> None:
        self._listener.response_body(body)

    def on_message_complete(self) -> None:
        self._outstanding -= 1
        self.response = None  # the listener has it: the parser keeps no reply (its body) alive
        self._listener.response_complete()


class Request:
    """The head of a request; its body goes to the listener as it is parsed."""

    __slots__ = ("method", "path", "content_type", "content_length", "chunked", "keep_alive")

    def __init__(self) -> None:
        self.method = b""
        self.path = b""
        self.content_type = b""
        self.content_length = -1  # -1: chunked, or not given
        self.chunked = False
        self.keep_alive = True


class RequestListener(Protocol):
    """What a server connection implements to receive parsed requests."""

    def request_head(self, request: Request) -> None: ...
    def request_body(self, data: bytes) -> None: ...
    def request_complete(self) -> None: ...


class RequestParser:
    """Feeds bytes to httptools and reports request heads, body pieces and completions to a listener."""

    __slots__ = ("_parser", "_listener", "request", "in_head")

    def __init__(self, listener: RequestListener) -> None:
        self._listener = listener
        self._parser = httptools.HttpRequestParser(self)
        self.request: Request | None = None
        self.in_head = False  # a head began and has not ended

    def renew(self) -> RequestParser:
        """A parser for the next request, this one having seen only the current one's head."""
        self.request = None
        return RequestParser(self._listener)

    def body_due(self) -> int:
        """As ``ResponseParser.body_due``, for the request whose head was fed."""
        return 0 if self.request is None else self.request.content_length

    def feed(self, data: bytes | memoryview) -> None:
        """Parses ``data``; raises ProtocolError on a malformed request, or what a listener raised."""
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            if exc.__context__ is not None:
                raise exc.__context__ from None
            raise
        except httptools.HttpParserUpgrade as exc:
            raise ProtocolError("protocol upgrades are not served") from exc
        except httptools.HttpParserError as exc:
            raise ProtocolError(f"malformed HTTP request: {exc}") from exc

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.request = Request()
        self.in_head = True

    def on_url(self, url: bytes) -> None:
        assert self.request is not None
        self.request.path += url

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.request is not None
        _take_header(self.request, name, value)

    def on_headers_complete(self) -> None:
        request = self.request
        assert request is not None
        request.method = self._parser.get_method()
        request.keep_alive = self._parser.should_keep_alive()
        self.in_head = False
        self._listener.request_head(request)

    def on_body(self, body: bytes) -> None:
        self._listener.request_body(body)

    def on_message_complete(self) -> None:
        self.request = None  # the listener has it
        self._listener.request_complete()


class DirectBody:
    """A large whole body read straight into its final buffers, past the parser.

    The parser would hand it over in pieces of a TLS record each, to be copied together again
    before unpickling; here each read lands where the body ends up: one buffer of its announced
    size, or, for a body with out-of-band buffers, its pickle and each buffer's own ``bytes``
    object (``buffers``). The parser saw only the head (and whatever body came with it, given to
    ``add``): its owner replaces it afterwards.
    """

    __slots__ = ("_size", "_head", "_parts", "_targets", "_filled")

    def __init__(self, length: int) -> None:
        self._size = length
        self._head = bytearray()  # the first bytes, until they tell how the body is laid out
        self._parts: list[Any] = []  # the buffers the body is received into
        self._targets: collections.deque[memoryview] = collections.deque()  # what of them is still to fill, in order
        self._filled = 0  # bytes of the body received

    @property
    def body(self) -> bytes | buffers.Split:
        """The body received: its one buffer, or its pickle and out-of-band buffers."""
        if len(self._parts) == 1:
            return self._parts[0]  # type: ignore[no-any-return]
        return buffers.Split(self._parts[0], self._parts[1:])

    def add(self, data: bytes | memoryview) -> None:
        """Body bytes the parser passed on (those that came in the same read as the head)."""
        self._filled += len(data)
        if self._parts:
            self._fill(data)
        else:
            self._head += data
            self._plan()

    def read_rest(self, recv_into: RecvInto) -> int:
        """Reads the rest of the body with ``recv_into`` (a socket's, or ``tls_io.reader``'s); returns how many
        bytes that took."""
        start = self._filled
        while self._filled < self._size:
            if self._parts:
                n = self._check(recv_into(self._targets[0]))
                self._filled += n
                self._advance(n)
            else:  # the layout is not known yet: read up to the bytes that tell it
                need = buffers.layout(self._head)
                assert isinstance(need, int)
                more = bytearray(need - len(self._head))
                self.add(memoryview(more)[:self._check(recv_into(more))])
        return self._filled - start

    def _check(self, n: int) -> int:
        if not n:
            raise ConnectionResetError(f"the peer closed the connection {self._filled} bytes into a {self._size}-byte body")
        return n

    def _plan(self) -> None:
        """Once the first bytes tell the layout, makes the buffers the body goes into and fills them from the head."""
        parts = buffers.layout(self._head)
        if isinstance(parts, int):
            if parts > self._size:
                raise ProtocolError(f"a {self._size}-byte body is too short for its out-of-band layout")
            return
        prefix_length, lengths = parts
        if not lengths:  # one pickle
            value, view = buffers.fresh_bytes(self._size)
            self._parts, views = [value], [view]
        elif prefix_length + sum(lengths) != self._size:
            raise ProtocolError(f"a {self._size}-byte body announces parts of {lengths} bytes after a "
                                f"{prefix_length}-byte prefix")
        else:
            stream = bytearray(lengths[0])
            self._parts, views = [stream], [memoryview(stream)]
            for length in lengths[1:]:
                value, view = buffers.fresh_bytes(length)
                self._parts.append(value)
                views.append(view)
        self._targets.extend(view for view in views if len(view))
        head, self._head = self._head, bytearray()
        self._fill(memoryview(head)[prefix_length:])

    def _fill(self, data: bytes | memoryview) -> None:
        """Copies body bytes that came through the parser into the targets, in order."""
        data = memoryview(data)
        while data:
            if not self._targets:
                raise ProtocolError(f"a {self._size}-byte body carries more than its parts announce")
            n = min(len(self._targets[0]), len(data))
            self._targets[0][:n] = data[:n]
            data = data[n:]
            self._advance(n)

    def _advance(self, n: int) -> None:
        """Notes ``n`` bytes written at the front of the first target."""
        target = self._targets[0]
        if n == len(target):
            self._targets.popleft()
        else:
            self._targets[0] = target[n:]
