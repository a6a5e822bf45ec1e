"""The sans-I/O HTTP/1.1 codec, without sockets (the wire format: test_wire.py)."""

from __future__ import annotations

import pytest

from bigmachine.errors import ProtocolError
from bigmachine.rpc import wire
from bigmachine.rpc.codec import Response, ResponseParser, encode_chunk, encode_request


class Collect:
    def __init__(self) -> None:
        self.heads: list[Response] = []
        self.body: list[bytes] = []
        self.complete = 0

    def response_head(self, response: Response) -> None:
        self.heads.append(response)

    def response_body(self, data: bytes) -> None:
        self.body.append(data)

    def response_complete(self) -> None:
        self.complete += 1


def test_request_is_one_buffer_with_head_and_body() -> None:
    data = encode_request(b"h:1", b"/rpc/S.m", wire.CALL, b"abc")
    assert data == (b"POST /rpc/S.m HTTP/1.1\r\nHost: h:1\r\nContent-Type: application/x-bigmachine-call\r\n"
                    b"Content-Length: 3\r\n\r\nabc")
    assert b"Transfer-Encoding: chunked" in encode_request(b"h", b"/", wire.CALL_STREAM, None)
    assert encode_chunk(b"hello") == b"5\r\nhello\r\n"


def test_parser_handles_split_responses_one_per_request() -> None:
    listener = Collect()
    parser = ResponseParser(listener)
    first = b"HTTP/1.1 200 OK\r\nContent-Type: a/b\r\nContent-Length: 5\r\n\r\nhello"
    second = b"HTTP/1.1 500 Oops\r\nContent-Type: c/d\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    for stream in (first, second):
        parser.expect()
        for i in range(0, len(stream), 7):
            parser.feed(stream[i:i + 7])
    assert [h.status for h in listener.heads] == [200, 500]
    assert [h.content_type for h in listener.heads] == [b"a/b", b"c/d"]
    assert b"".join(listener.body) == b"helloabc" and listener.complete == 2


@pytest.mark.parametrize("extra", [b"H", b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx", b"garbage"])
def test_parser_refuses_bytes_with_no_request_outstanding(extra: bytes) -> None:
    """Issue 9: a second response, or bytes after a complete one, put the connection out of step."""
    listener = Collect()
    parser = ResponseParser(listener)
    with pytest.raises(ProtocolError, match="no request outstanding"):
        parser.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    parser = ResponseParser(listener)
    parser.expect()
    with pytest.raises(ProtocolError, match="no request outstanding|malformed"):
        parser.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok" + extra)
    assert listener.complete == 1  # the answer that was asked for still arrived whole


def test_parser_rejects_garbage() -> None:
    with pytest.raises(ProtocolError):
        ResponseParser(Collect()).feed(b"NOT HTTP AT ALL\r\n\r\n")
