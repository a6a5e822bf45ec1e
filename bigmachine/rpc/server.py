"""Server side of RPC: the services of a process, and the server that answers ``POST /rpc/Service.method``.

``RpcServer`` accepts TLS connections and serves each in a thread of its own
(``serving.ServerConnection``): a plain method runs in that thread, so neither the
event loop nor a hop between threads stands between a request and its reply, and a
long call never delays keepalives, which have connections (and threads) of their own.
``async def`` methods run on the machine's loop.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import socket
import ssl
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from ..errors import NotFound
from . import sockets
from .hangups import HangupWatch
from .serving import ServerConnection
from .slots import ServiceSlots
from .stats import CallStats

__all__ = ["Registry", "RpcServer", "public_methods"]

logger = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT = 10.0


class Registry:
    """The services installed on this process, and their public methods by ``"Service.method"``."""

    def __init__(self) -> None:
        self.services: dict[str, Any] = {}
        self.stats = CallStats()  # per-method latency and bytes served; read by Supervisor.metrics
        self._methods: dict[str, tuple[Callable[..., Any], bool, bool]] = {}
        self._control: set[str] = set()

    def add(self, name: str, service: Any, *, control: bool = False) -> None:
        """Installs ``service``; a ``control`` service's plain methods never wait for a service slot."""
        self.services[name] = service
        if control:
            self._control.add(name)
        self._methods.clear()

    def resolve(self, method: str) -> tuple[Callable[..., Any], bool, bool]:
        """The bound method, whether it is a coroutine function, and whether it takes a service slot
        to run; ``NotFound`` lists what exists."""
        try:
            return self._methods[method]
        except KeyError:
            pass
        service_name, _, name = method.partition(".")
        service = self.services.get(service_name)
        if service is None:
            raise NotFound(
                f"no service {service_name!r} (calling {method!r}); services here: {sorted(self.services)}"
            )
        fn = getattr(service, name, None) if name and not name.startswith("_") else None
        if not callable(fn):
            methods = public_methods(service)
            hint = next((f"; did you mean {m!r}?" for m in methods if _folded(m) == _folded(name)), "")
            raise NotFound(f"service {service_name!r} has no public method {name!r}{hint}; its methods: {methods}")
        if inspect.isasyncgenfunction(fn):  # `async def` with `yield`: on the loop, with async stream arguments
            fn = _returning(fn)
        entry = (fn, inspect.iscoroutinefunction(fn), service_name not in self._control)
        self._methods[method] = entry
        return entry


def _returning(generator_function: Callable[..., Any]) -> Callable[..., Awaitable[Any]]:
    """A coroutine function returning the async generator that ``generator_function`` makes."""

    async def call(*args: Any, **kwargs: Any) -> Any:
        return generator_function(*args, **kwargs)

    return call


def _folded(name: str) -> str:
    """A method name without case or underscores: Go's ``MemInfo`` and Python's ``mem_info`` fold alike."""
    return name.replace("_", "").casefold()


def public_methods(service: Any) -> list[str]:
    """The names callable remotely on ``service``."""
    return sorted(n for n in dir(service) if not n.startswith("_") and callable(getattr(service, n, None)))


class RpcServer:
    """Serves a registry's methods on a listening socket, mutual TLS, one thread per connection."""

    def __init__(self, registry: Registry, context: ssl.SSLContext, loop: asyncio.AbstractEventLoop, *,
                 slots: ServiceSlots, idle_timeout: float,
                 on_memory_error: Callable[[str, MemoryError], None] | None = None) -> None:
        self.registry = registry
        self.context = context
        self.loop = loop  # where ``async def`` methods run
        self.slots = slots
        self.idle_timeout = idle_timeout
        self.handshake_timeout = HANDSHAKE_TIMEOUT
        self.hangups = HangupWatch(loop)
        self.closing = False
        self.aborted = False
        self._on_memory_error = on_memory_error
        self._connections: set[ServerConnection] = set()
        self._lock = threading.Lock()
        self._listeners: list[socket.socket] = []

    def serve(self, listener: socket.socket) -> None:
        """Starts accepting on a bound, listening socket, TCP or Unix (its loop watches it; call on the loop)."""
        listener.setblocking(False)
        self._listeners.append(listener)
        self.loop.add_reader(listener.fileno(), self._accept, listener)

    def _accept(self, listener: socket.socket) -> None:
        """Takes every waiting connection and starts its thread."""
        while not self.closing:
            try:
                raw, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # out of descriptors, say: the caller's connect fails; we go on
                logger.warning("accepting a connection failed: %s", exc)
                return
            raw.setblocking(True)
            sockets.tune(raw)
            connection = ServerConnection(self, raw)
            with self._lock:
                self._connections.add(connection)
            try:
                threading.Thread(target=connection.run, name="bigmachine-service", daemon=True).start()
            except RuntimeError as exc:  # can't start new thread: out of memory or of address space
                logger.warning("no thread to serve a connection: %s", exc)
                with self._lock:
                    self._connections.discard(connection)
                raw.close()

    def forget(self, connection: ServerConnection) -> None:
        """A connection's thread ends: its socket is closed and no longer watched."""
        self.hangups.forget(connection.fd)
        connection.close()
        with self._lock:
            self._connections.discard(connection)

    def out_of_memory(self, method: str, exc: MemoryError) -> None:
        if self._on_memory_error is None:
            raise exc
        self._on_memory_error(method, exc)

    def connections(self) -> int:
        with self._lock:
            return len(self._connections)

    def busy(self) -> int:
        """Connections reading or answering a request now."""
        with self._lock:
            return sum(c.busy for c in self._connections)

    def stop(self) -> None:
        """Stops accepting and closes idle connections; busy ones close after their reply (on the loop)."""
        self._close(every=False)

    def abort(self) -> None:
        """Ends every connection now, as a crash would; calls running in threads finish unanswered (on the loop)."""
        self._close(every=True)

    def _close(self, *, every: bool) -> None:
        with self._lock:
            self.closing = True
            self.aborted = self.aborted or every
            connections = list(self._connections)
        if every:
            self.slots.close()
        listeners, self._listeners = self._listeners, []
        for listener in listeners:
            self.loop.remove_reader(listener.fileno())
            listener.close()
        for connection in connections:
            if every or not connection.busy:
                connection.wake()

    async def drain(self, grace: float) -> None:
        """After ``stop``: waits up to ``grace`` seconds for busy connections to send their replies."""
        deadline = self.loop.time() + grace
        while self.busy() and self.loop.time() < deadline:
            await asyncio.sleep(0.01)

    def close(self) -> None:
        """Ends every connection and the hang-up watch: the server is done."""
        self.abort()
        self.hangups.close()
