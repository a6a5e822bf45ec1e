"""The supervisor: the service every machine runs, beside the user's services.

It installs services, holds the machine's lease (the machine exits when the driver
stops renewing it) and reports on the machine's health. It is the machine's end of the
control plane: ``keepalive``, ``ping`` and ``info`` run on the machine's loop, and its
other plain methods in the threads of the connections that call them, never waiting
for a service slot, so no number of service calls ever delays them (docs/reliability.md,
"Busy is not dead").
"""

from __future__ import annotations

import asyncio
import faulthandler
import logging
import os
import socket
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .. import expvar, functions
from ..errors import SerializationError
from ..rpc import wire
from ..rpc.server import Registry
from ..rpc.slots import ServiceSlots

if TYPE_CHECKING:
    from ..session import B

__all__ = ["Supervisor"]

logger = logging.getLogger(__name__)


class Supervisor:
    """Built-in service ``Supervisor``; its methods are called by the driver."""

    def __init__(self, session: B, registry: Registry, *, exit: Callable[[str], None],
                 lease: float, maxprocs: int, parent: int | None = None,
                 service_slots: ServiceSlots | None = None, dump_stacks: bool = False) -> None:
        """``dump_stacks``: have faulthandler write every thread's stack to stderr when the loop is held
        past half a lease (a process of its own only: faulthandler is process-wide)."""
        self._session = session
        self._registry = registry
        self._exit = exit
        self._lease = lease
        self._renewed = time.monotonic()
        self._lease_end = self._renewed + lease
        self._service_slots = service_slots
        self._dump_stacks = dump_stacks
        self._parent = parent
        self._maxprocs = maxprocs
        self._started = time.time()
        self._watchdog: asyncio.Task[None] | None = None

    def start_watchdog(self) -> None:
        """Starts the task that ends the machine when its lease lapses or its driver dies."""
        self._watchdog = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(0.25)
            now = time.monotonic()
            if now > self._lease_end:
                self._exit(f"its lease lapsed: no keepalive received for {now - self._renewed:.1f} s "
                           f"(lease {self._lease:g} s)")
                return
            if self._parent is not None and os.getppid() != self._parent:
                self._exit(f"its driver (pid {self._parent}) is gone")
                return

    async def register(self, services: dict[str, bytes], lease: float) -> dict[str, Any]:
        """Installs the services (pickled one by one), runs their ``init(b)``, starts the lease; returns ``info()``."""
        installed = []
        for name, blob in services.items():
            try:
                service = wire.loads(blob)
            except Exception as exc:
                raise SerializationError(f"service {name!r} cannot be unpickled on the machine: {exc!r}") from exc
            self._registry.add(name, service)
            installed.append(service)
        for service in installed:
            init = getattr(service, "init", None)
            if not callable(init):
                continue
            if asyncio.iscoroutinefunction(init):
                await init(self._session)
            else:
                await asyncio.get_running_loop().run_in_executor(None, init, self._session)
        self._renew(lease)
        return self._info()

    async def keepalive(self, lease: float) -> float:
        """Extends the lease by ``lease`` seconds; returns the machine's clock (on the loop: never queued)."""
        self._renew(lease)
        return time.time()

    def _renew(self, lease: float) -> None:
        self._lease = lease
        self._renewed = time.monotonic()
        self._lease_end = self._renewed + lease
        if self._dump_stacks:  # re-armed by each renewal: fires only if the loop is held this long
            faulthandler.dump_traceback_later(lease / 2, exit=False)

    async def ping(self) -> float:
        """The machine's clock: how a dialled machine is watched (on the loop: never queued)."""
        return time.time()

    async def info(self) -> dict[str, Any]:
        """Who this machine is (on the loop: never queued)."""
        return self._info()

    def _info(self) -> dict[str, Any]:
        """Who this machine is."""
        return {
            "hostname": socket.gethostname(),
            "pid": os.getpid(),
            "maxprocs": self._maxprocs,
            "python": sys.version.split()[0],
            "started": self._started,
            "services": sorted(n for n in self._registry.services if n not in ("Supervisor", functions.SERVICE)),
        }

    def mem_info(self) -> dict[str, Any]:
        """Memory of the machine's process and host (bytes)."""
        import psutil

        vm = psutil.virtual_memory()
        rss = psutil.Process().memory_info()
        return {"process": {"rss": rss.rss, "vms": rss.vms},
                "host": {"total": vm.total, "available": vm.available, "used": vm.used, "percent": vm.percent}}

    def load_info(self) -> dict[str, Any]:
        """CPU load of the host and the machine's process."""
        import psutil

        one, five, fifteen = os.getloadavg()
        times = psutil.Process().cpu_times()
        return {"host": {"load1": one, "load5": five, "load15": fifteen, "cpus": psutil.cpu_count()},
                "process": {"user": times.user, "system": times.system, "threads": psutil.Process().num_threads()}}

    def disk_info(self) -> dict[str, Any]:
        """Disk usage of the machine's working directory (bytes)."""
        import psutil

        usage = psutil.disk_usage(os.getcwd())
        return {"path": os.getcwd(), "total": usage.total, "used": usage.used, "free": usage.free,
                "percent": usage.percent}

    def expvars(self) -> dict[str, Any]:
        """This process's published variables (once the loop answers: ``_loop_answers``)."""
        self._loop_answers()
        return expvar.snapshot()

    def _loop_answers(self) -> None:
        """Waits until the machine's loop runs a no-op. The views of the machine's health (status, metrics,
        variables) answer only while the loop does: a machine whose loop is held misses its keepalives and
        is not healthy, whatever its connections' threads still answer."""
        future = asyncio.run_coroutine_threadsafe(asyncio.sleep(0), self._session.loop)
        try:
            future.result(timeout=self._lease)
        except TimeoutError:
            future.cancel()
            raise TimeoutError(f"the machine's event loop has not run for {self._lease:g} s") from None

    async def exit(self, reason: str = "asked to by the driver") -> None:
        """Ends the machine, shortly after replying (async: it schedules on the machine's loop)."""
        asyncio.get_running_loop().call_later(0.05, self._exit, reason)

    # --- observability (debug server) ---
    # Read by the driver's debug server (bigmachine/web). Heavy imports stay inside the
    # methods: a machine that is never observed never loads the profilers or prometheus_client.

    def status(self) -> dict[str, Any]:
        """Everything the status page shows of this machine, in one call.

        ``cpu_seconds`` (cumulative) lets the driver's resource history compute CPU use
        over its own intervals, whoever else asked in between.
        """
        import psutil

        self._loop_answers()
        process = psutil.Process()
        times = process.cpu_times()
        used = times.user + times.system
        return {"load": self.load_info(), "cpu_percent": self._cpu_percent(used, process.create_time()),
                "cpu_seconds": used, "mem": self.mem_info(), "disk": self.disk_info(), "rpc": self.stats(),
                "time": time.time(), "calls": self._calls()}

    def _calls(self) -> dict[str, int]:
        """Service calls queued for a thread and running now, and the thread limit."""
        slots = self._service_slots
        return slots.load() if slots is not None else {"queued": 0, "running": 0, "threads": 0}

    def _cpu_percent(self, used: float, created: float) -> float:
        """CPU use of this process (100 = one core) since the previous status, or since it started."""
        now = time.monotonic()
        last: tuple[float, float] | None = getattr(self, "_last_cpu", None)
        self._last_cpu = (now, used)
        if last is None:
            span, spent = time.time() - created, used
        else:
            span, spent = now - last[0], used - last[1]
        return 100.0 * spent / span if span > 0 else 0.0

    def stats(self) -> dict[str, dict[str, Any]]:
        """RPC calls served here per method: calls, errors, mean/p50/p99 latency (s), bytes."""
        return self._registry.stats.snapshot()

    def metrics(self) -> bytes:
        """Prometheus text exposition of this machine's registry and served calls (once the loop answers)."""
        from ..metrics import machine_exposition

        self._loop_answers()
        return machine_exposition(self._registry.stats)

    async def profile_cpu(self, seconds: float, interval: float = 0.005, mode: str = "cpu",
                          threads: str = "service") -> Any:
        """A ``profile.CpuSamples`` of this machine's ``threads`` over ``seconds``; one profile at a time."""
        from ..profile import ProfilerBusy, profile_cpu

        if getattr(self, "_profiling", False):
            raise ProfilerBusy("a CPU profile is already being taken on this machine; ask again when it ends")
        self._profiling = True
        try:
            return await profile_cpu(seconds, interval, mode=mode, threads=threads)
        finally:
            self._profiling = False

    def heap(self, frames: int | None = None, limit: int = 1000, rate: int | None = None) -> Any:
        """A ``profile.HeapSnapshot``; tracing starts on the first request and stops 60 s after the last."""
        from ..profile import heap_snapshot

        return heap_snapshot(frames, rate=rate, limit=limit)

    async def threads(self) -> list[dict[str, Any]]:
        """Every thread's stack and the loop's pending tasks."""
        from ..profile import athread_dump

        return await athread_dump()

    async def profile_counts(self) -> dict[str, Any]:
        """Counts for the pprof index: threads, tasks, traced heap (None when not tracing)."""
        import threading

        from ..profile.heap import traced_bytes

        heap = await asyncio.to_thread(traced_bytes)  # groups every sample: off the loop
        return {"threads": threading.active_count(), "tasks": len(asyncio.all_tasks()), "heap_bytes": heap}
