"""Reads and writes on a blocking TLS socket's connection itself, past ``ssl.SSLSocket``'s Python wrappers.

``sendall`` and ``recv_into`` cost four Python-level calls each (two closed-socket checks among
them; ``sendall`` adds a memoryview cast): 5-10% of a small call's CPU in the driver, and paid
again for every 16 KiB record of a large body. Both RPC ends use one connection from one
thread, and check for a closed socket their own way, so they talk to the ``_ssl`` object under
the socket (``SSLSocket._sslobj``) directly. Timeouts, blocking and errors are the same:
ssl.py's wrappers call the very same methods.
"""

from __future__ import annotations

import functools
import ssl
from collections.abc import Callable
from typing import Any

__all__ = ["RecvInto", "connection_of", "read_into", "reader"]

RecvInto = Callable[[bytearray | memoryview], int]
"""Reads into a buffer and says how many bytes came, 0 at the end: a socket's ``recv_into``, or ``reader``'s."""


def connection_of(sock: ssl.SSLSocket) -> Any:
    """The TLS connection under ``sock`` (wrapped around a connected socket, so it exists already).

    Its ``write(data)`` sends all of ``data`` or raises: OpenSSL's partial writes are off in
    CPython, which ``SSLSocket.sendall`` relies on too.
    """
    tls = sock._sslobj  # type: ignore[attr-defined]
    if tls is None:
        raise ValueError("the socket has no TLS connection: it is closed, or was never connected")
    return tls


def read_into(tls: Any, buffer: bytearray | memoryview) -> int:
    """Reads what one TLS record brings into ``buffer``; 0 at the end of the connection.

    An end without TLS's goodbye counts as an end, as ``SSLSocket.recv_into`` counts it
    (``suppress_ragged_eofs``, on by default).
    """
    try:
        return tls.read(len(buffer), buffer)  # type: ignore[no-any-return]
    except ssl.SSLEOFError:
        return 0


def reader(tls: Any) -> RecvInto:
    """``read_into`` bound to ``tls``: every read of a connection, a large body's record by record included."""
    return functools.partial(read_into, tls)
