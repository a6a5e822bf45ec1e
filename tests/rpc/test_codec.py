"""The sans-I/O HTTP/1.1 codec, and large bodies read past it (the wire format: test_wire.py)."""

from __future__ import annotations

import socket
import threading
from fractions import Fraction

import pytest

from bigmachine.errors import ProtocolError
from bigmachine.rpc import buffers, wire
from bigmachine.rpc.codec import DirectBody, Response, ResponseParser, encode_chunk, encode_request, require_chunked


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


def test_a_streamed_body_must_be_chunked() -> None:
    listener = Collect()
    parser = ResponseParser(listener)
    for stream in (b"HTTP/1.1 200 OK\r\nContent-Type: a/b\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                   b"HTTP/1.1 200 OK\r\nContent-Type: a/b\r\nContent-Length: 2\r\n\r\nok"):
        parser.expect()
        parser.feed(stream)
    chunked, whole = listener.heads
    require_chunked(chunked, "a streamed reply")
    with pytest.raises(ProtocolError, match="^a streamed reply without a chunked body$"):
        require_chunked(whole, "a streamed reply")


def test_parser_rejects_garbage() -> None:
    with pytest.raises(ProtocolError):
        ResponseParser(Collect()).feed(b"NOT HTTP AT ALL\r\n\r\n")


# ------------------------------------------------------------------ bodies read past the parser

def _receive(body: bytes, through_parser: int) -> DirectBody:
    """``body`` into a DirectBody: its first bytes as the parser would pass them on, the rest from a socket."""
    direct = DirectBody(len(body))
    direct.add(body[:through_parser])
    left, right = socket.socketpair()
    with left, right:
        sender = threading.Thread(target=left.sendall, args=(body[through_parser:],))
        sender.start()
        assert direct.read_rest(right.recv_into) == len(body) - through_parser
        sender.join()
    return direct


@pytest.mark.parametrize("through_parser", [0, 1, 3, 21, 100, 70_000])  # in the layout, the pickle, the buffers
def test_a_body_with_out_of_band_buffers_is_received_into_their_own_bytes(through_parser: int) -> None:
    value = {"a": b"a" * 300_000, "b": [b"b" * 70_000, 7]}
    direct = _receive(b"".join(wire.dump_parts(value)), through_parser)
    received = direct.body
    assert isinstance(received, buffers.Split) and all(type(b) is bytes for b in received.buffers)
    assert [len(b) for b in received.buffers] == [300_000, 70_000]
    back = wire.loads([received])
    assert back == value and back["a"] is received.buffers[0]  # no copy after the read


def test_a_body_that_is_one_pickle_is_received_into_one_buffer() -> None:
    value = {"f": Fraction(1, 3), "blob": b"x" * 200_000}  # not plain data: one pickle
    direct = _receive(wire.dumps(value), 10)
    assert type(direct.body) is bytes and wire.loads(direct.body) == value


@pytest.mark.parametrize("body", [
    buffers.prefix(10, [100]) + b"x" * 50,  # parts longer than the body
    buffers.prefix(10, [5]) + b"x" * 50,  # shorter
    buffers.prefix(10, [5])[:4],  # too short for its layout
], ids=["long-parts", "short-parts", "short-layout"])
def test_a_body_whose_layout_does_not_fit_it_is_a_protocol_error(body: bytes) -> None:
    with pytest.raises(ProtocolError, match="body"):
        DirectBody(len(body)).add(body)


def test_a_peer_that_closes_mid_body_is_a_reset() -> None:
    body = b"".join(wire.dump_parts((b"q" * 100_000,)))
    direct = DirectBody(len(body))
    left, right = socket.socketpair()
    with right:
        with left:
            left.sendall(body[:1000])
        with pytest.raises(ConnectionResetError, match=f"1000 bytes into a {len(body)}-byte body"):
            direct.read_rest(right.recv_into)
