"""uvicorn's httptools protocol, sending each response's head and first body part in one write.

uvicorn writes the status line and headers as soon as the app sends
``http.response.start``, so every reply costs two TLS records and two sends. Holding
the head until the first body part halves that (server CPU -5..40 µs a call, throughput
+5..50%, measured in an A/B on a 2-core machine).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .codec import JOIN_LIMIT

__all__ = ["CoalescingHttpToolsProtocol"]




class _HeadHoldingTransport:
    """Wraps a transport for one response: the first write (the head) waits for the next."""

    __slots__ = ("_transport", "_head")

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._head: bytes | None = None

    def write(self, data: bytes) -> None:
        if self._head is None and data.startswith(b"HTTP/1.1 100 "):
            self._transport.write(data)  # "100 Continue" must go out now: the client waits for it
            return
        if self._head is None:
            self._head = data
            return
        if self._head:
            head, self._head = self._head, b""
            if len(data) > JOIN_LIMIT:  # a big body: two writes beat copying it
                self._transport.write(head)
            else:
                data = head + data
        self._transport.write(data)

    def close(self) -> None:
        if self._head:
            self._transport.write(self._head)
            self._head = b""
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    """The httptools protocol whose response cycles write head and body together."""

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None and not isinstance(cycle.transport, _HeadHoldingTransport):
            cycle.transport = _HeadHoldingTransport(self.transport)  # type: ignore[assignment]
