"""rpc/server.py and rpc/serving.py: a thread per connection, service slots, hang-ups, refusals, stop and abort."""

from __future__ import annotations

import concurrent.futures
import gc
import socket
import ssl
import struct
import threading
import time
import warnings
from typing import Any

import pytest
from served import Served
from test_chunked import chunked_body, stream_of
from waiting import wait_for

from bigmachine.rpc import calls, codec, wire
from bigmachine.rpc.deadlines import deadline_after
from bigmachine.rpc.serving import ServerConnection

pytestmark = pytest.mark.timeout(60)


class _Collected:
    def __init__(self) -> None:
        self.responses: list[codec.Response] = []

    def response_head(self, response: codec.Response) -> None:
        self.responses.append(response)

    def response_body(self, data: bytes) -> None:
        self.responses[-1].chunks.append(data)

    def response_complete(self) -> None:
        pass


def exchange(sock: ssl.SSLSocket, data: bytes, expected: int = 1) -> tuple[list[codec.Response], bool]:
    """Sends ``data``; reads until ``expected`` responses are in or the server closes; returns them and
    whether the connection was closed."""
    collected = _Collected()
    parser = codec.ResponseParser(collected)
    sock.sendall(data)
    for _ in range(expected):
        parser.expect()
    while True:
        try:
            chunk = sock.recv(65536)
        except (ConnectionError, ssl.SSLError):
            return collected.responses, True
        if not chunk:
            return collected.responses, True
        parser.feed(chunk)
        if len(collected.responses) >= expected and _complete(collected):
            return collected.responses, False


def _complete(collected: _Collected) -> bool:
    last = collected.responses[-1]
    return last.content_length < 0 or sum(map(len, last.chunks)) >= last.content_length


def call_bytes(method: str, *args: Any) -> bytes:
    data = calls.encode_call(b"127.0.0.1", method, args, {}).data
    return data if isinstance(data, bytes) else b"".join(data)


def test_a_call_is_answered_and_the_connection_kept(served: Served) -> None:
    with served.raw() as sock:
        for value in (1, "two", [3]):
            (response,), closed = exchange(sock, call_bytes("Gate.echo", value))
            assert response.status == 200 and response.content_type == wire.RESULT and not closed
            assert wire.loads(response.body) == value
    wait_for(lambda: served.server.registry.stats.snapshot()["Gate.echo"]["calls"] == 3)  # counted after the reply


