"""The hosts system: machines on hosts you already have, each running a bootstrap agent.

    authority = BootstrapAuthority(lifetime=3600)
    # on each host, with the JSON of authority.credentials("10.0.0.5:9443") in creds.json:
    #   python -m bigmachine.systems.agent --listen 10.0.0.5:9443 --credentials creds.json
    with bigmachine.start(Hosts(["10.0.0.5:9443", ...], authority=authority)) as b:
        ...

Each agent serves one machine (then exits), so ``b.start`` can start as many machines
as there are agents not used yet. The EC2 system bootstraps its instances the same way.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..errors import Error
from .base import Instance, System
from .bootstrap import AgentInstance, BootstrapAuthority
from .shipping import collect

if TYPE_CHECKING:
    from ..machine import Machine
    from ..session import B

__all__ = ["Hosts"]


class Hosts(System):
    """Machines on hosts running ``python -m bigmachine.systems.agent``, one machine per agent."""

    name = "hosts"

    def __init__(self, agents: Sequence[str], *, authority: BootstrapAuthority,
                 requirements: Sequence[str] | None = None, keepalive_period: float = 2.0,
                 keepalive_timeout: float = 60.0, keepalive_rpc_timeout: float = 10.0, **options: Any) -> None:
        """``options``: ``start_timeout``, ``service_threads``, ``max_connections`` (see ``System``)."""
        super().__init__(keepalive_period=keepalive_period, keepalive_timeout=keepalive_timeout,
                         keepalive_rpc_timeout=keepalive_rpc_timeout, **options)
        self.agents = [_check(a) for a in agents]
        self.authority = authority
        self.requirements = None if requirements is None else list(requirements)
        self._used = 0

    def __repr__(self) -> str:
        return f"Hosts({len(self.agents)} agents)"

    async def launch(self, session: B, machines: list[Machine], environ: dict[str, str]) -> list[Instance | BaseException]:
        shipment = await asyncio.to_thread(collect, self.requirements)
        launched: list[Instance | BaseException] = []
        for machine in machines:
            if self._used >= len(self.agents):
                launched.append(Error(f"no agent left for {machine.name}: all {len(self.agents)} agents of "
                                      f"{self!r} serve a machine already (an agent serves one)"))
                continue
            agent = self.agents[self._used]
            self._used += 1
            launched.append(HostInstance(session, machine, self.authority, agent, shipment, environ,
                                         system=self.name, ping=self.keepalive_period))
        return launched


class HostInstance(AgentInstance):
    """A machine on a host whose agent's address is known in advance."""

    async def _locate(self) -> tuple[str, int]:
        host, _, port = self.agent.rpartition(":")
        return host.strip("[]"), int(port)


def _check(agent: str) -> str:
    host, sep, port = agent.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"an agent address looks like host:port, not {agent!r}")
    return agent
