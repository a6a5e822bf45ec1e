"""Serving the debug app: uvicorn on a loop of its own in a daemon thread, stopped by ``b.shutdown()``."""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import uvicorn

from ..session import new_loop
from .guard import allowed_hosts

if TYPE_CHECKING:
    from ..session import B

__all__ = ["DebugServer", "serve_debug"]

logger = logging.getLogger(__name__)

DEFAULT_PORT = 3333  # taken? then any free port, with a warning
_START_TIMEOUT = 10.0
_STOP_TIMEOUT = 10.0
_GRACE = 1  # seconds open requests (a long profile) get to finish at shutdown


def parse_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT``; a bare ``:PORT`` means 127.0.0.1) as (host, port)."""
    host, sep, port = address.strip().rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"debug address must look like HOST:PORT (port 0 for any free port), not {address!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except BaseException:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


class DebugServer:
    """uvicorn serving ``app`` on an already bound socket, from its own thread and event loop."""

    def __init__(self, app: Any, sock: socket.socket, *, on_start: Callable[[], None] | None = None) -> None:
        self.sock = sock
        self._on_start = on_start  # run on the server's loop before it serves
        self.host, self.port = sock.getsockname()[:2]
        config = uvicorn.Config(app, loop="none", lifespan="off", access_log=False, log_config=None,
                                log_level="warning", timeout_graceful_shutdown=_GRACE)
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._run, name="bigmachine-debug-server", daemon=True)
        self._failure: BaseException | None = None

    @property
    def url(self) -> str:
        host = socket.gethostname() if self.host in ("0.0.0.0", "::") else self.host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}"

    def start(self) -> None:
        """Starts serving and returns once the server accepts connections."""
        self._thread.start()
        deadline = time.monotonic() + _START_TIMEOUT
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the debug server on {self.url} did not start: {self._failure!r}")
            time.sleep(0.005)

    def _run(self) -> None:
        loop = new_loop()
        try:
            if self._on_start is not None:
                loop.call_soon(self._on_start)
            loop.run_until_complete(self.server.serve(sockets=[self.sock]))
        except BaseException as exc:  # reported by start(), or logged if it ends later
            self._failure = exc
            logger.error("debug server %s stopped: %r", self.url, exc)
        finally:
            _cancel_tasks(loop)
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
            loop.close()
            self.sock.close()

    def stop(self) -> None:
        """Stops serving (open requests get a short grace) and joins the thread. Idempotent."""
        self.server.should_exit = True
        if self._thread.ident is not None and self._thread is not threading.current_thread():
            self._thread.join(_STOP_TIMEOUT)
            if self._thread.is_alive():
                logger.error("debug server %s did not stop within %s s", self.url, _STOP_TIMEOUT)
        else:
            self.sock.close()


def _cancel_tasks(loop: asyncio.AbstractEventLoop) -> None:
    """Cancels what still runs on the server's loop (the resource history) and lets it finish."""
    tasks = asyncio.all_tasks(loop)
    for task in tasks:
        task.cancel()
    if tasks:
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))


def _hosts(host: str, extra: Iterable[str]) -> frozenset[str]:
    """The ``Host`` names served: loopback, the bind address (this host's names for a wildcard), ``extra``."""
    if host in ("0.0.0.0", "::"):
        return allowed_hosts(socket.gethostname(), [socket.getfqdn(), *extra])
    return allowed_hosts(host, extra)


def serve_debug(b: B, address: str, *, deadline: float | None = None, allow_hosts: Iterable[str] = ()) -> DebugServer:
    """Serves the debug app on ``address`` from the session's start; ``b.shutdown()`` stops it.

    Sets ``b.debug_url`` (through ``cluster.SessionView.host``) to the server's base URL (``http://HOST:PORT``: the pages are
    under ``/debug/bigmachine``) and starts the resource history. ``deadline``: seconds
    each machine gets to answer a page (default ``app.DEFAULT_DEADLINE``);
    ``allow_hosts``: more ``Host`` names to serve (``--bigm.debug-allow-host``), beside
    loopback and the bind address.
    """
    host, port = parse_address(address)
    try:
        sock = _bind(host, port)
    except OSError as exc:
        if port != DEFAULT_PORT or exc.errno != errno.EADDRINUSE:
            raise OSError(exc.errno, f"cannot serve the debug server on {address}: {exc.strerror}; "
                                     "pick another with --bigm.debug HOST:PORT (port 0: any free port), "
                                     "or turn it off with --bigm.debug none") from exc
        sock = _bind(host, 0)
        logger.warning("debug server: port %d on %s is taken; serving on port %d instead",
                       port, host, sock.getsockname()[1])
    from .app import create_app
    from .cluster import SessionView
    from .context import DEFAULT_DEADLINE, PREFIX

    app = create_app(b, deadline=DEFAULT_DEADLINE if deadline is None else deadline,
                     hosts=_hosts(sock.getsockname()[0], allow_hosts))
    server = DebugServer(app, sock, on_start=app.state.debug.start_history)
    server.start()
    SessionView(b).host(server.url, server.stop)
    logger.info("debug server: %s%s/status", server.url, PREFIX)
    return server
