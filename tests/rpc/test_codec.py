"""The sans-I/O codec and the wire format, without sockets."""

from __future__ import annotations

import pickle

import pytest

from bigmachine.errors import NotFound, ProtocolError, RemoteError, SerializationError
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


def test_frames_survive_any_split() -> None:
    data = wire.frame(wire.DATA, b"x" * 1000) + wire.frame(wire.DATA, b"") + wire.frame(wire.END)
    for step in (1, 3, 9, 1000, len(data)):
        reader = wire.FrameReader()
        frames = []
        for i in range(0, len(data), step):
            frames.extend(reader.feed(data[i:i + step]))
        assert frames == [(wire.DATA, b"x" * 1000), (wire.DATA, b""), (wire.END, b"")]
    with pytest.raises(ProtocolError):
        wire.FrameReader().feed(b"q" + bytes(8))


def test_remote_error_round_trip() -> None:
    try:
        raise KeyError("missing")
    except KeyError as exc:
        payload = wire.encode_error(exc, remote=True)
    with pytest.raises(KeyError) as info:
        wire.raise_error(payload, "https://m:1/")
    cause = info.value.__cause__
    assert isinstance(cause, RemoteError) and cause.machine == "https://m:1/" and "test_remote_error_round_trip" in cause.remote_traceback


def test_library_errors_are_raised_as_themselves() -> None:
    with pytest.raises(NotFound, match="nope"):
        wire.raise_error(wire.encode_error(NotFound("nope"), remote=False), "m")


def test_unpicklable_exception_becomes_remote_error() -> None:
    class Local(Exception):
        def __reduce__(self) -> object:
            raise TypeError("no")

    with pytest.raises(RemoteError, match="Local"):
        wire.raise_error(wire.encode_error(Local("x"), remote=True), "m")


def test_encode_args_names_the_bad_argument() -> None:
    import threading

    with pytest.raises(SerializationError, match=r"S.m: argument 'k' of type lock"):
        wire.encode_args("S.m", (1,), {"k": threading.Lock()})


def test_plain_values_use_the_c_pickler_and_others_cloudpickle() -> None:
    assert pickle.loads(wire.dumps((1, "a", [2.0, None]))) == (1, "a", [2.0, None])
    double = pickle.loads(wire.dumps(lambda x: 2 * x))
    assert double(4) == 8
