"""The hosts system: machines on hosts you already have, each running a bootstrap agent.

    authority = BootstrapAuthority(lifetime=3600)
    # on each host, with the JSON of authority.credentials("10.0.0.5:9443") in creds.json:
    #   python -m bigmachine.systems.agent --listen 10.0.0.5:9443 --credentials creds.json
    with bigmachine.start(Hosts(["10.0.0.5:9443", ...], authority=authority)) as b:
        ...

Each agent hosts up to ``machines_per_agent`` machines (by default its host's CPU count,
asked of the agent), each on its own port above the agent's: one Python process per
core, since a machine's plain methods share one interpreter lock. ``b.start`` fills
the agents in order, so machines on one host are next to each other in
``b.machines()``. An agent exits once all its machines have ended. The EC2 system
bootstraps its instances the same way.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..errors import Error
from .base import Instance, System
from .bootstrap import AgentInstance, BootstrapAuthority, probe
from .memory import parse_size
from .shipping import collect

if TYPE_CHECKING:
    from ..machine import Machine
    from ..session import B

__all__ = ["HostInstance", "Hosts"]

logger = logging.getLogger(__name__)


class Hosts(System):
    """Machines on hosts running ``python -m bigmachine.systems.agent``, several machines per agent."""

    name = "hosts"

    def __init__(self, agents: Sequence[str], *, authority: BootstrapAuthority, machines_per_agent: int | None = None,
                 memory_limit: int | float | str | None = None, requirements: Sequence[str] | None = None,
                 keepalive_period: float = 2.0, keepalive_timeout: float = 60.0, keepalive_rpc_timeout: float = 10.0,
                 **options: Any) -> None:
        """``memory_limit`` bounds each machine (default: its host's memory divided by the agent's machines);
        ``options``: ``start_timeout``, ``service_threads``, ``max_connections`` (see ``System``)."""
        super().__init__(keepalive_period=keepalive_period, keepalive_timeout=keepalive_timeout,
                         keepalive_rpc_timeout=keepalive_rpc_timeout, **options)
        if machines_per_agent is not None and (not isinstance(machines_per_agent, int) or machines_per_agent < 1):
            raise ValueError(f"machines_per_agent must be a whole number >= 1, not {machines_per_agent!r}")
        self.agents = [_check(a) for a in agents]
        self.authority = authority
        self.machines_per_agent = machines_per_agent
        self.memory_limit = parse_size(memory_limit) if memory_limit is not None else None
        self.requirements = None if requirements is None else list(requirements)
        self._placed: dict[str, int] = {}  # agent -> machines placed on it
        self._capacity: dict[str, int] = {}  # agent -> machines it may host

    def __repr__(self) -> str:
        return f"Hosts({len(self.agents)} agents)"

    async def launch(self, session: B, machines: list[Machine], environ: dict[str, str]) -> list[Instance | BaseException]:
        shipment = await asyncio.to_thread(collect, self.requirements)
        launched: list[Instance | BaseException] = []
        for machine in machines:
            agent = await self._place()
            if agent is None:
                launched.append(Error(f"no agent left for {machine.name}: all {len(self.agents)} agents of {self!r} "
                                      f"host as many machines as they may ({self._capacity}); pass more agents or "
                                      "a larger machines_per_agent"))
                continue
            launched.append(HostInstance(session, machine, self.authority, agent, shipment, environ,
                                         system=self.name, ping=self.keepalive_period, share=self._capacity[agent],
                                         memory_limit=self.memory_limit))
        return launched

    async def _place(self) -> str | None:
        """The first agent with room for one more machine (asking agents their CPU count as needed)."""
        for agent in self.agents:
            if agent not in self._capacity:
                self._capacity[agent] = self.machines_per_agent or await self._cpus(agent)
            if self._placed.get(agent, 0) < self._capacity[agent]:
                self._placed[agent] = self._placed.get(agent, 0) + 1
                return agent
        return None

    async def _cpus(self, agent: str) -> int:
        host, port = _split(agent)
        try:
            return int((await probe(self.authority, host, port)).get("cpus") or 1)
        except (OSError, TimeoutError, ValueError, EOFError) as exc:
            logger.warning("the agent at %s did not say its CPU count (%s: %s); placing one machine there",
                           agent, type(exc).__name__, exc)
            return 1


class HostInstance(AgentInstance):
    """A machine on a host whose agent's address is known in advance."""

    def __init__(self, *args: Any, share: int, memory_limit: int | None, **kwargs: Any) -> None:
        self._share, self._limit = share, memory_limit
        super().__init__(*args, **kwargs)

    async def _locate(self) -> tuple[str, int]:
        return _split(self.agent)

    def _maxprocs(self, hello: dict[str, Any]) -> int:
        """The host's CPUs shared among the agent's machines."""
        return max(1, int(hello.get("cpus") or 1) // self._share)

    def _memory_limit(self, hello: dict[str, Any]) -> int | None:
        if self._limit is not None:
            return self._limit
        return int(hello["memory"]) // self._share if hello.get("memory") else None


def _split(agent: str) -> tuple[str, int]:
    host, _, port = agent.rpartition(":")
    return host.strip("[]"), int(port)


def _check(agent: str) -> str:
    host, sep, port = agent.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"an agent address looks like host:port, not {agent!r}")
    return agent
