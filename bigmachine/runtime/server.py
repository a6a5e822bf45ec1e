"""Serving a machine: the supervisor and the RPC app under uvicorn, on the current loop.

Shared by the process entry point (``bigmachine.runtime.process``) and the in-process
``Testing`` system, so both run the very same server.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
from collections.abc import Callable
from pathlib import Path

import uvicorn

from .. import functions, tls
from ..liveness import Liveness
from ..rpc.client import IDLE_TIMEOUT
from ..rpc.server import Registry, RpcApp
from ..rpc.threads import ServiceThreads
from ..rpc.uvicorn_protocol import CoalescingHttpToolsProtocol
from ..session import B
from .spec import EXIT_OUT_OF_MEMORY, LaunchSpec
from .supervisor import Supervisor, control_service

__all__ = ["MachineServer"]

logger = logging.getLogger(__name__)

SERVER_IDLE_TIMEOUT = int(5 * IDLE_TIMEOUT)  # the client closes idle connections first: it never sends into a closing one
CONTROL_THREADS = 4  # the Supervisor's plain methods (status, profiles, ...): never behind service calls


class MachineServer:
    """A running machine: uvicorn serving the RPC app with mutual TLS on one socket."""

    def __init__(self, config: LaunchSpec, *, on_exit: Callable[[str, int], None]) -> None:
        self.config = config
        self.registry = Registry()
        self.executor = ServiceThreads(config.service_threads, "bigmachine-service")
        self.control_threads = ServiceThreads(CONTROL_THREADS, "bigmachine-control")
        self.session = B._for_machine(config.session, config.system, config.tls_dir, Liveness(*config.keepalive))
        self._on_exit = on_exit
        self.supervisor = Supervisor(self.session, self.registry, exit=lambda reason: on_exit(reason, 0), lease=config.lease,
                                     maxprocs=config.maxprocs, parent=config.parent, service_threads=self.executor,
                                     dump_stacks=config.dump_stacks)
        self.registry.add("Supervisor", control_service(self.supervisor, self.control_threads))
        self.registry.add(functions.SERVICE, functions.Functions())  # runs bigmachine.Executor's calls
        self.app = RpcApp(self.registry, self.executor, on_memory_error=self._out_of_memory)
        self.server: uvicorn.Server | None = None
        self.addr = ""
        self._task: asyncio.Task[None] | None = None

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
        sock.setblocking(False)
        directory = Path(self.config.tls_dir)
        config = uvicorn.Config(
            self.app,
            http=CoalescingHttpToolsProtocol,
            loop="none",
            lifespan="off",
            access_log=False,
            log_level="warning",
            timeout_keep_alive=SERVER_IDLE_TIMEOUT,
            timeout_graceful_shutdown=1,
            ssl_certfile=str(directory / tls.CERT_FILE),
            ssl_keyfile=str(directory / tls.KEY_FILE),
            ssl_ca_certs=str(directory / tls.CA_FILE),
            ssl_cert_reqs=ssl.CERT_REQUIRED,
        )
        self.server = uvicorn.Server(config)
        loop = asyncio.get_running_loop()
        self.session._attach(loop)
        self._task = loop.create_task(self.server.serve(sockets=[sock]))
        while not self.server.started:
            if self._task.done():
                self._task.result()
                raise RuntimeError("the machine's server stopped before it started")
            await asyncio.sleep(0.005)
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
        """Waits until uvicorn stops (on ``stop`` or a signal)."""
        assert self._task is not None
        await self._task

    def stop(self) -> None:
        """Asks uvicorn to stop serving."""
        if self.server is not None:
            self.server.should_exit = True

    def abort(self) -> None:
        """Ends the machine abruptly, as a crash would: every connection is reset."""
        server = self.server
        if server is None:
            return
        server.should_exit = server.force_exit = True
        for sock_server in getattr(server, "servers", []):
            sock_server.close()
        for connection in list(server.server_state.connections):
            transport = getattr(connection, "transport", None)
            if transport is not None:
                transport.abort()
        self.session._close_pools()
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.control_threads.shutdown(wait=False, cancel_futures=True)
