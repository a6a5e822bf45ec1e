"""Machines that fill their instances, against moto's server: how many instances, their ports, cost and ending."""

from __future__ import annotations

import asyncio
import contextlib
import io
from typing import Any

import pytest

import bigmachine
from bigmachine.systems.ec2 import EC2
from bigmachine.systems.ec2.cli import main as ec2_command

from test_ec2_launch import (Adder, instances_of, machines_of, machines_tag, make_system,  # noqa: F401 - parked
                             parked, wait_for)

Moto = Any  # tests/ec2/conftest.py


async def _status(b: bigmachine.B) -> Any:
    import httpx

    transport = httpx.ASGITransport(app=b.debug_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
        return await client.get("/debug/bigmachine/status")


def test_six_machines_on_two_four_vcpu_instances(moto_env: Moto, parked: None) -> None:
    system, calls = make_system(instance_type="m5.xlarge", cores_per_machine=1, price=0.192)
    with bigmachine.start(system) as b:
        machines = b.start(6, bigmachine.Services(A=Adder()))
        assert len(machines) == 6 and len(calls) == 2
        calls.sort(key=lambda c: -len(machines_tag(c).split()))  # launched at once: in any order
        assert ["--machines 4" in calls[0]["UserData"], "--machines 2" in calls[1]["UserData"]] == [True, True]
        wait_for(lambda: all(getattr(i, "parked", False) for i in machines_of(system)))
        hosts = [b._instances[m].host for m in machines]
        assert hosts[:4] == [hosts[0]] * 4 and hosts[4:] == [hosts[4]] * 2 and hosts[0] is not hosts[4]
        assert system.maxprocs() == 1
        assert machines_tag(calls[0]) == " ".join(m.name for m in machines[:4])

        # the security group admits the agent's port and one per machine of an instance
        group = calls[0]["SecurityGroupIds"][0]
        described = moto_env.client().describe_security_groups(GroupIds=[group])["SecurityGroups"][0]
        assert {(p["FromPort"], p["ToPort"]) for p in described["IpPermissions"]} == {(9443, 9447)}

        # each instance counted once, whatever its machines
        facts = b._instances[machines[0]].describe()
        assert facts["instance"] == hosts[0].id and facts["machines_on_instance"] == 4
        assert facts["session_usd_per_hour"] == pytest.approx(2 * 0.192) and system.cost()["instances"] == 2

        # the status page groups machines under their instance
        page = asyncio.run(_status(b)).text
        assert page.count('<tr class="group">') == 2 and page.count('<tr class="machine"') == 6
        assert f"<b>instance {hosts[0].id}</b> · m5.xlarge · on-demand · $0.1920/h · 4 machines" in page
        assert page.index(hosts[4].id) > max(page.index(m.name) for m in machines[:4])

        # `python -m bigmachine.systems.ec2 list` shows the machines of each instance
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert ec2_command(["list", "--session", b.name]) == 0
        rows = {line.split()[0]: line for line in out.getvalue().splitlines() if line.startswith("i-")}
        assert rows[hosts[0].id].endswith("4: " + " ".join(m.name for m in machines[:4]))
        assert rows[hosts[4].id].endswith("2: " + " ".join(m.name for m in machines[4:]))
    assert {i["State"]["Name"] for i in instances_of(moto_env, b.name)} == {"terminated"}
    assert len(instances_of(moto_env, b.name)) == 2


def test_two_cores_per_machine_makes_three_instances(moto_env: Moto, parked: None) -> None:
    system, calls = make_system(instance_type="m5.xlarge", cores_per_machine=2)
    with bigmachine.start(system) as b:
        b.start(6, bigmachine.Services(A=Adder()))
        assert len(calls) == 3 and all("--machines 2" in c["UserData"] for c in calls)
        assert system.maxprocs() == 2
        wait_for(lambda: len(instances_of(moto_env, b.name)) == 3)


def test_killing_one_machine_leaves_its_instance_and_the_last_terminates_it(moto_env: Moto, parked: None) -> None:
    system, _ = make_system(instance_type="m5.xlarge", cores_per_machine=2)
    with bigmachine.start(system) as b:
        first, second = b.start(2, bigmachine.Services(A=Adder()))
        wait_for(lambda: all(getattr(i, "parked", False) for i in machines_of(system)))
        host = b._instances[first].host
        b.loop.call_soon_threadsafe(lambda: b.loop.create_task(b._instances[first].kill()))
        first.wait(bigmachine.STOPPED, timeout=10)
        assert second.state == bigmachine.STARTING
        assert [i["State"]["Name"] for i in instances_of(moto_env, b.name)] == ["running"]
        b.loop.call_soon_threadsafe(lambda: b.loop.create_task(b._instances[second].kill()))
        second.wait(bigmachine.STOPPED, timeout=10)
        assert f"instance {host.id} (m5.xlarge, on-demand) was terminated by the driver" in str(second.err)
        wait_for(lambda: [i["State"]["Name"] for i in instances_of(moto_env, b.name)] == ["terminated"])


def test_more_cores_per_machine_than_vcpus_is_refused_before_launching(moto_env: Moto) -> None:
    system, calls = make_system(instance_type="m5.xlarge", cores_per_machine=8)
    with pytest.raises(bigmachine.Error, match=r"cores_per_machine=8 is more than the 4 vCPUs of m5.xlarge"):
        bigmachine.start(system)
    assert not calls
    with pytest.raises(ValueError, match="cores_per_machine must be a whole number >= 1"):
        EC2(cores_per_machine=0)
