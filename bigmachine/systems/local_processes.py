"""What ``Local`` does for its sessions: launches each machine as a process on this host, forked from
the session's fork server where it can be, forwards its output, and learns how it ended.

Imported by ``Local`` with its first session, which has imported asyncio already: local.py itself
is imported, and its fork server started, before that (``Local.prepare``).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import astuple
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import MachineStopped, OutOfMemory
from ..rpc import sockets
from ..runtime.spec import EXIT_OUT_OF_MEMORY, LaunchSpec, describe_exit
from . import output
from .base import Instance
from .forkserver import ForkServer, ForkServerError
from .forkserver_spawn import ForkServerProcess, server_environment, start_key
from .janitor import Janitor, kill_group
from .memory import MemoryCgroup, kernel_oom_kill
from .output import Forwarder

if TYPE_CHECKING:
    from ..machine import Machine
    from ..session import B
    from .local import Local

__all__ = ["Launcher", "LocalProcess"]

logger = logging.getLogger(__name__)

_KILL_GRACE = 2.0
_OUTPUT_GRACE = 1.0  # seconds shutdown waits for machines' last output to be written
_UNIX_SOCKET = "rpc.sock"  # in the machine's private directory (0700, the session's temp dir)
_UNIX_PATH_MAX = 108  # bytes of sockaddr_un's path on Linux, its NUL included


class Launcher:
    """One ``Local``'s machinery: a fork server per session (its loop), which its shutdown ends."""

    def __init__(self, local: Local) -> None:
        self._local = local
        self._forks: dict[asyncio.AbstractEventLoop, ForkServer] = {}

    def init(self, session: B, started: ForkServerProcess | None) -> None:
        """Has the session's loop serve its fork server as soon as it can: ``started`` (by ``Local.prepare``),
        else one started there now, which boots while the session makes its certificates and the
        program goes on to ``b.start``. Most of a first start is that boot."""
        if started is not None or self._local.forks_machines:
            session.call_soon(self._warm_fork_server, started)

    def _warm_fork_server(self, started: ForkServerProcess | None) -> None:
        try:
            self._fork_server(server_environment(), started)
        except Exception as exc:  # the first launch tries again, and reports what stops it
            logger.debug("the fork server did not start ahead of the first launch: %s", exc)

    async def launch(self, session: B, machines: list[Machine], environ: dict[str, str]) -> list[Instance | BaseException]:
        return list(await asyncio.gather(*(self._launch_one(session, m, environ, session.janitor) for m in machines),
                                         return_exceptions=True))

    async def shutdown(self) -> None:
        """Stops the session's fork server and lets forwarded output finish. The session ends its janitor,
        which kills any machine's group still watched, and removes its temp dir itself."""
        forks = self._forks.pop(asyncio.get_running_loop(), None)  # its machines, this session's, are stopped
        if forks is not None:
            await forks.aclose()
        await output.drained(_OUTPUT_GRACE)

    async def _launch_one(self, session: B, machine: Machine, environ: dict[str, str], janitor: Janitor) -> Instance:
        tls_dir = session.authority.issue(["127.0.0.1", "localhost"], common_name=machine.name).write(
            session.tmpdir / machine.name)
        # The driver picks the address (issue 15): it is known when b.start returns, before the machine serves.
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        unix = None
        pipes = [os.pipe() for _ in range(3)]  # the machine's report pipe, stdout and stderr: (read, write) each
        cgroup = None
        try:
            listener.bind(("127.0.0.1", 0))
            listener.listen(1024)  # connections made before the machine serves wait in the backlog
            address = f"https://127.0.0.1:{listener.getsockname()[1]}/"
            unix_path = tls_dir / _UNIX_SOCKET
            unix = _unix_listener(unix_path)
            spec = LaunchSpec(
                session=session.name, tls_dir=str(tls_dir), listen_fd=listener.fileno(),
                unix_fd=unix.fileno() if unix else None, lease=self._local.initial_lease(),
                parent=os.getpid(), system=self._local.name, service_threads=self._local.service_threads,
                keepalive=astuple(self._local.liveness), report_fd=pipes[0][1], path=sys.path, argv=sys.argv,
            )
            if self._local.memory_limit is not None:
                cgroup = MemoryCgroup.create(f"{session.name}-{machine.name}", self._local.memory_limit)
                spec.memory_limit = self._local.memory_limit
                spec.cgroup_procs = cgroup.procs_file if cgroup else None
            env = {**os.environ, **environ, "PYTHONUNBUFFERED": "1"}
            listening = [listener.fileno()] + ([unix.fileno()] if unix else [])
            process = await self._start_process(spec, env, [fd for _, fd in pipes], listening)
        except BaseException:
            for read_fd, _ in pipes:
                os.close(read_fd)
            if cgroup is not None:
                cgroup.remove()
            raise
        finally:
            for _, write_fd in pipes:
                os.close(write_fd)
            listener.close()  # the machine's copy serves; ours would keep the port open after it ends
            if unix is not None:
                unix.close()
        janitor.watch(process.pid, str(cgroup.path) if cgroup else None)
        return LocalProcess(machine, process, [fd for fd, _ in pipes], cgroup, address=address, janitor=janitor,
                            unix_path=str(unix_path) if unix else None)

    async def _start_process(self, spec: LaunchSpec, env: dict[str, str], pipes: list[int],
                             listening: list[int]) -> MachineProcess:
        """Forks the machine from the fork server where that gives the very process a fresh one would be.

        ``pipes``: the write ends of its report pipe, stdout and stderr; ``listening``: its listening
        socket, and its Unix socket if it has one.
        """
        forks = self._fork_server(env) if self._local.forks_machines else None
        if forks is not None:
            spec.parent = forks.process.pid  # whose death the machine dies with: the server's, which dies with ours
            try:
                return await forks.spawn({**env, **spec.to_environment()}, [pipes[1], pipes[2], pipes[0], *listening])
            except ForkServerError as exc:
                logger.warning("%s; starting a fresh process instead", exc)
                spec.parent = os.getpid()
        # Popen and raw fds, not asyncio subprocess transports: closing a uvloop loop
        # that had those sometimes hung for good in uv_run (seen in tests/test_local.py).
        # Popen runs here, on the session's loop thread, which lives until every machine is
        # stopped: the machine's PR_SET_PDEATHSIG fires when the *thread* that forked it ends.
        # Each machine leads a process group of its own, which ends with it (start_new_session).
        return SpawnedProcess(subprocess.Popen(
            [sys.executable, "-m", "bigmachine.runtime"], env={**env, **spec.to_environment()},
            pass_fds=(pipes[0], *listening), stdin=subprocess.DEVNULL, stdout=pipes[1], stderr=pipes[2],
            start_new_session=True,
        ))

    def _fork_server(self, env: dict[str, str], started: ForkServerProcess | None = None) -> ForkServer | None:
        """The session's fork server (``started``, else one started now), if machines with ``env`` can be forked from it."""
        key = start_key(env, os.getcwd())
        loop = asyncio.get_running_loop()
        forks = self._forks.get(loop)
        if forks is None:
            if started is not None and started.key != key:  # the environment or directory changed since it started
                started.discard()
                started = None
            if started is None:
                server_env = server_environment()
                if start_key(server_env, os.getcwd()) != key:
                    return None
                started = ForkServerProcess(server_env)  # on the loop's thread: it lasts as long (PR_SET_PDEATHSIG)
            forks = self._forks[loop] = ForkServer(started)
        return forks if forks.alive and forks.key == key else None


