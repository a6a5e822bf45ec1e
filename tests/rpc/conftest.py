"""A bare RpcServer on loopback, with its own loop thread and certificates, for the rpc/ unit tests."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from served import Gate, Served, contexts

from bigmachine.rpc.server import Registry, RpcServer
from bigmachine.rpc.slots import ServiceSlots


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    server_context, client_context = contexts(tmp_path)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="rpc-test-loop", daemon=True)
    thread.start()
    registry = Registry()
    gate = Gate()
    registry.add("Gate", gate)
    server = RpcServer(registry, server_context, loop, slots=ServiceSlots(1), idle_timeout=30)
    listener = socket.create_server(("127.0.0.1", 0))
    served = Served(server, listener.getsockname()[1], client_context, gate)
    served.on_loop(server.serve, listener)
    try:
        yield served
    finally:
        gate.open()
        served.on_loop(server.close)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
