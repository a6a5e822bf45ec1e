"""rpc/chunked.py: streamed bodies decoded past the parser, frame payloads read into place, heads found."""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from bigmachine.errors import ProtocolError
from bigmachine.rpc import chunked, codec, wire
from bigmachine.rpc.chunked import ChunkedBody, MessageReader, head_end

FRAMES = [(wire.DATA, b"ab"), (wire.DATA, bytes(range(256)) * 3), (wire.DATA, b"xyz"), (wire.END, b"")]


def stream_of(frames: Iterable[tuple[bytes, bytes]]) -> bytes:
    return b"".join(wire.frame(kind, payload) for kind, payload in frames)


def chunked_body(data: bytes, sizes: Iterable[int]) -> bytes:
    """``data`` as a chunked body cut into chunks of ``sizes`` (the rest in one more), an extension on the
    first chunk and a trailer field after the last."""
    out, at = [], 0
    for size in sizes:
        size = min(size, len(data) - at)
        out.append(b"%x%s\r\n%s\r\n" % (size, b";name=value" if not at else b"", data[at:at + size]))
        at += size
    if at < len(data):
        out.append(b"%X\r\n%s\r\n" % (len(data) - at, data[at:]))
    return b"".join(out) + b"0\r\nX-Trailer: ignored\r\n\r\n"


def test_every_split_of_a_body_whose_chunks_cut_across_frames_gives_the_frames() -> None:
    body = chunked_body(stream_of(FRAMES), [1, 9, 40, 700])  # frame headers and payloads cut everywhere
    for split in range(len(body) + 1):
        decoder = ChunkedBody()
        frames = decoder.feed(body[:split]) + decoder.feed(body[split:])
        assert frames == FRAMES, split
        assert decoder.done and decoder.received == len(stream_of(FRAMES))


def test_a_body_fed_a_byte_at_a_time_gives_the_frames() -> None:
    body = chunked_body(stream_of(FRAMES), [3, 3, 1000])
    decoder = ChunkedBody()
    frames = [frame for i in range(len(body)) for frame in decoder.feed(body[i:i + 1])]
    assert frames == FRAMES and decoder.done


