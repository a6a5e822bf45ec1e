"""Reading and writing a TLS connection past ssl.py's wrappers: the same bytes, ends and errors as through them."""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
import threading
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
