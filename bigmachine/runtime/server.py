"""Serving a machine: the supervisor and the services, answered by ``rpc.server.RpcServer``.

Shared by the process entry point (``bigmachine.runtime.process``) and the in-process
``Testing`` system, so both run the very same server.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal
import socket
from collections.abc import Callable

from .. import functions, tls
from ..liveness import Liveness
from ..rpc.client import IDLE_TIMEOUT
from ..rpc.server import Registry, RpcServer
from ..rpc.slots import ServiceSlots
from ..session import B
from .spec import EXIT_OUT_OF_MEMORY, LaunchSpec
from .supervisor import Supervisor

__all__ = ["MachineServer"]

logger = logging.getLogger(__name__)

SERVER_IDLE_TIMEOUT = int(5 * IDLE_TIMEOUT)  # the client closes idle connections first: it never sends into a closing one
STOP_GRACE = 1.0  # seconds a stopping machine gives calls in progress to send their replies


class MachineServer:
    """A running machine: the RPC server with mutual TLS on its socket (and a Unix one for a driver on the same
    host), and the supervisor."""

    def __init__(self, config: LaunchSpec, *, on_exit: Callable[[str, int], None]) -> None:
        self.config = config
        self.registry = Registry()
        self.slots = ServiceSlots(config.service_threads)
        self.session = B._for_machine(config.session, config.system, config.tls_dir, Liveness(*config.keepalive))
        self._on_exit = on_exit
        self.supervisor = Supervisor(self.session, self.registry, exit=lambda reason: on_exit(reason, 0), lease=config.lease,
                                     maxprocs=config.maxprocs, parent=config.parent, service_slots=self.slots,
                                     dump_stacks=config.dump_stacks)
        self.registry.add("Supervisor", self.supervisor, control=True)
        self.registry.add(functions.SERVICE, functions.Functions())  # runs bigmachine.Executor's calls
        self.server: RpcServer | None = None
        self.addr = ""
        self._stopped: asyncio.Event | None = None
        self.stopped_by: signal.Signals | None = None  # the signal that stopped the machine, if one did

    async def start(self) -> str:
        """Binds, starts serving and the lease watchdog; returns the address."""
        if self.config.listen_fd is not None:
            sock = socket.socket(fileno=self.config.listen_fd)
        else:
            family = socket.AF_INET6 if ":" in self.config.host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.config.host, self.config.port))
        sock.listen(1024)
        loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        self.server = RpcServer(self.registry, tls.server_context(self.config.tls_dir), loop, slots=self.slots,
                                idle_timeout=SERVER_IDLE_TIMEOUT, on_memory_error=self._out_of_memory)
        self.session._attach(loop)
        self.server.serve(sock)
        if self.config.unix_fd is not None:  # the same calls, past TCP, for a driver on this host
            self.server.serve(socket.socket(fileno=self.config.unix_fd))
        host, port = sock.getsockname()[:2]
        self.addr = f"https://{'[' + host + ']' if ':' in host else host}:{port}/"
        self.supervisor.start_watchdog()
        return self.addr

    def _out_of_memory(self, method: str, exc: MemoryError) -> None:
        """MemoryError escaped a service: say so with the figures, and end the machine."""
        import resource

        try:
            with open("/proc/self/statm") as f:
                rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            rss = -1
        limit = resource.getrlimit(resource.RLIMIT_AS)[0]
        limit_text = "none" if limit == resource.RLIM_INFINITY else f"{limit >> 20} MiB"
        self._on_exit(f"out of memory: MemoryError in {method}; resident {rss >> 20} MiB, "
                      f"address-space limit {limit_text}", EXIT_OUT_OF_MEMORY)

    async def serve_until_exit(self) -> None:
        """Serves until ``stop`` (or SIGTERM/SIGINT in a process of its own), then lets replies in progress go out."""
        assert self._stopped is not None and self.server is not None
        loop = asyncio.get_running_loop()
        signals = [sig for sig in (signal.SIGTERM, signal.SIGINT)
                   if _add_signal_handler(loop, sig, functools.partial(self._stop_by_signal, sig))]
        try:
            await self._stopped.wait()
            if not self.server.aborted:
                await self.server.drain(STOP_GRACE)
            self.server.close()
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)

    def _stop_by_signal(self, sig: signal.Signals) -> None:
        self.stopped_by = sig
        self.stop()

    def stop(self) -> None:
        """Stops serving (on the machine's loop): no new call is taken, replies in progress go out."""
        if self.server is not None:
            self.server.stop()
        if self._stopped is not None:
            self._stopped.set()

    def abort(self) -> None:
        """Ends the machine abruptly, as a crash would: every connection is cut (on the machine's loop)."""
        if self.server is not None:
            self.server.abort()
        if self._stopped is not None:
            self._stopped.set()
        self.session._close_pools()


def _add_signal_handler(loop: asyncio.AbstractEventLoop, sig: signal.Signals, handler: Callable[[], None]) -> bool:
    """Handles ``sig`` on the loop where this is the main thread (a process of its own); False elsewhere (Testing)."""
    try:
        loop.add_signal_handler(sig, handler)
    except (RuntimeError, ValueError):
        return False
    return True
