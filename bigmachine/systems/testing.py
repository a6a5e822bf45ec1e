"""The testing system: in-process machines with the real supervisor, RPC and TLS, no new process.

Each machine runs its own event loop in a thread. ``t.kill(m)`` ends one as a crashed
process would (connections reset, nothing answers), so failure paths test in
milliseconds. Keepalive timings are configurable, for lease tests.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import astuple
from typing import TYPE_CHECKING, Any

from ..errors import MachineStopped, OutOfMemory
from ..runtime.spec import EXIT_OUT_OF_MEMORY, LaunchSpec
from .base import Instance, System

if TYPE_CHECKING:
    from ..machine import Machine
    from ..session import B

__all__ = ["Testing"]

logger = logging.getLogger(__name__)


class Testing(System):
    """In-process machines for tests."""

    __test__ = False  # not a pytest test class, despite the name
    name = "testing"
    start_timeout = 30.0

    def __init__(self, *, keepalive_period: float = 1.0, keepalive_timeout: float = 5.0,
                 keepalive_rpc_timeout: float = 2.0, **options: Any) -> None:
        """``options``: ``start_timeout``, ``service_threads``, ``max_connections`` (see ``System``)."""
        super().__init__(keepalive_period=keepalive_period, keepalive_timeout=keepalive_timeout,
                         keepalive_rpc_timeout=keepalive_rpc_timeout, **options)
        self._instances: dict[Machine, TestInstance] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return "Testing()"

    async def launch(self, session: B, machines: list[Machine], environ: dict[str, str]) -> list[Instance | BaseException]:
        launched: list[Instance | BaseException] = []
        for machine in machines:
            tls_dir = session.authority.issue(["127.0.0.1", "localhost"], common_name=machine.name).write(
                session.tmpdir / machine.name)
            instance = TestInstance(self._config(session.name, str(tls_dir)))
            with self._lock:
                self._instances[machine] = instance
            launched.append(instance)
        return launched

    def _config(self, session: str, tls_dir: str) -> LaunchSpec:
        return LaunchSpec(session=session, tls_dir=tls_dir, lease=self.initial_lease(), system=self.name,
                          service_threads=self.service_threads, dump_stacks=False,  # faulthandler is process-wide
                          keepalive=astuple(self.liveness))

    def kill(self, machine: Machine) -> None:
        """Makes ``machine`` die as a crashed process would."""
        self._instance(machine).crash("killed by Testing.kill")

    def exited(self, machine: Machine) -> bool:
        """Whether the machine's supervisor has exited (killed, or its lease lapsed)."""
        return self._instance(machine).exited.is_set()

    def n(self) -> int:
        """How many machines are alive now."""
        with self._lock:
            return sum(1 for i in self._instances.values() if not i.exited.is_set())

    def _instance(self, machine: Machine) -> TestInstance:
        with self._lock:
            try:
                return self._instances[machine]
            except KeyError:
                raise ValueError(f"{machine!r} was not started by this Testing system") from None


class TestInstance(Instance):
    """A machine served by a thread of this process."""

    __test__ = False

    def __init__(self, config: LaunchSpec) -> None:
        from ..runtime.server import MachineServer  # lazily: the driver never loads the machine side otherwise

        self.exited = threading.Event()
        self.reason = ""
        self.code = 0
        self._driver_loop = asyncio.get_running_loop()
        self._addr: asyncio.Future[str] = self._driver_loop.create_future()
        self._exit: asyncio.Future[str] = self._driver_loop.create_future()
        self.server = MachineServer(config, on_exit=self.crash)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, name=f"bigmachine-testing-{id(self):x}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import uvloop

        loop = self._loop = uvloop.new_event_loop()
        try:
            loop.run_until_complete(self._serve())
            loop.run_until_complete(_cancel_all())  # calls cut off by a kill, the lease watchdog
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(asyncio.sleep(0.05))  # let connections cut mid-handshake finish closing
        finally:
            try:
                loop.close()
            except OSError as exc:  # a handle still busy: uvloop refuses; the machine is gone all the same
                logger.warning("in-process machine %s: its loop did not close cleanly: %s", self.server.addr, exc)
            self.exited.set()
            self._tell_driver(self.reason or "stopped")

    async def _serve(self) -> None:
        try:
            addr = await self.server.start()
        except BaseException as exc:
            self._driver_loop.call_soon_threadsafe(_fail, self._addr, exc)
            return
        self._driver_loop.call_soon_threadsafe(_set, self._addr, addr)
        await self.server.serve_until_exit()

    def crash(self, reason: str, code: int = 0) -> None:
        """Ends the machine abruptly (any thread); ``code`` as a process's exit status would say how."""
        if not self.reason:
            self.reason, self.code = reason, code
        self.exited.set()  # a crashed process is gone at once; the thread winds down behind it
        self._tell_driver(reason)  # and is seen gone at once: pending calls fail now
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(self.server.abort)
            except RuntimeError:
                pass  # the loop closed meanwhile: already ended

    def _tell_driver(self, reason: str) -> None:
        try:
            self._driver_loop.call_soon_threadsafe(_set, self._exit, reason)
        except RuntimeError:
            pass  # the driver's session is closed: nobody is waiting

    async def address(self) -> str:
        return await asyncio.shield(self._addr)

    async def wait_exit(self) -> BaseException:
        reason = await asyncio.shield(self._exit)
        kind = OutOfMemory if self.code == EXIT_OUT_OF_MEMORY else MachineStopped
        return kind(f"machine {reason}", machine=self.server.addr)

    async def kill(self) -> None:
        self.crash("stopped by the driver")
        await asyncio.shield(self._exit)
        await asyncio.to_thread(self._thread.join)

    def describe(self) -> dict[str, Any]:
        return {"thread": self._thread.name}


async def _cancel_all() -> None:
    tasks = asyncio.all_tasks() - {asyncio.current_task()}
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _set(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():
        future.set_result(value)


def _fail(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
