"""The tls_ceiling scenario: how fast Python's `ssl` moves bytes one way between two processes on one host.

The floor bulk transfers are held against (issue 12): this process, a TLS 1.3
client, sends each of `cfg.bulk_sizes` from one buffer over one mutual-TLS
connection to a spawned receiver, on a Unix socket tuned as bigmachine's are
(`bigmachine.rpc.sockets`): the transport a Local machine's driver uses. The
receiver `recv_into`s a preallocated, already touched buffer and acknowledges
with one byte. Certificates are ECDSA P-256 from
`bigmachine.tls`, as a session's are. Backend-independent: it runs once per run,
and its figure stands for both directions.

A second figure, "rate into fresh memory", has the receiver `recv_into` a new
buffer for each payload, as any transfer whose result is a new object must, made
as bigmachine makes a received value (`bigmachine.rpc.buffers.fresh_bytes`: a new
`bytes`, its pages made present in one system call, not zeroed). That is the
floor of a whole transfer, which hands the caller a new `bytes`.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.connection
import os
import ssl
import struct
import tempfile
from collections.abc import Iterator

from bigmachine.rpc import sockets
from bigmachine.rpc.buffers import fresh_bytes
from bigmachine.tls import Authority, client_context, server_context

from .harness import MB, Config, measurement, size_label, timed
from .measure import MIB, Measurement

__all__ = ["HOST", "TLS_FLOOR", "certificates", "tls_ceiling"]

#: The backend label of its rows.
TLS_FLOOR = "tls (floor)"
HOST = "127.0.0.1"
_HEADER = struct.Struct("!Q?")  # payload length (0 ends the receiver), and whether it goes into fresh memory
_DEADLINE = 120.0  # seconds any one wait may take


def tls_ceiling(name: str, cfg: Config) -> list[Measurement]:
    """MB/s one way for each payload size, the median over cfg.repeat after a warm-up."""
    out = []
    with certificates() as certs, _receiver(certs) as path, _connect(certs, path) as tls:
        for size in cfg.bulk_sizes:
            payload = memoryview(b"\xa5" * size)
            _send(tls, payload, False)  # warm-up: the receiver touches its buffer
            for metric, fresh, note in (("rate", False, "one way, TLS 1.3 on a Unix socket, the ceiling for up and down"),
                                        ("rate into fresh memory", True, "received into a new buffer each time")):
                rates = [size / MB / timed(_send, tls, payload, fresh) for _ in range(cfg.repeat)]
                out.append(measurement(name, "tls_ceiling", metric, "MB/s", better="higher",
                                       variant=size_label(size), values=rates,
                                       extra={"payload_mib": size / MIB, "note": note}))
        tls.sendall(_HEADER.pack(0, False))
    return out


def _send(tls: ssl.SSLSocket, payload: memoryview, fresh: bool) -> None:
    tls.sendall(_HEADER.pack(len(payload), fresh))
    tls.sendall(payload)
    if tls.recv(1) != b"k":
        raise RuntimeError("the TLS receiver did not acknowledge the payload")


@contextlib.contextmanager
def certificates() -> Iterator[str]:
    """A directory holding a throwaway authority's certificate and a leaf for 127.0.0.1."""
    with tempfile.TemporaryDirectory(prefix="bigmachine-bench-tls-") as directory:
        Authority("bench").issue([HOST]).write(directory)
        yield directory


@contextlib.contextmanager
def _receiver(certs: str) -> Iterator[str]:
    """A spawned receiving process; yields the path of the Unix socket it listens on."""
    ctx = multiprocessing.get_context("spawn")
    ours, theirs = ctx.Pipe()
    proc = ctx.Process(target=_receive, args=(certs, theirs), daemon=True)
    proc.start()
    theirs.close()
    try:
        if not ours.poll(_DEADLINE):
            raise TimeoutError(f"the TLS receiver did not listen within {_DEADLINE:g} s")
        yield str(ours.recv())
    finally:
        proc.join(_DEADLINE)
        if proc.is_alive():
            proc.kill()
            proc.join(_DEADLINE)


@contextlib.contextmanager
def _connect(certs: str, path: str) -> Iterator[ssl.SSLSocket]:
    raw = sockets.connect_unix(path, _DEADLINE)
    sockets.tune(raw)
    with client_context(certs).wrap_socket(raw, server_hostname=HOST) as tls:
        yield tls


def _receive(certs: str, parent: multiprocessing.connection.Connection) -> None:
    """The receiver: accepts one connection, then reads payloads into one reused buffer until told to stop."""
    with sockets.listen_unix(os.path.join(certs, "ceiling.sock")) as listener:
        parent.send(listener.getsockname())
        listener.settimeout(_DEADLINE)
        raw, _ = listener.accept()
    raw.settimeout(_DEADLINE)
    sockets.tune(raw)
    buffer = memoryview(bytearray())
    with server_context(certs).wrap_socket(raw, server_side=True) as tls:
        while True:
            size, fresh = _HEADER.unpack(_read_into(tls, memoryview(bytearray(_HEADER.size))))
            if not size:
                break
            if fresh:
                _read_into(tls, fresh_bytes(size)[1])  # a new object, as a received value is made
            else:
                if len(buffer) < size:
                    buffer = memoryview(bytearray(b"\0" * size))  # touched: no first-touch page cost later
                _read_into(tls, buffer[:size])
            tls.sendall(b"k")


def _read_into(tls: ssl.SSLSocket, view: memoryview) -> memoryview:
    """Fills view from the socket; returns it."""
    got = 0
    while got < len(view):
        n = tls.recv_into(view[got:])
        if not n:
            raise ConnectionError(f"the sender closed after {got} of {len(view)} bytes")
        got += n
    return view
