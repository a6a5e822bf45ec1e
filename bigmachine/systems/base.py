"""What a system implements: launching machines, and knowing when they end."""

from __future__ import annotations

import abc
import collections
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..machine import Machine
    from ..session import B

__all__ = ["Instance", "System"]


class Instance(abc.ABC):
    """One launched machine as its system sees it: a process, a thread, a cloud instance."""

    # The machine's recent output lines, (time, "stdout"/"stderr", line), for the debug pages;
    # None where the system keeps none (its machines print into the driver's own streams).
    output: collections.deque[tuple[float, str, str]] | None = None

    def address_nowait(self) -> str | None:
        """The machine's ``https://host:port/`` if known before it serves (the system chose it), else None."""
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
    """Where machines run. Keepalive timings are in seconds."""

    name = "system"
    start_timeout = 120.0  # from launch to RUNNING, services' init included

    def __init__(self, *, keepalive_period: float, keepalive_timeout: float, keepalive_rpc_timeout: float,
                 start_timeout: float | None = None) -> None:
        if not 0 < keepalive_period < keepalive_timeout:
            raise ValueError(
                f"keepalive_period ({keepalive_period}) must be > 0 and below keepalive_timeout ({keepalive_timeout})"
            )
        self.keepalive_period = keepalive_period
        self.keepalive_timeout = keepalive_timeout
        self.keepalive_rpc_timeout = keepalive_rpc_timeout
        if start_timeout is not None:
            if start_timeout <= 0:
                raise ValueError(f"start_timeout must be > 0 seconds, not {start_timeout}")
            self.start_timeout = start_timeout

    def init(self, session: B) -> None:
        """Called once when a driver session starts on this system."""

    @abc.abstractmethod
    async def launch(self, session: B, machines: list[Machine], environ: dict[str, str]) -> list[Instance | BaseException]:
        """Launches one instance per machine, all at once; a failed launch is its error."""

    async def shutdown(self) -> None:
        """Frees what the system holds once every instance has been killed."""

    def maxprocs(self) -> int:
        """Processors each machine can use."""
        return 1

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
