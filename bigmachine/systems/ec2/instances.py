"""An EC2 instance of a session (``EC2Host``) and the machines its agent runs on it (``EC2Instance``).

An instance runs ``vcpus // cores_per_machine`` machines; what EC2 says of it (state,
addresses, spot notices) and what it costs belong to the instance, each machine's
agent link to the machine. The instance's last machine stopped by the driver
terminates it; any other leaves it to its neighbours.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from typing import TYPE_CHECKING, Any

from ...errors import MachineStopped
from ..bootstrap import AgentInstance
from ..shipping import Shipment

if TYPE_CHECKING:
    from ...machine import Machine
    from . import EC2

__all__ = ["EC2Host", "EC2Instance"]

logger = logging.getLogger(__name__)

_GONE = ("shutting-down", "terminated", "stopping", "stopped")
_SPOT_NOTICES = ("marked-for-", "instance-terminated-", "instance-stopped-")  # spot request status codes


class EC2Host:
    """One EC2 instance of the session: what EC2 says of it, what it costs, and the machines its agent runs."""

    def __init__(self, system: EC2, desc: dict[str, Any], agent: str) -> None:
        self.system, self.agent = system, agent  # the name the agent's credentials were issued for
        self.id: str = desc["InstanceId"]
        self.instance_type: str = desc.get("InstanceType", system.instance_type)
        self.market = "spot" if desc.get("InstanceLifecycle") == "spot" else "on-demand"
        self.spot_request: str | None = desc.get("SpotInstanceRequestId")
        launched = desc.get("LaunchTime")
        self.launched = launched.timestamp() if isinstance(launched, datetime.datetime) else time.time()
        self.state, self.zone, self.public_ip, self.private_ip = "pending", "", "", ""
        self.price: float | None = system.price
        self.ended: float | None = None
        self.suspected = False
        self.machines: list[EC2Instance] = []
        self._located: asyncio.Task[tuple[str, int]] | None = None
        self._watch: asyncio.Task[None] | None = None
        self.update(desc)

    def __repr__(self) -> str:
        return f"instance {self.id} ({self.instance_type}, {self.market})"

    def describe(self) -> dict[str, Any]:
        """The instance's facts for the status page; the session's cost counts each instance once."""
        total = self.system.cost()
        return {"instance": self.id, "type": self.instance_type, "market": self.market, "zone": self.zone,
                "state": self.state, "public_ip": self.public_ip, "private_ip": self.private_ip,
                "machines_on_instance": len(self.machines),
                "usd_per_hour": self.price if self.price is not None else "unknown",
                "cost_usd": round(self.cost(), 4), "session_usd_per_hour": total["usd_per_hour"],
                "session_cost_usd": total["usd_so_far"]}

    def cost(self) -> float:
        """What the instance has cost so far (USD), at its price per hour."""
        end = self.ended or time.time()
        return (self.price or 0.0) * max(0.0, end - self.launched) / 3600

    def update(self, desc: dict[str, Any]) -> None:
        self.state = desc.get("State", {}).get("Name", self.state)
        self.zone = desc.get("Placement", {}).get("AvailabilityZone", self.zone)
        self.public_ip = desc.get("PublicIpAddress", self.public_ip)
        self.private_ip = desc.get("PrivateIpAddress", self.private_ip)
        self.spot_request = desc.get("SpotInstanceRequestId") or self.spot_request
        if self.state in _GONE and self.ended is None:
            self.ended = time.time()

    def observe(self, desc: dict[str, Any] | None, spot: dict[str, Any] | None) -> None:
        """What a DescribeInstances round found: an interrupted instance ends its machines, saying why."""
        if desc is not None:
            self.update(desc)
        if desc is not None and self.state in _GONE:
            reason = desc.get("StateReason", {}).get("Message") or desc.get("StateTransitionReason") or "no reason given"
            if any(m._host and not m._address.done() for m in self.machines):  # it ran, but its agent never answered
                reason += (f"; its agent never answered: see its boot log with `aws ec2 get-console-output "
                           f"--instance-id {self.id} --region {self.system.region}`")
            self._end(f"{self} is {self.state}: {reason}")
        elif spot is not None and str(spot.get("Status", {}).get("Code", "")).startswith(_SPOT_NOTICES):
            status = spot["Status"]
            self._end(f"{self} got a spot interruption notice: {status.get('Code')}: {status.get('Message', '')}")

    def _end(self, why: str) -> None:
        for machine in self.machines:
            if machine._killing is None and not machine._exit.done():
                machine._end(MachineStopped(why, machine=machine.machine.addr))

    def live(self) -> list[EC2Instance]:
        """The instance's machines that have not ended."""
        return [m for m in self.machines if not m._exit.done()]

    async def locate(self) -> tuple[str, int]:
        """The agent's address once EC2 says the instance runs (one wait shared by its machines)."""
        if self._located is None:
            self._located = self.system._spawn(self._locate())
        return await asyncio.shield(self._located)

    async def _locate(self) -> tuple[str, int]:
        while not (self.state == "running" and self.address()):
            await self.system._round()
            if not self.live():
                raise MachineStopped(f"{self} ended before it ran", machine="")
        self.price = await self.system._price(self)
        await self.system._open_to(self)
        return self.address(), self.system.port

    def address(self) -> str:
        return self.public_ip if self.system.address == "public" else self.private_ip

    def suspect(self, why: str) -> None:
        """An agent link went quiet: look the instance up (rate-limited) until it speaks again or is found gone."""
        logger.warning("%s: %s; checking the instance", self, why)
        self.suspected = True
        if self._watch is None or self._watch.done():
            self._watch = self.system._spawn(self._check())

    async def _check(self) -> None:
        quiet = max(3 * self.system.keepalive_period, 5.0)
        while self.live():
            await self.system._round()
            if all(m._writer is not None and time.monotonic() - m.last_heard < quiet for m in self.live()):
                self.suspected = False  # they spoke again
                return
            await asyncio.sleep(self.system.describe_interval)

    async def terminate(self) -> None:
        """Terminates the instance (its last machine was stopped by the driver)."""
        await self.system._terminate(self.id)
        if self.ended is None:
            self.ended = time.time()
        if self._watch is not None:
            self._watch.cancel()


