"""What the rpc/ unit tests share: a bare RpcServer on loopback (``Served``) and the service it serves."""

from __future__ import annotations

import dataclasses
import socket
import ssl
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from bigmachine import tls
from bigmachine.rpc.client import SyncPool
from bigmachine.rpc.server import RpcServer


class Gate:
    """A service whose ``wait`` blocks until ``open`` (counting calls started and finished)."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.started = 0
        self.finished = 0

    def wait(self, tag: Any = None) -> Any:
        self.started += 1
        self.event.wait(30)
        self.finished += 1
        return tag

    def open(self) -> None:
        self.event.set()

    def echo(self, value: Any) -> Any:
        return value

    def blob(self, size: int) -> bytes:
        return bytes(range(256)) * (size // 256)

    def chunks(self, count: int) -> Iterator[bytes]:
        for i in range(count):
            yield b"%d;" % i

    def failing(self, count: int) -> Iterator[bytes]:
        yield from self.chunks(count)
        raise ValueError("failed mid-stream")

    def joined(self, chunks: Iterator[bytes]) -> bytes:
        return b"".join(chunks)

    async def ajoined(self, chunks: AsyncIterator[bytes]) -> bytes:
        return b"".join([chunk async for chunk in chunks])


@dataclasses.dataclass
class Served:
    server: RpcServer
    port: int
    client: ssl.SSLContext
    gate: Gate

    def pool(self) -> SyncPool:
        return SyncPool("127.0.0.1", self.port, self.client, "127.0.0.1")

    def raw(self) -> ssl.SSLSocket:
        """A TLS connection made by hand (a valid client certificate)."""
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        return self.client.wrap_socket(sock, server_hostname="127.0.0.1")

    def on_loop(self, fn: Any, *args: Any) -> None:
        done = threading.Event()

        def run() -> None:
            fn(*args)
            done.set()

        self.server.loop.call_soon_threadsafe(run)
        assert done.wait(10)


def contexts(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server's and a client's TLS contexts, their certificates issued by one new authority for 127.0.0.1."""
    authority = tls.Authority("rpc-tests")
    server_dir = authority.issue(["127.0.0.1"], common_name="server").write(tmp_path / "server")
    client_dir = authority.issue(["127.0.0.1"], common_name="client").write(tmp_path / "client")
    return tls.server_context(server_dir), tls.client_context(client_dir)

