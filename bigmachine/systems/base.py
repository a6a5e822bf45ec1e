"""What a system implements: launching machines, and knowing when they end."""

from __future__ import annotations

import abc
import collections
from typing import TYPE_CHECKING, Any

from ..errors import Error
from ..liveness import Liveness
from ..rpc.limits import DEFAULT_MAX_CONNECTIONS, DEFAULT_SERVICE_THREADS

if TYPE_CHECKING:
    from ..machine import Machine
    from ..session import B

__all__ = ["Instance", "RemoteSystem", "System"]


class Instance(abc.ABC):
    """One launched machine as its system sees it: a process, a thread, a cloud instance."""

    # The machine's recent output lines, (time, "stdout"/"stderr", line), for the debug pages;
    # None where the system keeps none (its machines print into the driver's own streams).
    output: collections.deque[tuple[float, str, str]] | None = None

    def address_nowait(self) -> str | None:
        """The machine's ``https://host:port/`` if known before it serves (the system chose it), else None."""
        return None

    def unix_socket(self) -> str | None:
        """A Unix socket on the driver's host where the machine serves the same calls, else None. The driver's
        own connections go there, past TCP; everyone else uses the address."""
        return None

    @abc.abstractmethod
    async def address(self) -> str:
        """The machine's ``https://host:port/`` once it serves."""

    @abc.abstractmethod
    async def wait_exit(self) -> BaseException:
        """Returns, once the machine has ended, an error saying how it ended."""

    @abc.abstractmethod
    async def kill(self) -> None:
        """Ends the machine and waits until it has ended; idempotent."""

    def describe(self) -> dict[str, Any]:
        """What the status pages show about this instance (pid, instance id, ...)."""
        return {}


class System(abc.ABC):
    """Where machines run. Keepalive timings are in seconds (see ``bigmachine.liveness``)."""

    name = "system"
    start_timeout = 120.0  # from launch to RUNNING, services' init included

    def __init__(self, *, keepalive_period: float, keepalive_timeout: float, keepalive_rpc_timeout: float,
                 start_timeout: float | None = None, service_threads: int = DEFAULT_SERVICE_THREADS,
                 max_connections: int = DEFAULT_MAX_CONNECTIONS) -> None:
        """``service_threads`` bounds the threads running a machine's plain service methods (calls past
        it queue on the machine); ``max_connections`` the connections from a session to one machine
        (calls past it wait their turn in the caller, within their own deadline)."""
        self.liveness = Liveness(keepalive_period, keepalive_timeout, keepalive_rpc_timeout)
        if start_timeout is not None:
            if start_timeout <= 0:
                raise ValueError(f"start_timeout must be > 0 seconds, not {start_timeout}")
            self.start_timeout = start_timeout
        self.service_threads = _positive_int("service_threads", service_threads)
        self.max_connections = _positive_int("max_connections", max_connections)

    @property
    def keepalive_period(self) -> float:
        return self.liveness.period

    @property
    def keepalive_timeout(self) -> float:
        return self.liveness.timeout

    @property
    def keepalive_rpc_timeout(self) -> float:
        return self.liveness.rpc_timeout

    def initial_lease(self) -> float:
        """The lease a starting machine gets before its first keepalive: time to start, then a timeout."""
        return self.start_timeout + self.liveness.timeout

    def prepare(self) -> None:
        """Called by ``bigmachine.start`` before the session's modules are imported, for work that may
        overlap that import (``Local`` starts its fork server); nothing by default. No asyncio here."""

    def init(self, session: B) -> None:
        """Called once when a driver session starts on this system."""

    @abc.abstractmethod
    async def launch(self, session: B, machines: list[Machine], environ: dict[str, str]) -> list[Instance | BaseException]:
        """Launches one instance per machine, all at once; a failed launch is its error."""

    async def shutdown(self) -> None:
        """Frees what the system holds once every instance has been killed."""

    def cost(self) -> dict[str, Any] | None:
        """What the session has cost so far, for the status page (EC2: dollars; Slurm: core-hours); None if free."""
        return None

    def maxprocs(self) -> int:
        """Processors each machine can use."""
        return 1

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class RemoteSystem(System):
    """The driver's system as a session inside a machine sees it: known by name, it starts no machines.

    ``b.system`` is a ``System`` on both sides; ``b.system.name`` (also its ``str`` and ``repr``) is
    the system's name (``local``, ``ec2``, ...), and its ``liveness`` the driver's keepalive timings.
    """

    def __init__(self, name: str, liveness: Liveness) -> None:
        super().__init__(keepalive_period=liveness.period, keepalive_timeout=liveness.timeout,
                         keepalive_rpc_timeout=liveness.rpc_timeout)
        self.name = name

    async def launch(self, session: B, machines: list[Machine], environ: dict[str, str]) -> list[Instance | BaseException]:
        raise Error(f"machines cannot start machines on the driver's {self.name} system: "
                                  "start them from the driver (b.start), then b.dial their addresses here")

    def __repr__(self) -> str:
        return self.name


def _positive_int(name: str, value: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a whole number >= 1, not {value!r}")
    return value
