"""The local system: each machine is a new Python process on this host, mutual TLS on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
from typing import TYPE_CHECKING, Any

from ..errors import MachineStopped
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

    def __init__(self, *, keepalive_period: float = 2.0, keepalive_timeout: float = 10.0,
                 keepalive_rpc_timeout: float = 5.0) -> None:
        super().__init__(keepalive_period=keepalive_period, keepalive_timeout=keepalive_timeout,
                         keepalive_rpc_timeout=keepalive_rpc_timeout)

    def __repr__(self) -> str:
        return "Local()"

    async def launch(self, session: B, machines: list[Machine], environ: dict[str, str]) -> list[Instance | BaseException]:
        return list(await asyncio.gather(*(self._launch_one(session, m, environ) for m in machines),
                                         return_exceptions=True))

    async def _launch_one(self, session: B, machine: Machine, environ: dict[str, str]) -> Instance:
        tls_dir = session.authority.issue(["127.0.0.1", "localhost"], common_name=machine.name).write(
            session.tmpdir / machine.name)
        read_fd, write_fd = os.pipe()
        spec = {
            "session": session.name, "tls_dir": str(tls_dir), "host": "127.0.0.1",
            "lease": self.start_timeout + self.keepalive_timeout, "maxprocs": 1, "parent": os.getpid(),
            "system": self.name, "report_fd": write_fd, "path": sys.path, "argv": sys.argv,
        }
        env = {**os.environ, **environ, "PYTHONUNBUFFERED": "1", "BIGMACHINE_WORKER": json.dumps(spec)}
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bigmachine.worker", env=env, pass_fds=(write_fd,),
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        return LocalProcess(machine, process, read_fd)


class LocalProcess(Instance):
    """A machine's process: its address arrives on a pipe, its output is forwarded with a prefix."""

    def __init__(self, machine: Machine, process: asyncio.subprocess.Process, report_fd: int) -> None:
        self._machine = machine
        self.process = process
        self.prefix = machine.name
        loop = asyncio.get_running_loop()
        self._address = loop.create_task(self._read_address(report_fd))
        self._forwarders = [
            loop.create_task(self._forward(process.stdout, sys.stdout)),
            loop.create_task(self._forward(process.stderr, sys.stderr)),
        ]
        self._exit: asyncio.Task[int] = loop.create_task(process.wait())

    def describe(self) -> dict[str, Any]:
        return {"pid": self.process.pid}

    async def _read_address(self, fd: int) -> str:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(fd, "rb"))
        try:
            line = await reader.readline()
        finally:
            transport.close()
        if not line:
            code = await self._exit
            raise MachineStopped(f"machine process {self.process.pid} exited ({_describe(code)}) before serving; "
                                 "its output above says why", machine="")
        addr = line.decode().strip()
        self.prefix = addr.removeprefix("https://").rstrip("/")
        return addr

    async def _forward(self, stream: asyncio.StreamReader | None, out: Any) -> None:
        assert stream is not None
        while line := await stream.readline():
            try:
                out.write(f"{self.prefix}: {line.decode(errors='replace')}")
                out.flush()
            except (OSError, ValueError):
                pass

    async def address(self) -> str:
        return await asyncio.shield(self._address)

    async def wait_exit(self) -> BaseException:
        code = await asyncio.shield(self._exit)
        await asyncio.gather(*self._forwarders, return_exceptions=True)  # the last lines say why
        return MachineStopped(f"machine process {self.process.pid} {_describe(code)}", machine=self._machine.addr)

    async def kill(self) -> None:
        if self.process.returncode is None:
            try:
                self.process.send_signal(signal.SIGTERM)
                await asyncio.wait_for(asyncio.shield(self._exit), _KILL_GRACE)
            except (TimeoutError, ProcessLookupError):
                if self.process.returncode is None:
                    self.process.kill()
        await asyncio.shield(self._exit)
        if not self._address.done():
            self._address.cancel()
        await asyncio.gather(self._address, *self._forwarders, return_exceptions=True)


def _describe(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"