class EC2Instance(AgentInstance):
    """One machine on an EC2 instance (``host``), which it shares with the instance's other machines."""

    def __init__(self, host: EC2Host, machine: Machine, shipment: Shipment, environ: dict[str, str]) -> None:
        self.host, self.system = host, host.system
        host.machines.append(self)
        assert self.system._session is not None
        super().__init__(self.system._session, machine, self.system.authority, host.agent, shipment, environ,
                         system="ec2", ping=self.system.keepalive_period)

    @property
    def id(self) -> str:
        """The instance's id."""
        return self.host.id

    def describe(self) -> dict[str, Any]:
        return {**self.host.describe(), **super().describe()}

    def _maxprocs(self, hello: dict[str, Any]) -> int:
        return self.system.cores_per_machine

    def _memory_limit(self, hello: dict[str, Any]) -> int | None:
        """The system's limit, else an even share of the instance's memory among its machines."""
        if self.system.memory_limit is not None:
            return self.system.memory_limit
        total = int(hello.get("memory") or int(self.system.info.get("memory_mib", 0)) << 20)
        return total // len(self.host.machines) if total else None

    async def _locate(self) -> tuple[str, int]:
        return await self.host.locate()

    async def _waiting(self) -> None:
        """While the agent doesn't answer yet: an instance that powered off already won't (user-data failed)."""
        await self.system._round()
        if self._exit.done():
            raise self._exit.result()

    def _suspect(self, why: str) -> None:
        self.host.suspect(f"{self.prefix}: {why}")

    async def _stop(self) -> None:
        """Stops the machine; the instance's last live machine terminates the instance."""
        if [m for m in self.host.live() if m is not self]:
            await super()._stop()  # its agent ends it; the neighbours run on
            return
        self._end(MachineStopped(f"{self.host} was terminated by the driver", machine=self.machine.addr))
        await self.host.terminate()
        await self._hang_up(self._exit.result())
