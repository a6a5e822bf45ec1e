"""The local system: each machine is a new Python process on this host, mutual TLS on 127.0.0.1."""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import astuple
from typing import TYPE_CHECKING, Any

from ..errors import MachineStopped, OutOfMemory
from .memory import EXIT_OUT_OF_MEMORY, MemoryCgroup, kernel_oom_kill, parse_size
from .base import Instance, System

if TYPE_CHECKING:
    from ..machine import Machine
    from ..session import B

__all__ = ["Local"]

logger = logging.getLogger(__name__)

_KILL_GRACE = 2.0


class Local(System):
    """Machines as local processes running the driver's interpreter with its ``sys.path``."""

    name = "local"
    start_timeout = 60.0

    def __init__(self, *, keepalive_period: float = 2.0, keepalive_timeout: float = 60.0,
                 keepalive_rpc_timeout: float = 10.0, memory_limit: int | str | None = None, **options: Any) -> None:
        """``memory_limit`` (bytes, or like ``"512M"``) bounds each machine's memory: a cgroup where
        one can be made, else its address space; a machine that runs out stops with OutOfMemory.
        ``options``: ``start_timeout``, ``service_threads``, ``max_connections`` (see ``System``)."""
        super().__init__(keepalive_period=keepalive_period, keepalive_timeout=keepalive_timeout,
                         keepalive_rpc_timeout=keepalive_rpc_timeout, **options)
        self.memory_limit = parse_size(memory_limit) if memory_limit is not None else None

    def __repr__(self) -> str:
        return "Local()" if self.memory_limit is None else f"Local(memory_limit={self.memory_limit})"

    async def launch(self, session: B, machines: list[Machine], environ: dict[str, str]) -> list[Instance | BaseException]:
        return list(await asyncio.gather(*(self._launch_one(session, m, environ) for m in machines),
                                         return_exceptions=True))

    async def _launch_one(self, session: B, machine: Machine, environ: dict[str, str]) -> Instance:
        tls_dir = session.authority.issue(["127.0.0.1", "localhost"], common_name=machine.name).write(
            session.tmpdir / machine.name)
        read_fd, write_fd = os.pipe()
        spec = {
            "session": session.name, "tls_dir": str(tls_dir), "host": "127.0.0.1",
            "lease": self.initial_lease(), "maxprocs": 1, "parent": os.getpid(),
            "service_threads": self.service_threads, "keepalive": astuple(self.liveness),
            "system": self.name, "report_fd": write_fd, "path": sys.path, "argv": sys.argv,
        }
        cgroup = None
        if self.memory_limit is not None:
            cgroup = MemoryCgroup.create(f"{session.name}-{machine.name}", self.memory_limit)
            spec.update(memory_limit=self.memory_limit, cgroup_procs=cgroup.procs_file if cgroup else None)
        env = {**os.environ, **environ, "PYTHONUNBUFFERED": "1", "BIGMACHINE_WORKER": json.dumps(spec)}
        try:
            # Popen and raw fds, not asyncio subprocess transports: closing a uvloop loop
            # that had those sometimes hung for good in uv_run (seen in tests/test_local.py).
            process = subprocess.Popen(
                [sys.executable, "-m", "bigmachine.worker"], env=env, pass_fds=(write_fd,),
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            )
        except BaseException:
            os.close(read_fd)
            if cgroup is not None:
                cgroup.remove()
            raise
        finally:
            os.close(write_fd)
        return LocalProcess(machine, process, read_fd, cgroup)


class LocalProcess(Instance):
    """A machine's process: its address arrives on a pipe, its output is forwarded with a prefix."""

    def __init__(self, machine: Machine, process: subprocess.Popen[bytes], report_fd: int,
                 cgroup: MemoryCgroup | None = None) -> None:
        self._machine = machine
        self._cgroup = cgroup
        self.process = process
        self.prefix = machine.name
        self.output: collections.deque[tuple[float, str, str]] = collections.deque(maxlen=200)  # debug pages
        self._loop = asyncio.get_running_loop()
        self._address: asyncio.Future[str] = self._loop.create_future()
        self._exited: asyncio.Future[MachineStopped] = self._loop.create_future()
        self._report = _LineReader(self._loop, report_fd, self._on_report, owns_fd=True)
        assert process.stdout is not None and process.stderr is not None
        self._outputs = [
            _LineReader(self._loop, process.stdout.fileno(), lambda line: self._forward(line, "stdout")),
            _LineReader(self._loop, process.stderr.fileno(), lambda line: self._forward(line, "stderr")),
        ]
        self._pidfd = os.pidfd_open(process.pid)
        self._loop.add_reader(self._pidfd, self._on_exit)

    def describe(self) -> dict[str, Any]:
        return {"pid": self.process.pid}

    def _on_report(self, line: bytes | None) -> None:
        if self._address.done() or line is None:
            return  # no address: the process is ending, and _on_exit will say how
        addr = line.decode().strip()
        self.prefix = addr.removeprefix("https://").rstrip("/")
        self._address.set_result(addr)

    def _forward(self, line: bytes | None, name: str) -> None:
        """Copies one of the machine's output lines to ours (looked up per line: redirections apply)."""
        if line is None:
            return
        self.output.append((time.time(), name, line.decode(errors="replace").rstrip("\n")))
        out = getattr(sys, name)
        try:
            out.write(f"{self.prefix}: {line.decode(errors='replace')}")
            out.flush()
        except (OSError, ValueError):
            pass

    def _on_exit(self) -> None:
        self._loop.remove_reader(self._pidfd)
        os.close(self._pidfd)
        code = self.process.wait()
        for reader in (self._report, *self._outputs):
            reader.drain_and_close()  # the last lines say why it ended
        self.process.stdout.close()  # type: ignore[union-attr]
        self.process.stderr.close()  # type: ignore[union-attr]
        error = self._exit_error(code)  # while the cgroup, and its OOM count, exist
        self._exited.set_result(error)
        if not self._address.done():
            self._address.set_exception(type(error)(
                f"{error.args[0]} before serving; its output above says why", machine=""))
        if self._cgroup is not None:
            self._cgroup.remove()

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
        return MachineStopped(f"machine process {pid} {_describe(code)}", machine=addr)

    async def kill(self) -> None:
        if not self._exited.done():
            try:
                self.process.send_signal(signal.SIGTERM)
                await asyncio.wait_for(asyncio.shield(self._exited), _KILL_GRACE)
            except TimeoutError:
                self.process.kill()
        await asyncio.shield(self._exited)


class _LineReader:
    """Reads lines from a pipe on the loop (no transports), calling back per line and None at EOF."""

    def __init__(self, loop: asyncio.AbstractEventLoop, fd: int, on_line: Callable[[bytes | None], None],
                 *, owns_fd: bool = False) -> None:
        self._loop, self._fd, self._on_line, self._owns_fd = loop, fd, on_line, owns_fd
        self._buffer = b""
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
        *lines, self._buffer = (self._buffer + data).split(b"\n")
        for line in lines:
            self._on_line(line + b"\n")
        return True

    def drain_and_close(self) -> None:
        """Reads what is left, reports the last partial line and EOF, and stops watching the fd."""
        if not self._open:
            return
        self._open = False
        self._loop.remove_reader(self._fd)
        while self._read_once():  # what the exited writer left (a grandchild may hold the pipe open)
            pass
        if self._owns_fd:
            os.close(self._fd)
        if self._buffer:
            self._on_line(self._buffer + b"\n")
        self._on_line(None)


def _describe(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"
