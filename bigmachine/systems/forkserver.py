"""The driver's end of the fork server (bigmachine/runtime/forks.py): asks it for machines, learns how they end.

A machine forked from the pre-imported server starts without paying for its imports again
(16 machines on 2 cores: about a third of the CPU time). ``Local`` forks only where the fork
is the very process a fresh interpreter would be: the same working directory and the same
variables that the interpreter and the loader read when they start (``PYTHON*``, ``LD_*``,
...). Machines with a ``memory_limit`` (the limit applies from their start) and any other
are launched as fresh processes. Forked machines share the server's hash seed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket

from ..runtime.spec import FORK_MESSAGE_MAX
from .forkserver_spawn import ForkServerProcess
from .janitor import kill_group, reap

__all__ = ["ForkServer", "ForkServerError", "ForkedProcess"]

logger = logging.getLogger(__name__)

_CLOSE_TIMEOUT = 5.0
_REPLY_TIMEOUT = 30.0  # seconds for the server to fork a machine (it takes milliseconds); then the launch fails


class ForkServerError(Exception):
    """The fork server could not fork a machine (or is gone): launch it as a fresh process instead."""


class ForkedProcess:
    """A machine forked by the fork server: signalled through its pidfd, its exit status told by the server."""

    def __init__(self, pid: int, pidfd: int, loop: asyncio.AbstractEventLoop) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._pidfd = pidfd
        self._exit: asyncio.Future[int] = loop.create_future()

    def send_signal(self, sig: int) -> None:
        """Signals the machine, if it still runs (the pidfd names this process, never a pid reused since)."""
        if self._pidfd >= 0:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self._pidfd, sig)

    async def wait(self) -> int:
        """The exit status (negative: the signal), once its group is killed and it is reaped."""
        return await asyncio.shield(self._exit)

    def _exited(self, code: int) -> None:
        os.close(self._pidfd)
        self._pidfd = -1
        self.returncode = code
        self._exit.set_result(code)


class ForkServer:
    """A session's fork server, served by its loop: the process ``server`` started, for one ``Local``."""

    def __init__(self, server: ForkServerProcess) -> None:
        self.key = server.key
        self.process = server.process
        self._loop = asyncio.get_running_loop()
        self._socket = server.socket
        self._socket.setblocking(False)
        self._requests: dict[int, asyncio.Future[ForkedProcess]] = {}
        self._children: dict[int, ForkedProcess] = {}
        self._next_id = 0
        self._loop.add_reader(self._socket.fileno(), self._read)

    @property
    def alive(self) -> bool:
        return self._socket.fileno() >= 0

    async def spawn(self, env: dict[str, str], fds: list[int]) -> ForkedProcess:
        """Forks a machine with this environment; ``fds``: its stdout, stderr, report pipe and listening socket."""
        self._next_id += 1
        request_id = self._next_id
        message = json.dumps({"id": request_id, "env": env}).encode()
        reply: asyncio.Future[ForkedProcess] = self._loop.create_future()
        self._requests[request_id] = reply
        try:
            async with asyncio.timeout(_REPLY_TIMEOUT):
                await self._send(message, fds)
                return await reply
        except TimeoutError as exc:  # not a ForkServerError: a fresh process must not share fds a late fork gets
            raise TimeoutError(f"the fork server (pid {self.process.pid}) did not fork a machine "
                               f"within {_REPLY_TIMEOUT:g} s") from exc
        finally:
            self._requests.pop(request_id, None)  # a machine forked after all is killed (see _read)

    async def _send(self, message: bytes, fds: list[int]) -> None:
        """Sends one request, waiting while the server's socket buffer is full."""
        while True:
            if not self.alive:
                raise ForkServerError("the fork server is gone")
            try:
                socket.send_fds(self._socket, [message], fds)
                return
            except BlockingIOError:
                writable = self._loop.create_future()
                self._loop.add_writer(self._socket.fileno(), writable.set_result, None)
                try:
                    await writable
                finally:
                    self._loop.remove_writer(self._socket.fileno())
            except OSError as exc:  # too big a message, or the server is gone
                raise ForkServerError(f"the fork server can't take the request: {exc}") from exc

    def _read(self) -> None:
        """Handles every message waiting: a forked machine's pid, a refusal, or how a machine ended."""
        while True:
            try:
                data, fds, _, _ = socket.recv_fds(self._socket, FORK_MESSAGE_MAX, 1)
            except BlockingIOError:
                return
            except OSError:
                data, fds = b"", []
            if not data:
                self._lost()
                return
            message = json.loads(data)
            if "exit" in message:
                self._children.pop(message["exit"])._exited(message["code"])
                continue
            reply = self._requests.pop(message["id"], None)
            if "pid" in message:
                child = self._children[message["pid"]] = ForkedProcess(message["pid"], fds[0], self._loop)
                if reply is None or reply.done():  # its launch was cancelled or gave up: nobody will watch it
                    child.send_signal(signal.SIGKILL)
                else:
                    reply.set_result(child)
            elif reply is not None and not reply.done():
                reply.set_exception(ForkServerError(f"the fork server could not fork a machine: {message['error']}"))

    def _lost(self) -> None:
        """The server ended or is let go: its machines end with it (PR_SET_PDEATHSIG), by SIGKILL."""
        if self._children or self._requests:
            logger.warning("the fork server (pid %d) ended with %d machines", self.process.pid, len(self._children))
        self._loop.remove_reader(self._socket.fileno())
        self._socket.close()
        for pid, child in self._children.items():
            kill_group(pid)  # nobody killed its group before it was reaped
            child._exited(-signal.SIGKILL)
        self._children.clear()
        for reply in self._requests.values():
            if not reply.done():
                reply.set_exception(ForkServerError("the fork server ended"))
        self._requests.clear()

    async def aclose(self) -> None:
        """Closes the socket (the server exits, and with it any machine left) and waits for it to end."""
        if self.alive:
            if not self._children and not self._requests:  # nothing of its to wind down; one still booting
                self.process.kill()  # would see the close only after its imports
            self._lost()
        await reap(self.process, _CLOSE_TIMEOUT)