def _unix_listener(path: Path) -> socket.socket | None:
    """A listening Unix socket at ``path`` for the driver's own calls to a machine, or None where the path is too
    long for one: those calls then go over TCP, as everyone else's do.

    On one host a Unix socket costs less than TCP's loopback per call, on both sides
    (benchmarks/RESULTS.md); the calls on it are mutual TLS all the same, and its directory is
    the driver's alone.
    """
    if len(os.fsencode(path)) >= _UNIX_PATH_MAX:
        logger.debug("%s is too long for a Unix socket: the driver calls the machine over TCP", path)
        return None
    return sockets.listen_unix(str(path))


class MachineProcess(Protocol):
    """A machine's process, however it was started; ``returncode`` is None until it has ended, as Popen's."""

    pid: int
    returncode: int | None

    def send_signal(self, sig: int) -> None: ...

    async def wait(self) -> int: ...


class SpawnedProcess:
    """A machine started as a fresh process: the driver reaps it, killing its group first."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.pid = process.pid
        self.returncode: int | None = None
        self._process = process
        loop = asyncio.get_running_loop()
        self._exit: asyncio.Future[int] = loop.create_future()
        self._pidfd = os.pidfd_open(process.pid)
        loop.add_reader(self._pidfd, self._on_exit)

    def send_signal(self, sig: int) -> None:
        self._process.send_signal(sig)

    async def wait(self) -> int:
        """The exit status (negative: the signal), once its group is killed and it is reaped."""
        return await asyncio.shield(self._exit)

    def _on_exit(self) -> None:
        asyncio.get_running_loop().remove_reader(self._pidfd)
        os.close(self._pidfd)
        kill_group(self.pid)  # before reaping: the pid can't be reused while it is a zombie
        self.returncode = self._process.wait()
        self._exit.set_result(self.returncode)


class LocalProcess(Instance):
    """A machine's process: its address is chosen up front, its output forwarded with a prefix.

    The machine says on its report pipe when it serves; its process group (and cgroup) is
    killed whenever it ends, so nothing its services started outlives it.
    """

    def __init__(self, machine: Machine, process: MachineProcess, pipes: list[int],
                 cgroup: MemoryCgroup | None = None, *, address: str, janitor: Janitor, unix_path: str | None = None) -> None:
        """``pipes``: the read ends of the machine's report pipe, stdout and stderr (this object owns them)."""
        self._unix_path = unix_path
        self._machine = machine
        self._cgroup = cgroup
        self._janitor = janitor
        self.process = process
        self._addr = address
        self._forwarder = Forwarder(address.removeprefix("https://").rstrip("/"))
        self.output: collections.deque[tuple[float, str, str]] = self._forwarder.recent
        self._loop = asyncio.get_running_loop()
        self._address: asyncio.Future[str] = self._loop.create_future()
        self._exited: asyncio.Future[MachineStopped] = self._loop.create_future()
        self._cleaned: asyncio.Future[None] = self._loop.create_future()
        self._reported = bytearray()
        report, stdout, stderr = pipes
        self._report = _PipeReader(self._loop, report, self._on_report)
        self._outputs = [
            _PipeReader(self._loop, stdout, lambda data: self._forwarder.feed("stdout", data)),
            _PipeReader(self._loop, stderr, lambda data: self._forwarder.feed("stderr", data)),
        ]
        self._watching = self._loop.create_task(self._watch_exit())

    @property
    def prefix(self) -> str:
        """What each forwarded line of this machine starts with: its ``host:port``."""
        return self._forwarder.prefix

    def describe(self) -> dict[str, Any]:
        return {"pid": self.process.pid}

    def address_nowait(self) -> str:
        return self._addr

    def unix_socket(self) -> str | None:
        return self._unix_path

    def _on_report(self, data: bytes | None) -> None:
        """The machine reports its address once it serves (or the pipe ends with the process)."""
        if self._address.done() or data is None:
            return  # no address: the process is ending, and _on_exit will say how
        self._reported += data
        if b"\n" in self._reported:
            self._address.set_result(self._reported.decode().strip())

    async def _watch_exit(self) -> None:
        """Once the process is gone (its group killed, reaped): the last output, then how it ended."""
        code = await self.process.wait()
        if self._cgroup is not None:
            self._cgroup.kill()
        for reader in (self._report, *self._outputs):
            reader.drain_and_close()  # the last lines say why it ended
        self._forwarder.close()
        error = self._exit_error(code)  # while the cgroup, and its OOM count, exist
        self._exited.set_result(error)
        if not self._address.done():
            self._address.set_exception(type(error)(
                f"{error.args[0]} before serving; its output above says why", machine=""))
        await self._clean_up()

    async def _clean_up(self) -> None:
        """Removes the machine's cgroup once its killed processes have left it; the janitor may forget it."""
        try:
            if self._cgroup is not None:
                await asyncio.to_thread(self._cgroup.remove)
            self._janitor.forget(self.process.pid)
        finally:
            self._cleaned.set_result(None)

    async def address(self) -> str:
        return await asyncio.shield(self._address)

    async def wait_exit(self) -> BaseException:
        return await asyncio.shield(self._exited)

    def _exit_error(self, code: int) -> MachineStopped:
        """How the process ended: OutOfMemory when memory ran out, with the figures known."""
        pid, addr = self.process.pid, self._machine.addr
        last = self.output[-1][2] if self.output else ""
        if code == EXIT_OUT_OF_MEMORY or (code == 1 and last.startswith("MemoryError")):  # the latter: in Python's own start
            said = next((text for _, _, text in reversed(self.output) if "out of memory: " in text), last)
            detail = said.split("out of memory: ", 1)[-1].strip() or "MemoryError"
            return OutOfMemory(f"machine process {pid} ran out of memory: {detail}",
                               machine=addr)
        if code == -signal.SIGKILL:
            cgroup = self._cgroup
            if cgroup is not None and cgroup.oom_kills():
                peak = cgroup.peak()
                figures = f"limit {cgroup.limit >> 20} MiB" + (f", peak {peak >> 20} MiB" if peak else "")
                return OutOfMemory(f"machine process {pid} was killed by the kernel's OOM killer ({figures})",
                                   machine=addr)
            if (line := kernel_oom_kill(pid)) is not None:
                return OutOfMemory(f"machine process {pid} was killed by the kernel's OOM killer: {line}",
                                   machine=addr)
        return MachineStopped(f"machine process {pid} {describe_exit(code)}", machine=addr)

    async def kill(self) -> None:
        if not self._exited.done():
            try:
                self.process.send_signal(signal.SIGTERM)
                await asyncio.wait_for(asyncio.shield(self._exited), _KILL_GRACE)
            except TimeoutError:
                self.process.send_signal(signal.SIGKILL)
        await asyncio.shield(self._cleaned)


class _PipeReader:
    """Reads a pipe on the loop (no transports), handing each chunk to ``on_data`` and None at EOF; closes it then."""

    def __init__(self, loop: asyncio.AbstractEventLoop, fd: int, on_data: Callable[[bytes | None], None]) -> None:
        self._loop, self._fd, self._on_data = loop, fd, on_data
        self._open = True
        os.set_blocking(fd, False)
        loop.add_reader(fd, self._read)

    def _read(self) -> None:
        if self._read_once() is False:
            self.drain_and_close()

    def _read_once(self) -> bool | None:
        """Reads once: True if it got data, None if there is none now, False at EOF."""
        try:
            data = os.read(self._fd, 65536)
        except BlockingIOError:
            return None
        except OSError:
            return False
        if not data:
            return False
        self._on_data(data)
        return True

    def drain_and_close(self) -> None:
        """Reads what is left, reports EOF, and stops watching the fd."""
        if not self._open:
            return
        self._open = False
        self._loop.remove_reader(self._fd)
        while self._read_once():  # what the exited writer left (a grandchild may hold the pipe open)
            pass
        os.close(self._fd)
        self._on_data(None)
