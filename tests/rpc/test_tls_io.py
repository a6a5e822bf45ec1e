"""Reading and writing a TLS connection past ssl.py's wrappers: the same bytes, ends and errors as through them."""

from __future__ import annotations

import contextlib
import fcntl
import socket
import ssl
import struct
import termios
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bigmachine.rpc import tls_io

from served import contexts


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[ssl.SSLSocket, ssl.SSLSocket]]:
    with _pair(tmp_path) as connected:
        yield connected


@contextlib.contextmanager
def _pair(tmp_path: Path) -> Iterator[tuple[ssl.SSLSocket, ssl.SSLSocket]]:
    """A connected client and server TLS socket over loopback, handshakes done."""
    tmp_path.mkdir(exist_ok=True)
    server_ctx, client_ctx = contexts(tmp_path)
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[ssl.SSLSocket] = []

    def accept() -> None:
        raw, _ = listener.accept()
        accepted.append(server_ctx.wrap_socket(raw, server_side=True))

    thread = threading.Thread(target=accept)
    thread.start()
    client = client_ctx.wrap_socket(socket.create_connection(listener.getsockname()), server_hostname="127.0.0.1")
    thread.join(10)
    listener.close()
    (server,) = accepted
    try:
        yield client, server
    finally:
        client.close()
        server.close()


def test_what_one_side_writes_the_other_reads_whole(pair: tuple[ssl.SSLSocket, ssl.SSLSocket]) -> None:
    client, server = pair
    payload = bytes(range(256)) * 1024  # 256 KiB: many TLS records, one write
    written = threading.Thread(target=tls_io.connection_of(client).write, args=(payload,))
    written.start()
    tls, buffer, got = tls_io.connection_of(server), bytearray(1 << 16), bytearray()
    while len(got) < len(payload):
        n = tls_io.read_into(tls, buffer)
        assert 0 < n <= 16384  # one record per read
        got += buffer[:n]
    written.join(10)
    assert got == payload


def _through_ssl_py(sock: ssl.SSLSocket, buffer: bytearray) -> int:
    return sock.recv_into(buffer)


def _past_ssl_py(sock: ssl.SSLSocket, buffer: bytearray) -> int:
    return tls_io.read_into(tls_io.connection_of(sock), buffer)


def _goodbye(client: ssl.SSLSocket, server: ssl.SSLSocket) -> None:
    threading.Thread(target=_unwrap, args=(client,), daemon=True).start()  # close_notify; its answer never comes


def _unwrap(sock: ssl.SSLSocket) -> None:
    try:
        sock.unwrap()
    except OSError:
        pass


def _ragged(client: ssl.SSLSocket, server: ssl.SSLSocket) -> None:
    socket.socket.shutdown(client, socket.SHUT_RDWR)  # TCP's FIN, no close_notify


def _reset(client: ssl.SSLSocket, server: ssl.SSLSocket) -> None:
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    socket.socket.close(client)  # RST


def _silence(client: ssl.SSLSocket, server: ssl.SSLSocket) -> None:
    server.settimeout(0.05)


@pytest.mark.parametrize("end, expected", [(_goodbye, 0), (_ragged, 0), (_reset, None), (_silence, TimeoutError)],
                         ids=["goodbye", "ragged", "reset", "silence"])
def test_each_end_reads_as_through_recv_into(tmp_path: Path, end: Any, expected: Any) -> None:
    outcomes = []
    for way, read in (("ssl.py", _through_ssl_py), ("tls_io", _past_ssl_py)):
        with _pair(tmp_path / way) as (client, server):
            end(client, server)
            try:
                outcomes.append(read(server, bytearray(100)))
            except OSError as exc:
                outcomes.append(type(exc))
    assert outcomes[0] == outcomes[1]
    if expected is not None:  # a reset reads as an end or an error, as the kernel and OpenSSL have it
        assert outcomes[0] == expected


def test_a_closed_socket_has_no_connection_to_use(pair: tuple[ssl.SSLSocket, ssl.SSLSocket]) -> None:
    client, _ = pair
    client.close()
    with pytest.raises(ValueError, match="closed"):
        tls_io.connection_of(client)


def _queued(sock: socket.socket) -> int:
    """Bytes waiting in the socket itself, not yet read by OpenSSL."""
    return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0" * 4))[0]


def test_read_ahead_brings_several_records_in_with_one_read(pair: tuple[ssl.SSLSocket, ssl.SSLSocket]) -> None:
    client, server = pair
    unread = tls_io.read_ahead(tls_io.connection_of(server))
    records = [bytes([i]) * 16384 for i in range(3)]  # three whole records, about 48 KiB on the wire
    tls_io.connection_of(client).write(b"".join(records))
    deadline = time.monotonic() + 10
    while _queued(server) < 3 * 16384 and time.monotonic() < deadline:
        time.sleep(0.01)
    tls, buffer = tls_io.connection_of(server), bytearray(1 << 16)
    assert tls_io.read_into(tls, buffer) == 16384  # one record per read, as without read-ahead
    assert _queued(server) == 0  # but all three came out of the socket in that read
    assert not tls.pending() and unread()  # waiting inside OpenSSL, undecrypted: only the check returned sees them
    got = buffer[:16384] + b"".join(buffer[:tls_io.read_into(tls, buffer)] for _ in range(2))
    assert got == b"".join(records) and not unread()


def test_where_the_ssl_cannot_be_reached_reads_stay_as_they_were(pair: tuple[ssl.SSLSocket, ssl.SSLSocket],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    _, server = pair
    tls = tls_io.connection_of(server)
    monkeypatch.setattr(tls_io, "_lib", None)
    assert tls_io.read_ahead(tls) == tls.pending


class _Impostor:
    """Shaped like an ``_ssl._SSLSocket`` to Python, not in memory."""

    __slots__ = ("context", "first", "second")

    def __init__(self, context: ssl.SSLContext) -> None:
        self.context, self.first, self.second = context, None, None


def test_an_object_laid_out_otherwise_is_not_taken_for_an_ssl(pair: tuple[ssl.SSLSocket, ssl.SSLSocket]) -> None:
    _, server = pair
    impostor = _Impostor(server.context)
    assert tls_io._native(tls_io.connection_of(server)) is not None
    assert tls_io._native(impostor) is None
