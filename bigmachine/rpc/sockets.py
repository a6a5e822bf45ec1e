"""RPC's sockets: the options every connection gets at both ends (TCP's or a Unix socket's, as it is), and
a Unix socket's two ends, which a Local machine and its driver use on one host."""

from __future__ import annotations

import socket
from typing import Any

__all__ = ["connect_unix", "listen_unix", "tune"]

UNIX_SEND_BUFFER = 4 << 20  # bytes; the kernel caps it at net.core.wmem_max


def tune(sock: Any) -> None:
    """TCP: no Nagle delay (without it a call stalled ~44 ms on delayed ACKs, measured on loopback with
    mutual TLS). Unix: a send buffer like the one TCP's autotuning reaches, where the 208 KiB default
    kept a large body's sender waiting on its reader (a Unix socket has no autotuning to lose)."""
    if sock is None:
        return
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    elif sock.family == socket.AF_UNIX:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, UNIX_SEND_BUFFER)


def listen_unix(path: str) -> socket.socket:
    """A Unix socket listening at ``path`` (connections made before its server serves wait in the backlog)."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(path)
        listener.listen(1024)
    except BaseException:
        listener.close()
        raise
    return listener


def connect_unix(path: str, timeout: float | None) -> socket.socket:
    """A blocking socket connected to the Unix socket at ``path`` within ``timeout`` seconds."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(path)
    except BaseException:
        sock.close()
        raise
    return sock
