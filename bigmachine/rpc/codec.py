"""A sans-I/O HTTP/1.1 codec, both ways: requests and responses encoded as ``bytes``, parsed by httptools.

Both client transports (the asyncio protocol and the blocking socket) and the machine's
server share it, so a message head and a small body always go in a single write and
parsing is the same C parser on both ends.
"""

from __future__ import annotations

import socket
import ssl
from typing import Protocol

import httptools

from ..errors import ProtocolError

__all__ = ["DIRECT_BODY", "JOIN_LIMIT", "DirectBody", "LAST_CHUNK", "Request", "RequestListener", "RequestParser", "Response", "ResponseListener",
           "ResponseParser", "encode_chunk", "encode_head", "encode_request", "encode_response", "encode_response_head",
           "encode_stream_head"]

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


def encode_response(status: int, content_type: bytes, body: bytes, *, keep_alive: bool = True) -> bytes:
    """A whole response, head and body in one buffer (a big body is better sent apart: ``encode_response_head``)."""
    return encode_response_head(status, content_type, len(body), keep_alive=keep_alive) + body


def encode_response_head(status: int, content_type: bytes, length: int, *, keep_alive: bool = True) -> bytes:
    """A response's head; ``keep_alive=False`` tells the client the connection closes after it."""
    return b"HTTP/1.1 %d %b\r\nContent-Type: %b\r\nContent-Length: %d\r\n%b\r\n" % (
        status, _REASONS.get(status, b"Status"), content_type, length, b"" if keep_alive else b"Connection: close\r\n")


def encode_stream_head(content_type: bytes) -> bytes:
    """The head of a 200 response whose body follows in chunks (``encode_chunk``, then ``LAST_CHUNK``)."""
    return b"HTTP/1.1 200 OK\r\nContent-Type: %b\r\nTransfer-Encoding: chunked\r\n\r\n" % content_type


_REASONS = {200: b"OK", 400: b"Bad Request", 404: b"Not Found", 405: b"Method Not Allowed",
            413: b"Content Too Large", 500: b"Internal Server Error"}


def encode_chunk(data: bytes) -> bytes:
    """One chunk of a chunked body (never empty: an empty chunk ends the body)."""
    return b"%x\r\n%b\r\n" % (len(data), data)


class Response:
    """The head of a response, and its body when it was not streamed."""

    __slots__ = ("status", "content_type", "content_length", "chunks", "keep_alive")

    def __init__(self) -> None:
        self.status = 0
        self.content_type = b""
        self.content_length = -1  # -1: chunked, or not given
        self.chunks: list[bytes] = []
        self.keep_alive = True

    @property
    def body(self) -> bytes:
        return self.chunks[0] if len(self.chunks) == 1 else b"".join(self.chunks)


def _take_header(head: Request | Response, name: bytes, value: bytes) -> None:
    """Keeps the headers the RPC layer reads of a request or response head: its content type and length."""
    name = name.lower()
    if name == b"content-type":
        head.content_type = value
    elif name == b"content-length":
        head.content_length = int(value)


class ResponseListener(Protocol):
    """What a transport implements to receive parsed responses."""

    def response_head(self, response: Response) -> None: ...
    def response_body(self, data: bytes) -> None: ...
    def response_complete(self) -> None: ...


class ResponseParser:
    """Feeds bytes to httptools and reports heads, body pieces and completions to a listener."""

    __slots__ = ("_parser", "_listener", "_outstanding", "response")

    def __init__(self, listener: ResponseListener) -> None:
        self._listener = listener
        self._parser = httptools.HttpResponseParser(self)
        self._outstanding = False
        self.response: Response | None = None

    def expect(self) -> None:
        """Notes that a request was sent: exactly one response may now begin."""
        self._outstanding = True

    def feed(self, data: bytes | memoryview) -> None:
        """Parses ``data``; raises ProtocolError on a malformed response or one nobody asked for.

        A response with no request outstanding (a second response, bytes after a complete
        one) means the connection is out of step: its owner must close it, never reuse it.
        """
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, ProtocolError):
                raise exc.__context__ from None
            raise
        except httptools.HttpParserError as exc:
            raise ProtocolError(f"malformed HTTP response: {exc}") from exc

    # httptools callbacks
    def on_message_begin(self) -> None:
        if not self._outstanding:
            raise ProtocolError("bytes arrived with no request outstanding: the connection is out of step")
        self.response = Response()

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.response is not None
        _take_header(self.response, name, value)

    def on_headers_complete(self) -> None:
        response = self.response
        assert response is not None
        response.status = self._parser.get_status_code()
        response.keep_alive = self._parser.should_keep_alive()
        self._listener.response_head(response)

    def on_body(self, body: bytes) -> None:
        self._listener.response_body(body)

    def on_message_complete(self) -> None:
        self._outstanding = False
        self.response = None  # the listener has it: the parser keeps no reply (its body) alive
        self._listener.response_complete()


class Request:
    """The head of a request; its body goes to the listener as it is parsed."""

    __slots__ = ("method", "path", "content_type", "content_length", "keep_alive")

    def __init__(self) -> None:
        self.method = b""
        self.path = b""
        self.content_type = b""
        self.content_length = -1  # -1: chunked, or not given
        self.keep_alive = True


class RequestListener(Protocol):
    """What a server connection implements to receive parsed requests."""

    def request_head(self, request: Request) -> None: ...
    def request_body(self, data: bytes) -> None: ...
    def request_complete(self) -> None: ...


class RequestParser:
    """Feeds bytes to httptools and reports request heads, body pieces and completions to a listener."""

    __slots__ = ("_parser", "_listener", "request")

    def __init__(self, listener: RequestListener) -> None:
        self._listener = listener
        self._parser = httptools.HttpRequestParser(self)
        self.request: Request | None = None

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
        self._listener.request_head(request)

    def on_body(self, body: bytes) -> None:
        self._listener.request_body(body)

    def on_message_complete(self) -> None:
        self._listener.request_complete()


class DirectBody:
    """A large whole body read straight into one buffer of its announced size, past the parser.

    The parser would hand it over in pieces of a TLS record each, to be copied together again
    before unpickling; here each read lands where the body ends up. The parser saw only the
    head (and whatever body came with it, given to ``add``): its owner replaces it afterwards.
    """

    __slots__ = ("buffer", "_view", "filled")

    def __init__(self, length: int) -> None:
        self.buffer = bytearray(length)
        self._view = memoryview(self.buffer)
        self.filled = 0

    def add(self, data: bytes) -> None:
        """Body bytes the parser passed on (those that came in the same read as the head)."""
        end = self.filled + len(data)
        self._view[self.filled:end] = data
        self.filled = end

    def read_rest(self, sock: ssl.SSLSocket | socket.socket) -> int:
        """Reads the rest of the body from ``sock``; returns how many bytes that took."""
        start, view, size = self.filled, self._view, len(self._view)
        while self.filled < size:
            n = sock.recv_into(view[self.filled:])
            if not n:
                raise ConnectionResetError(f"the peer closed the connection {self.filled} bytes into a {size}-byte body")
            self.filled += n
        return self.filled - start
