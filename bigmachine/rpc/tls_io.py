"""Reads and writes on a blocking TLS socket's connection itself, past ``ssl.SSLSocket``'s Python wrappers.

``sendall`` and ``recv_into`` cost four Python-level calls each (two closed-socket checks among
them; ``sendall`` adds a memoryview cast): 5-10% of a small call's CPU in the driver, and paid
again for every 16 KiB record of a large body. Both RPC ends use one connection from one
thread, and check for a closed socket their own way, so they talk to the ``_ssl`` object under
the socket (``SSLSocket._sslobj``) directly. Timeouts, blocking and errors are the same:
ssl.py's wrappers call the very same methods.

Both also have OpenSSL read ahead (``read_ahead``): without it, each 16 KiB record costs two
``read`` system calls, its 5-byte header and then its body; with it, one call brings in
whatever has arrived, up to ``READ_AHEAD`` bytes. Python's ``ssl`` has no switch for it, so it
is set through ctypes on the ``SSL`` under the connection, found and checked as ``_native`` says.
"""

from __future__ import annotations

import _ssl
import ctypes
import functools
import ssl
from collections.abc import Callable
from typing import Any

__all__ = ["READ_AHEAD", "RecvInto", "connection_of", "read_ahead", "read_into", "reader"]

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


#: How much one ``read`` system call may bring in for OpenSSL to decrypt record by record: four records.
#: In a two-process TLS transfer on a 2-core host, 64 KiB read faster than 32, 128 or 256 KiB.
READ_AHEAD = 1 << 16
_SSL_CTRL_SET_READ_AHEAD = 41
_POINTER = ctypes.sizeof(ctypes.c_void_p)
_HEAD = object.__basicsize__  # PyObject_HEAD: an object's reference count and type


def _libssl() -> ctypes.CDLL | None:
    """The libssl that Python's ``ssl`` module runs on, or None where its functions can't be had."""
    try:
        lib = ctypes.CDLL(getattr(_ssl, "__file__", None))  # its own dependencies are searched too
        lib.SSL_ctrl.argtypes = (ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p)
        lib.SSL_ctrl.restype = ctypes.c_long
        lib.SSL_set_default_read_buffer_len.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
        lib.SSL_set_default_read_buffer_len.restype = None
        lib.SSL_has_pending.argtypes = (ctypes.c_void_p,)
        lib.SSL_has_pending.restype = ctypes.c_int
        lib.SSL_get_SSL_CTX.argtypes = (ctypes.c_void_p,)
        lib.SSL_get_SSL_CTX.restype = ctypes.c_void_p
    except (OSError, AttributeError):
        return None
    return lib


_lib = _libssl()


def _native(tls: Any) -> int | None:
    """The ``SSL *`` under ``tls`` (a ``_ssl._SSLSocket``), or None where it can't be found for sure.

    CPython's ``PySSLSocket`` is ``PyObject_HEAD``, the socket's weak reference, ``SSL *ssl``, then
    ``PySSLContext *ctx`` (CPython 3.11 to 3.13), and ``PySSLContext`` is ``PyObject_HEAD`` then ``SSL_CTX *ctx``.
    The layout is trusted only when the ``ctx`` field is ``tls.context`` itself and OpenSSL says the
    ``SSL`` belongs to that context's ``SSL_CTX``.
    """
    if _lib is None:
        return None
    context = tls.context
    fields = id(tls) + _HEAD
    if ctypes.c_void_p.from_address(fields + 2 * _POINTER).value != id(context):
        return None
    native = ctypes.c_void_p.from_address(fields + _POINTER).value
    native_context = ctypes.c_void_p.from_address(id(context) + _HEAD).value
    if not native or not native_context or _lib.SSL_get_SSL_CTX(native) != native_context:
        return None
    return native


def read_ahead(tls: Any) -> Callable[[], int]:
    """Lets OpenSSL read up to ``READ_AHEAD`` bytes per system call on ``tls``, several records at once;
    returns what says whether ``tls`` holds received bytes its caller has not read (non-zero if so),
    to be called only while ``tls`` lives.

    Against reading each record in two system calls (4 alternating pairs of the bulk benchmark):
    streamed downloads 1.21x (64 MiB, faster in 4 of 4) and 1.12x (256 MiB), whole transfers
    1.04-1.09x. Bytes read ahead wait inside OpenSSL, not in the socket, and ``tls.pending()``
    counts only the decrypted rest of the current record: the check returned counts them all
    (``SSL_has_pending``). Where the ``SSL`` can't be reached (see ``_native``), each record is
    read in two system calls, as before, and the check is ``tls.pending``.
    """
    native = _native(tls)
    if native is None:
        return tls.pending  # type: ignore[no-any-return]
    assert _lib is not None
    _lib.SSL_set_default_read_buffer_len(native, READ_AHEAD)
    _lib.SSL_ctrl(native, _SSL_CTRL_SET_READ_AHEAD, 1, None)
    return functools.partial(_lib.SSL_has_pending, native)
