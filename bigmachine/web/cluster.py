"""The web layer's one view of a session (``SessionView``), and the fan-out to every machine's supervisor.

No other web module reads the session (tests/test_architecture.py checks it): ``SessionView``
gives what the pages show of it: its name and system, its machines, each machine's summary
(public attributes, keepalive times, driver-side call counters ``m.rpc_stats``, what its
system instance tells: pid, recent output) and the driver's metrics. Supervisor calls hop
to the session's loop (``m.submit``) and are awaited here on the debug server's loop; a
machine that does not answer by its deadline is left to finish on its own and shows as slow.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..metrics import driver_exposition
from ..state import RUNNING, STARTING, STOPPED

if TYPE_CHECKING:
    from ..machine import Machine
    from ..session import B

__all__ = ["Reply", "SessionView", "ask", "fan_out", "key_of"]

_SLACK = 1.0  # past a machine's own call deadline, how long before the page stops waiting anyway


@dataclass
class Reply:
    """One machine's answer: its value, or why there is none."""

    value: Any = None
    error: str | None = None
    elapsed: float = 0.0
    slow: bool = False  # no answer within the deadline

    @property
    def ok(self) -> bool:
        return self.error is None


async def ask(machine: Machine, method: str, *args: Any, timeout: float) -> Reply:
    """Calls a supervisor method of ``machine``; never raises, never waits past ``timeout`` (+ a little)."""
    if machine.state != RUNNING:
        return Reply(error=_not_running(machine))
    begun = time.monotonic()
    try:
        future = asyncio.wrap_future(machine.submit(method, *args, timeout=timeout))
        future.add_done_callback(_consume)  # a late answer, once nobody waits, is dropped quietly
        # Shielded: cancelling would cancel the session loop's future under its own feet.
        value = await asyncio.wait_for(asyncio.shield(future), timeout + _SLACK)
    except TimeoutError:
        return Reply(error=f"no reply within {timeout:g} s", elapsed=time.monotonic() - begun, slow=True)
    except Exception as exc:
        if machine.state == STOPPED:
            return Reply(error=_not_running(machine), elapsed=time.monotonic() - begun)
        return Reply(error=f"{type(exc).__name__}: {exc}", elapsed=time.monotonic() - begun)
    return Reply(value, elapsed=time.monotonic() - begun)


async def fan_out(machines: Sequence[Machine], method: str, *args: Any, timeout: float) -> list[Reply]:
    """``ask`` every machine at once; replies in the machines' order."""
    return list(await asyncio.gather(*(ask(m, method, *args, timeout=timeout) for m in machines)))


def _consume(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def _not_running(machine: Machine) -> str:
    if machine.state == STOPPED:
        return f"stopped: {machine.err}" if machine.err is not None else "stopped"
    if machine.state == STARTING:
        return "starting"
    return machine.state.name.lower()


def key_of(machine: Machine) -> str:
    """How URLs name a machine: ``host:port`` once it has an address, else its name."""
    return machine.addr.removeprefix("https://").rstrip("/") or machine.name


class SessionView:
    """What the debug pages read of a session, typed and read-only; plus the one thing the web
    layer tells a session: where its debug server serves and how to stop it (``host``)."""

    def __init__(self, session: B) -> None:
        self._session = session

    @property
    def name(self) -> str:
        return self._session.name

    @property
    def system(self) -> str:
        """The session's system, as the pages name it (``Local()``, ``EC2(...)``)."""
        return repr(self._session.system)

    def cost(self) -> dict[str, Any] | None:
        """What the session has cost so far (``System.cost``); None if free."""
        return self._session.system.cost()

    def machines(self) -> list[Machine]:
        """Every machine the session started or dialled, in any state."""
        return self._session.machines()

    def exposition(self) -> bytes:
        """The driver's Prometheus exposition (``metrics.driver_exposition``)."""
        return driver_exposition(self._session)

    def host(self, url: str, stop: Callable[[], None]) -> None:
        """Publishes the debug server's ``url`` as ``b.debug_url`` and has ``b.shutdown()`` call ``stop``."""
        self._session.on_shutdown(stop)
        self._session.debug_url = url

    def find(self, key: str) -> Machine | None:
        """The machine named by ``key``: an address (with or without ``https://``), ``host:port`` or name."""
        key = key.strip().removeprefix("https://").rstrip("/")
        for machine in self.machines():
            if key and key in (key_of(machine), machine.name):
                return machine
        return None

    def recent_output(self, machine: Machine, limit: int = 100) -> list[tuple[float, str, str]] | None:
        """The machine's last output lines ``(time, stream, line)`` if its system keeps them, else None."""
        instance = self._session.instance(machine)
        lines = instance.output if instance is not None else None
        return None if lines is None else list(lines)[-limit:]

    def summary(self, machine: Machine, now: float | None = None) -> dict[str, Any]:
        """What the driver knows of a machine without asking it (JSON-ready but ``state``, a ``State``)."""
        now = time.time() if now is None else now
        info = dict(machine.info)
        started = float(info.get("started") or machine.started)
        end = machine.stopped if machine.state == STOPPED and machine.stopped else now
        times = machine.keepalive_reply_times()  # newest first
        err = machine.err
        instance = self._session.instance(machine)
        next_keepalive = machine.next_keepalive()
        return {
            "addr": machine.addr,
            "key": key_of(machine),
            "name": machine.name,
            "state": machine.state,
            "owned": machine.owned,
            "hostname": machine.hostname,
            "maxprocs": machine.maxprocs,
            "info": info,
            "instance": instance.describe() if instance is not None else {},
            "started": started,
            "stopped": machine.stopped,
            "uptime": max(0.0, end - started),
            "error": None if err is None else str(err),
            "error_type": None if err is None else type(err).__name__,
            "keepalive": {
                "latest": times[0] if times else None,
                "history": list(reversed(times)),  # oldest first, for charts
                "next_in": max(0.0, next_keepalive - now) if next_keepalive and machine.state == RUNNING else None,
            },
            "calls": machine.rpc_stats.snapshot(),
        }