@pytest.mark.parametrize("request_line, status", [(b"GET /rpc/Gate.echo", 405), (b"POST /elsewhere", 404)])
def test_what_is_not_a_call_gets_a_plain_reason_and_the_connection_stays(served: Served, request_line: bytes,
                                                                          status: int) -> None:
    with served.raw() as sock:
        (response,), closed = exchange(sock, request_line + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        assert response.status == status and response.content_type.startswith(b"text/plain") and not closed
        (response,), closed = exchange(sock, call_bytes("Gate.echo", 7))
        assert wire.loads(response.body) == 7


def test_pipelined_calls_are_answered_in_order_and_the_connection_kept(served: Served) -> None:
    values = [1, "two", [3], None, b"five"]
    with served.raw() as sock:
        responses, closed = exchange(sock, b"".join(call_bytes("Gate.echo", v) for v in values), expected=len(values))
        assert not closed and [wire.loads(r.body) for r in responses] == values
        (response,), closed = exchange(sock, call_bytes("Gate.echo", 6))
        assert wire.loads(response.body) == 6 and not closed


def test_a_pipelined_call_waits_for_the_one_ahead_of_it(served: Served) -> None:
    with served.raw() as sock:
        sock.sendall(call_bytes("Gate.wait", "first") + call_bytes("Gate.echo", "second"))
        wait_for(lambda: served.gate.started == 1)
        time.sleep(0.1)
        assert served.server.registry.stats.snapshot().get("Gate.echo", {}).get("calls", 0) == 0
        served.gate.open()
        responses, closed = exchange(sock, b"", expected=2)
        assert [wire.loads(r.body) for r in responses] == ["first", "second"] and not closed


@pytest.mark.parametrize("second", ["streamed", "too many", "too big"])
def test_what_may_not_be_pipelined_closes_the_connection_after_the_call_ahead(served: Served, second: str) -> None:
    first = call_bytes("Gate.echo", 1)
    if second == "streamed":
        behind = calls.encode_call(b"127.0.0.1", "Gate.echo", (iter([b"x"]),), {}).data
        assert isinstance(behind, bytes)
    elif second == "too many":
        behind = call_bytes("Gate.echo", 2) * wire.PIPELINED_CALLS
    else:
        behind = call_bytes("Gate.echo", b"x" * wire.PIPELINED_MAX)
    with served.raw() as sock:
        responses, closed = exchange(sock, first + behind, expected=2)
        assert closed and [wire.loads(r.body) for r in responses][:1] in ([], [1])
    wait_for(lambda: served.server.connections() == 0)


def test_a_reply_says_whether_its_call_held_the_connection_long(served: Served) -> None:
    with served.raw() as sock:
        (response,), _ = exchange(sock, call_bytes("Gate.echo", 1))
        assert not response.slow
        threading.Timer(0.05, served.gate.open).start()
        (response,), _ = exchange(sock, call_bytes("Gate.wait", 2))
        assert response.slow and wire.loads(response.body) == 2


def test_an_error_before_a_streamed_argument_is_read_says_connection_close(served: Served) -> None:
    head = calls.encode_call(b"127.0.0.1", "Gate.nope", (iter([b"x"]),), {}).data
    with served.raw() as sock:
        (response,), closed = exchange(sock, head + codec.encode_chunk(wire.frame(wire.DATA, b"x" * 100)))  # type: ignore[operator]
        assert response.status == 404 and not response.keep_alive
        assert "no public method 'nope'" in wire.loads(response.body)["message"]


def test_calls_past_the_slots_wait_their_turn_and_a_caller_that_hangs_up_leaves_the_queue(served: Served) -> None:
    pool = served.pool()
    try:
        with concurrent.futures.ThreadPoolExecutor(2) as threads:
            first = threads.submit(lambda: pool.call(calls.encode_call(b"h", "Gate.wait", ("first",), {}),
                                                     deadline_after(20)))
            wait_for(lambda: served.gate.started == 1)
            with served.raw() as sock:  # queued behind "first" (one slot), then hangs up
                sock.sendall(call_bytes("Gate.wait", "queued"))
                wait_for(lambda: served.server.slots.load()["queued"] == 1)
            wait_for(lambda: served.server.slots.load()["queued"] == 0)
            stats = served.server.registry.stats.snapshot()
            assert stats["Gate.wait"]["cancelled"] == 1
            served.gate.open()
            response, _ = first.result(20)
            assert wire.loads(response.body) == "first"
        assert served.gate.started == 1  # the abandoned call never ran
    finally:
        pool.close(ConnectionAbortedError("test over"))


def test_a_caller_reset_before_the_handshake_is_let_go_without_a_leaked_socket(served: Served) -> None:
    """CPython's wrap_socket raises ConnectionResetError for a connection reset before the handshake and
    leaks the SSLSocket it half made: its ResourceWarning failed a test in CI (a Testing machine killed)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        caller = socket.create_connection(listener.getsockname())
        caller.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        caller.close()  # a reset, as a killed driver's kernel sends
        raw, _ = listener.accept()
    wait_for(lambda: _reset(raw), 5, "the reset to arrive")
    connection = ServerConnection(served.server, raw)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        connection.run()
        del connection
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)], [str(w.message) for w in caught]
    assert raw.fileno() == -1  # closed, not left to the collector


def _reset(sock: socket.socket) -> bool:
    try:
        sock.getpeername()
        return False
    except OSError:
        return True


def test_a_caller_that_hangs_up_mid_call_is_counted_cancelled_at_once(served: Served) -> None:
    with served.raw() as sock:
        sock.sendall(call_bytes("Gate.wait", "dropped"))
        wait_for(lambda: served.gate.started == 1)
    wait_for(lambda: served.server.registry.stats.snapshot().get("Gate.wait", {}).get("cancelled") == 1)
    assert served.gate.finished == 0  # counted while the method still runs
    served.gate.open()
    wait_for(lambda: served.gate.finished == 1)
    assert served.server.registry.stats.snapshot()["Gate.wait"]["calls"] == 1


def test_a_streamed_reply_goes_in_frames_and_ends(served: Served) -> None:
    pool = served.pool()
    try:
        deadline = deadline_after(10)
        response, conn = pool.call(calls.encode_call(b"h", "Gate.chunks", (5,), {}), deadline)
        assert response.content_type == wire.STREAM and conn is not None
        frames = list(pool.reply_frames(conn, deadline))
        assert frames == [(wire.DATA, b"%d;" % i) for i in range(5)] + [(wire.END, b"")]
        response, conn = pool.call(calls.encode_call(b"h", "Gate.echo", (1,), {}), deadline)
        assert conn is None and wire.loads(response.body) == 1  # the same connection, in step
        assert pool.open == 1
    finally:
        pool.close(ConnectionAbortedError("test over"))


def test_stop_closes_idle_connections_and_abort_cuts_busy_ones(served: Served) -> None:
    with served.raw() as idle, served.raw() as busy:
        exchange(idle, call_bytes("Gate.echo", 1))
        busy.sendall(call_bytes("Gate.wait", "cut"))
        wait_for(lambda: served.gate.started == 1)
        served.on_loop(served.server.stop)
        assert idle.recv(10) == b""  # closed by the server
        assert served.server.busy() == 1
        served.on_loop(served.server.abort)
        begun = time.monotonic()
        try:
            assert busy.recv(10) == b""
        except (ConnectionError, ssl.SSLError):
            pass
        assert time.monotonic() - begun < 5


@pytest.mark.parametrize("cut", [0, 1, 2, 3, 30])
def test_a_streamed_argument_arrives_whole_however_its_head_and_chunks_are_cut(served: Served, cut: int) -> None:
    """The head ends ``cut`` bytes into a second write (inside its empty line for 1-3, with the first for
    0); the chunks cut across frames; a large payload is read past the parser into place."""
    data = calls.encode_call(b"127.0.0.1", "Gate.joined", (iter([b"x"]),), {}).data
    assert isinstance(data, bytes)
    head, _, first_chunk = data.partition(b"\r\n\r\n")
    size, _, rest = first_chunk.partition(b"\r\n")
    head_frame = rest[:int(size, 16)]
    blob = bytes(range(256)) * 2048  # 512 KiB
    stream = head_frame + stream_of([(wire.DATA, b"small"), (wire.DATA, blob), (wire.END, b"")])
    message = head + b"\r\n\r\n" + chunked_body(stream, [len(head_frame) + 3, 50_000])
    at = len(head) + 4 - cut
    with served.raw() as sock:
        sock.sendall(message[:at])
        time.sleep(0.05)  # a read of its own
        for start in range(at, len(message), 100_000):
            sock.sendall(message[start:start + 100_000])
        (response,), closed = exchange(sock, b"")
        assert response.status == 200 and not closed
        assert wire.loads(response.body) == b"small" + blob
        (response,), closed = exchange(sock, call_bytes("Gate.echo", "next"))
        assert wire.loads(response.body) == "next"  # in step


def test_a_streamed_argument_without_a_chunked_body_is_refused(served: Served) -> None:
    data = calls.encode_call(b"127.0.0.1", "Gate.joined", (iter([b"x"]),), {}).data
    assert isinstance(data, bytes)
    body = data.partition(b"\r\n\r\n")[2]
    head = data.partition(b"\r\n\r\n")[0].replace(b"Transfer-Encoding: chunked", b"Content-Length: %d" % len(body))
    with served.raw() as sock:
        responses, closed = exchange(sock, head + b"\r\n\r\n" + body)
        assert closed and not responses


def test_a_caller_that_hangs_up_in_the_middle_of_a_large_frame_is_counted_cancelled(served: Served) -> None:
    _hang_up_in_a_frame(served, "Gate.joined")


@pytest.mark.parametrize("method", ["Gate.joined", "Gate.ajoined"])
def test_a_hang_up_the_method_meets_in_its_streamed_argument_is_counted_cancelled(
        served: Served, monkeypatch: pytest.MonkeyPatch, method: str) -> None:
    # The hang-up watch is off: the method reading its argument is the only one to see the caller go.
    monkeypatch.setattr(served.server.hangups, "watch", lambda fd, on_hangup: True)
    _hang_up_in_a_frame(served, method)
    assert served.server.registry.stats.snapshot()[method]["errors"] == 0


def _hang_up_in_a_frame(served: Served, method: str) -> None:
    """Calls ``method`` with a streamed argument and hangs up 200,000 bytes into its 1 MiB frame; the call
    is then counted cancelled and its connection closed."""
    data = calls.encode_call(b"127.0.0.1", method, (iter([b"x"]),), {}).data
    assert isinstance(data, bytes)
    frame_size = 1 << 20
    with served.raw() as sock:
        sock.sendall(data + b"%x\r\n" % (wire.FRAME_HEADER + frame_size) + wire.frame_header(wire.DATA, frame_size))
        sock.sendall(b"p" * 200_000)  # read straight into the frame, which never fills
        time.sleep(0.2)
    wait_for(lambda: served.server.registry.stats.snapshot().get(method, {}).get("cancelled") == 1)
    wait_for(lambda: served.server.connections() == 0)
