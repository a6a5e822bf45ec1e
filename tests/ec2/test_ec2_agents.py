"""EC2 end to end, but for booting: moto launches, real agents bootstrap from each instance's user-data.

Once moto says an instance runs, the test starts an agent on a free host (a network
namespace) with the credentials it reads back from that instance's user-data, and
the instance is reached at that host's address instead of moto's made-up one.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import time
from typing import Any

import pytest

import bigmachine
from bigmachine.systems.ec2 import EC2, EC2Instance

Moto = Lan = Agents = Any  # tests/ec2/conftest.py


class Peer:
    def init(self, b: Any) -> None:
        self.b = b

    def double(self, x: int) -> int:
        return 2 * x

    def ask(self, addr: str) -> int:
        return int(self.b.dial(addr).call("P.double", 21))


@pytest.fixture
def booted(moto_env: Moto, lan: Lan, agents: Agents, monkeypatch: pytest.MonkeyPatch) -> dict[str, tuple[str, str, Any]]:
    """Instance id -> (host namespace, agent) for each instance booted on a lan host."""
    original = EC2Instance._locate
    free = list(lan.hosts)
    booted: dict[str, tuple[str, str, Any]] = {}
    lock = asyncio.Lock()

    async def locate(self: EC2Instance) -> tuple[str, int]:
        _, port = await original(self)  # EC2 (moto) says it runs
        reply = await asyncio.to_thread(self.system.aws.ec2.describe_instance_attribute, InstanceId=self.id,
                                        Attribute="userData")
        script = base64.b64decode(reply["UserData"]["Value"]).decode()
        credentials = json.loads(script.split("<<'BIGMACHINE_CREDENTIALS'\n", 1)[1].split("\n", 1)[0])
        async with lock:
            if self.id not in booted:  # the instance's machines share its one agent
                ns, addr = free.pop(0)
                booted[self.id] = (ns, addr, await asyncio.to_thread(agents.start, ns, addr, port, credentials))
        return booted[self.id][1], port

    monkeypatch.setattr(EC2Instance, "_locate", locate)
    return booted


def test_instances_bootstrap_from_user_data_and_an_interrupted_one_stops_promptly(
        moto_env: Moto, booted: dict[str, tuple[str, str, Any]]) -> None:
    system = EC2(allow="203.0.113.7/32", price=0.1, cores_per_machine=2, keepalive_period=0.5, keepalive_timeout=30.0,
                 keepalive_rpc_timeout=2.0, start_timeout=60)
    system.describe_interval = 0.2
    with bigmachine.start(system) as b:
        m0, m1 = b.start(2, bigmachine.Services(P=Peer()))
        for m in (m0, m1):
            m.wait(bigmachine.RUNNING, timeout=60)
        assert m0.call("P.ask", m1.addr) == 42 and m1.call("P.ask", m0.addr) == 42  # across hosts
        assert m0.maxprocs == 2  # cores_per_machine: an m5.large each
        interrupted = b._instances[m1]
        facts = interrupted.describe()
        assert facts["instance"] == interrupted.id and facts["host"] == m1.hostname and facts["usd_per_hour"] == 0.1

        # EC2 takes the instance back: it vanishes from the network (no FIN, no RST) and shows terminated
        moto_env.client().terminate_instances(InstanceIds=[interrupted.id])
        ns, _, _ = booted[interrupted.id]
        subprocess.run(["ip", "netns", "exec", ns, "ip", "link", "set", ns, "down"], check=True,  # its veth's name
                       timeout=30)
        begun = time.monotonic()
        m1.wait(bigmachine.STOPPED, timeout=20)
        assert time.monotonic() - begun < 10  # well before the 30 s keepalive timeout
        assert f"instance {interrupted.id} (m5.large, on-demand) is terminated" in str(m1.err)
        assert m0.state == bigmachine.RUNNING and m0.call("P.double", 2) == 4
    reply = moto_env.client().describe_instances(Filters=[{"Name": "tag:bigmachine:session", "Values": [b.name]}])
    assert {i["State"]["Name"] for r in reply["Reservations"] for i in r["Instances"]} == {"terminated"}
