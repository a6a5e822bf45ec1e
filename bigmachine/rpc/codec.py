"""A sans-I/O HTTP/1.1 codec: requests encoded as one ``bytes``, responses parsed by httptools.

Both client transports (the asyncio protocol and the blocking socket) share it, so a
request is always a single write and parsing is the same C parser uvicorn uses.
"""

from __future__ import annotations

from typing import Protocol

import httptools

from ..errors import ProtocolError

__all__ = ["JOIN_LIMIT", "LAST_CHUNK", "Response", "ResponseListener", "ResponseParser", "encode_chunk", "encode_head", "encode_request"]

LAST_CHUNK = b"0\r\n\r\n"
JOIN_LIMIT = 1 << 16  # a body past this goes in its own write after its head: copying it onto the head costs more


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


def encode_chunk(data: bytes) -> bytes:
    """One chunk of a chunked body (never empty: an empty chunk ends the body)."""
    return b"%x\r\n%b\r\n" % (len(data), data)


class Response:
    """The head of a response, and its body when it was not streamed."""

    __slots__ = ("status", "content_type", "chunks", "keep_alive")

    def __init__(self) -> None:
        self.status = 0
        self.content_type = b""
        self.chunks: list[bytes] = []
        self.keep_alive = True

    @property
    def body(self) -> bytes:
        return self.chunks[0] if len(self.chunks) == 1 else b"".join(self.chunks)


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

    def feed(self, data: bytes) -> None:
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
        if name.lower() == b"content-type":
            assert self.response is not None
            self.response.content_type = value

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
        self._listener.response_complete()