def test_large_payloads_are_read_straight_into_their_frames() -> None:
    big = bytes(range(256)) * 4096  # 1 MiB
    frames = [(wire.DATA, big), (wire.DATA, b"small"), (wire.DATA, big[::-1]), (wire.END, b"")]
    body = chunked_body(stream_of(frames), [len(big) // 2 + 5, 7])  # a frame across two chunks
    decoder, got, at, parsed = ChunkedBody(), [], 0, 0
    while not decoder.done:
        target = decoder.target()
        n = min(1 << 14, len(body) - at, len(target) if target is not None else len(body))
        if target is not None:
            target[:n] = body[at:at + n]  # what a recv_into the target does
            got += decoder.filled(n)
        else:
            got += decoder.feed(body[at:at + n])
            parsed += n
        at += n
    assert got == frames and at == len(body)
    assert parsed < 6 * chunked.DIRECT_PART  # the payloads' bulk never went through feed (a copy)


def test_no_target_outside_a_large_payload() -> None:
    decoder = ChunkedBody()
    assert decoder.target() is None  # before any chunk
    decoder.feed(b"%x\r\n" % (wire.FRAME_HEADER + 10) + wire.frame_header(wire.DATA, 10))
    assert decoder.target() is None  # a payload too small to read apart
    decoder = ChunkedBody()
    decoder.feed(b"%x\r\n" % (wire.FRAME_HEADER + 5) + wire.frame_header(wire.DATA, 1 << 20))
    assert decoder.target() is None  # the chunk ends before a DIRECT_PART of the payload
    decoder = ChunkedBody()
    decoder.feed(b"%x\r\n" % (wire.FRAME_HEADER + (1 << 20)) + wire.frame_header(wire.DATA, 1 << 20) + b"abc")
    target = decoder.target()
    assert target is not None and len(target) == (1 << 20) - 3


@pytest.mark.parametrize(("body", "problem"), [
    (b"zz\r\n", "not hexadecimal"),
    (b"-1\r\n", "not hexadecimal"),
    (b"0x5\r\n", "not hexadecimal"),
    (b"5\n", "CRLF"),
    (b"2\r\nabcd\r\n", "past its announced size"),
    (b"1" * 2000, "over 1024 bytes"),
])
def test_a_malformed_body_is_a_protocol_error_that_says_what_is_wrong(body: bytes, problem: str) -> None:
    with pytest.raises(ProtocolError, match=problem):
        ChunkedBody().feed(body)


def test_bytes_past_a_bodys_end_are_the_next_messages_on_a_pipelined_connection_only() -> None:
    ending = b"0\r\n\r\nHTTP/1.1 200 OK\r\n"
    body = ChunkedBody()
    assert body.feed(ending) == [] and body.done and body.rest == b"HTTP/1.1 200 OK\r\n"
    for pipelined in (True, False):
        reader = MessageReader(_TakingOver(), pipelined=pipelined)
        head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        if pipelined:
            assert reader.feed(head + ending) == [] and reader.body is not None and reader.body.rest == ending[5:]
        else:
            with pytest.raises(ProtocolError, match="after the end of a chunked body"):
                reader.feed(head + ending)


class _TakingOver:
    """A parser whose every message is streamed: it takes the body over at once."""

    in_head = False

    def feed(self, data: bytes | memoryview) -> None:
        raise codec.TakeOver()

    def renew(self) -> _TakingOver:
        return self


def test_a_frame_kind_nobody_sends_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="unknown frame kind"):
        ChunkedBody().feed(chunked_body(b"?" + bytes(8), []))


def test_a_heads_end_is_found_wherever_the_reads_cut_it() -> None:
    message = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello"
    end = message.index(b"\r\n\r\n") + 4
    for split in range(1, end):  # the head ends in the second read
        first, second = message[:split], message[split:]
        assert split + head_end(first[-3:], second) == end, split
    assert head_end(b"", message) == end  # the message began in the read


def test_a_head_end_nowhere_to_be_seen_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="out of step"):
        head_end(b"", b"HTTP/1.1 200 OK\r\n")


class _Replies:
    """What a pipelined client's connection makes of its reads: whole bodies and streamed frames, in order."""

    def __init__(self) -> None:
        self.parser = codec.ResponseParser(self)
        self.reader = MessageReader(self.parser, pipelined=True)
        self.got: list[tuple[str, bytes]] = []
        self._body: list[bytes] = []

    def response_head(self, response: codec.Response) -> None:
        if response.content_type == wire.STREAM:
            raise codec.TakeOver()

    def response_body(self, data: bytes) -> None:
        self._body.append(data)

    def response_complete(self) -> None:
        self.got.append(("whole", b"".join(self._body)))
        self._body = []

    def read(self, data: bytes) -> None:  # as AsyncConnection.data_received
        frames = self.reader.feed(data)
        if frames is not None:
            body = self.reader.body
            assert body is not None
            self.got += [("frame", payload) for _, payload in frames]
            if body.done:
                self.reader.start()
                self.got.append(("end", b""))
                if body.rest:
                    self.read(body.rest)


def test_a_pipelined_reader_tells_whole_and_streamed_replies_apart_however_the_reads_cut_them() -> None:
    stream = chunked_body(stream_of(FRAMES), [5, 300])
    wire_bytes = (codec.encode_response(200, wire.RESULT, b"first\r\n\r\nbody") + codec.encode_stream_head(wire.STREAM)
                  + stream + codec.encode_response(200, wire.RESULT, b"") + codec.encode_response(200, wire.ERROR, b"last"))
    expected = ([("whole", b"first\r\n\r\nbody")] + [("frame", payload) for _, payload in FRAMES]
                + [("end", b""), ("whole", b""), ("whole", b"last")])
    for cut in range(1, len(wire_bytes), 7):
        for second in (cut + 1, cut + 40, len(wire_bytes)):
            replies = _Replies()
            for _ in range(4):
                replies.parser.expect()
            for piece in (wire_bytes[:cut], wire_bytes[cut:second], wire_bytes[second:]):
                if piece:
                    replies.read(piece)
            assert replies.got == expected, (cut, second)
