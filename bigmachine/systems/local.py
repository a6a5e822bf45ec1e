"""The local system: each machine is a new Python process on this host, mutual TLS on 127.0.0.1.

``Local`` is importable without asyncio, so that ``bigmachine.start`` has it start its fork
server before the session imports the rest: the server boots while the driver does. What it
does for a session is local_processes.py's, imported with the first session.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

from .base import System
from .forkserver_spawn import ForkServerProcess, server_environment
from .memory import parse_size

if TYPE_CHECKING:
    from ..machine import Machine
    from ..session import B
    from .base import Instance
    from .local_processes import Launcher

__all__ = ["Local"]

logger = logging.getLogger(__name__)


class Local(System):
    """Machines as local processes running the driver's interpreter with its ``sys.path``."""

    name = "local"
    start_timeout = 60.0

    def __init__(self, *, keepalive_period: float = 2.0, keepalive_timeout: float = 60.0,
                 keepalive_rpc_timeout: float = 10.0, memory_limit: int | float | str | None = None, **options: Any) -> None:
        """``memory_limit`` (bytes > 0, or like ``"512M"``) bounds each machine's memory: a cgroup where
        one can be made, else its address space; a machine that runs out stops with OutOfMemory.
        ``options``: ``start_timeout``, ``service_threads``, ``max_connections`` (see ``System``)."""
        super().__init__(keepalive_period=keepalive_period, keepalive_timeout=keepalive_timeout,
                         keepalive_rpc_timeout=keepalive_rpc_timeout, **options)
        self.memory_limit = parse_size(memory_limit) if memory_limit is not None else None
        self._lock = threading.Lock()  # sessions may start on several threads
        self._started: ForkServerProcess | None = None  # by prepare, for the session about to start
        self._launcher: Launcher | None = None  # made by the first session (it imports asyncio)

    def __repr__(self) -> str:
        return "Local()" if self.memory_limit is None else f"Local(memory_limit={self.memory_limit})"

    @property
    def forks_machines(self) -> bool:
        """Whether machines are forked from a fork server: not with a ``memory_limit``, which applies from a
        machine's start, so those start as fresh processes."""
        return self.memory_limit is None

    def prepare(self) -> None:
        """Starts a fork server for the session about to start, before it imports its modules: most of a
        first start is the server's boot, which now overlaps the driver's. Only on the main thread,
        which lives as long as the process: the server dies with the thread that starts it."""
        if not self.forks_machines or threading.current_thread() is not threading.main_thread():
            return  # elsewhere the session's loop starts it
        with self._lock:
            if self._started is not None:
                return
            try:
                self._started = ForkServerProcess(server_environment())
            except Exception as exc:  # the session's loop tries again, and its first launch reports what stops it
                logger.debug("the fork server did not start ahead of the session: %s", exc)

    def init(self, session: B) -> None:
        """Hands the session the fork server ``prepare`` started, or has its loop start one now."""
        with self._lock:
            started, self._started = self._started, None
            if self._launcher is None:
                from .local_processes import Launcher  # asyncio's, which the session has imported by now

                self._launcher = Launcher(self)
        self._launcher.init(session, started)

    async def launch(self, session: B, machines: list[Machine], environ: dict[str, str]) -> list[Instance | BaseException]:
        assert self._launcher is not None, "launch before init"
        return await self._launcher.launch(session, machines, environ)

    async def shutdown(self) -> None:
        if self._launcher is not None:
            await self._launcher.shutdown()
