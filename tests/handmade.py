"""RPC requests written by hand, as an attacker or a broken client would send them."""

from __future__ import annotations

import socket
import ssl

import bigmachine
from bigmachine.rpc import wire


def post(machine: bigmachine.Machine, context: ssl.SSLContext | None, method: str, body: bytes) -> bytes:
    """POSTs ``body`` to ``method`` on ``machine`` (plain TCP if no context); b'' if refused or hung up."""
    request = (b"POST /rpc/%s HTTP/1.1\r\nHost: x\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n"
               % (method.encode(), wire.CALL, len(body))) + body
    port = int(machine.addr.rstrip("/").rsplit(":", 1)[1])
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            if context is None:
                raw.sendall(request)
                return raw.recv(65536)
            with context.wrap_socket(raw, server_hostname="127.0.0.1") as conn:
                conn.sendall(request)
                return conn.recv(65536)
    except (ssl.SSLError, ConnectionError, TimeoutError):
        return b""
