"""The EC2 system against moto's server: what RunInstances gets, spot and its fallback, termination, the monitor.

Instances never boot in moto, so each instance's bootstrap is parked once EC2 says it
runs (``parked``); tests/ec2/test_ec2_agents.py bootstraps real agents from user-data.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import datetime
import json
import socket
import sys
import time
from typing import Any

import pytest
from waiting import wait_for

import bigmachine
from bigmachine import driver
from bigmachine.systems.agent import agent_name
from bigmachine.systems.ec2 import EC2, EC2Instance
from bigmachine.systems.ec2.aws import AwsError, current_user

Moto = Any  # tests/ec2/conftest.py


class Adder:
    def add(self, a: int, b: int) -> int:
        return a + b


def make_system(**options: Any) -> tuple[EC2, list[dict[str, Any]]]:
    """An EC2 system on moto recording every RunInstances call's parameters."""
    import boto3

    session = boto3.Session()
    calls: list[dict[str, Any]] = []
    session.events.register("provide-client-params.ec2.RunInstances",
                            lambda params, **_: calls.append(copy.deepcopy(params)))
    options = {"allow": "203.0.113.7/32", "price": 0.096, "cores_per_machine": 2, **options}  # one per m5.large
    system = EC2(boto3_session=session, **options)
    system.describe_interval = 0.1
    return system, calls


@pytest.fixture
def parked(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each instance's bootstrap waits for good once EC2 says the instance runs (moto's never boot)."""
    original = EC2Instance._locate

    async def locate(self: EC2Instance) -> tuple[str, int]:
        await original(self)
        self.parked = True  # type: ignore[attr-defined]
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    monkeypatch.setattr(EC2Instance, "_locate", locate)



def machines_tag(params: dict[str, Any]) -> str:
    """The machines a RunInstances call launches, from its tags."""
    return next(t["Value"] for t in params["TagSpecifications"][0]["Tags"] if t["Key"] == "bigmachine:machines")


def machines_of(system: EC2) -> list[EC2Instance]:
    return [m for host in system.hosts.values() for m in host.machines]


def instances_of(moto_env: Moto, session: str) -> list[dict[str, Any]]:
    reply = moto_env.client().describe_instances(Filters=[{"Name": "tag:bigmachine:session", "Values": [session]}])
    return [i for r in reply["Reservations"] for i in r["Instances"]]


def user_data_credentials(script: str) -> dict[str, Any]:
    return json.loads(script.split("<<'BIGMACHINE_CREDENTIALS'\n", 1)[1].split("\nBIGMACHINE_CREDENTIALS", 1)[0])


def test_run_instances_parameters_and_shutdown(moto_env: Moto, parked: None) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization as ser
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    moto_env.client("iam").create_instance_profile(InstanceProfileName="bigmachine-role")
    system, calls = make_system(tags={"team": "pi"}, disk=20, instance_profile="bigmachine-role")
    ec2 = moto_env.client()
    with bigmachine.start(system) as b:
        machines = b.start(2, bigmachine.Services(A=Adder()))
        assert [m.state for m in machines] == [bigmachine.STARTING] * 2  # b.start returns once launched
        assert len(calls) == 2
        calls.sort(key=machines_tag)  # launched at once: in any order
        ami = moto_env.client("ssm").get_parameter(
            Name="/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64")["Parameter"]["Value"]
        for params, machine in zip(calls, machines):
            assert params["ImageId"] == ami and params["InstanceType"] == "m5.large"
            assert (params["MinCount"], params["MaxCount"]) == (1, 1)
            assert params["InstanceInitiatedShutdownBehavior"] == "terminate"
            assert params["MetadataOptions"]["HttpTokens"] == "required"
            assert params["IamInstanceProfile"] == {"Name": "bigmachine-role"}
            assert params["BlockDeviceMappings"][0]["Ebs"]["VolumeSize"] == 20
            assert "InstanceMarketOptions" not in params
            for spec in params["TagSpecifications"]:
                tags = {t["Key"]: t["Value"] for t in spec["Tags"]}
                assert tags["bigmachine:session"] == b.name and tags["bigmachine:machines"] == machine.name
                assert tags["bigmachine:driver-host"] == socket.gethostname()
                assert tags["bigmachine:user"] == current_user() and tags["team"] == "pi"
            assert {s["ResourceType"] for s in params["TagSpecifications"]} == {"instance", "volume"}

        # user-data: installs Python and bigmachine, runs the agent, powers off when it ends
        script = calls[0]["UserData"]
        assert script.startswith("#!/bin/bash\n") and "trap 'shutdown -h now' EXIT" in script
        assert "PY=python{}.{}".format(*sys.version_info[:2]) in script
        assert f"bigmachine=={bigmachine.__version__}" in script
        assert "-m bigmachine.systems.agent --listen 0.0.0.0:9443 --machines 1" in script
        # ... and carries nothing but one bootstrap's short-lived credentials
        credentials = user_data_credentials(script)
        assert set(credentials) == {"version", "name", "ca", "cert", "key", "expires"}
        assert credentials["expires"] - time.time() <= system.start_timeout + 300
        assert b.authority.ca_pem.decode() not in script and credentials["ca"] != b.authority.ca_pem.decode()
        for key in (b.authority._key, system.authority._authority._key):
            pem = key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.NoEncryption()).decode()
            assert pem not in script
        cert = x509.load_pem_x509_certificate(credentials["cert"].encode())
        assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
            ExtendedKeyUsageOID.SERVER_AUTH]  # it cannot act as a client of any machine
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == agent_name(credentials["name"])
        lifetime = cert.not_valid_after_utc - datetime.datetime.now(datetime.timezone.utc)
        assert lifetime.total_seconds() <= system.start_timeout + 300
        assert user_data_credentials(calls[1]["UserData"])["key"] != credentials["key"]  # one per instance

        # what EC2 holds
        wait_for(lambda: all(getattr(i, "parked", False) for i in machines_of(system)))
        found = instances_of(moto_env, b.name)
        assert len(found) == 2 and {i["State"]["Name"] for i in found} == {"running"}
        for instance in found:
            assert instance["MetadataOptions"]["HttpTokens"] == "required"
            behaviour = ec2.describe_instance_attribute(InstanceId=instance["InstanceId"],
                                                        Attribute="instanceInitiatedShutdownBehavior")
            assert behaviour["InstanceInitiatedShutdownBehavior"]["Value"] == "terminate"
            data = ec2.describe_instance_attribute(InstanceId=instance["InstanceId"], Attribute="userData")
            assert base64.b64decode(data["UserData"]["Value"]).decode() in (calls[0]["UserData"],
                                                                           calls[1]["UserData"])

        # the session's security group: only the machine port, to the driver and to the machines
        group = calls[0]["SecurityGroupIds"][0]
        described = ec2.describe_security_groups(GroupIds=[group])["SecurityGroups"][0]
        assert {t["Key"]: t["Value"] for t in described["Tags"]}["bigmachine:session"] == b.name
        cidrs, pairs = set(), set()
        for permission in described["IpPermissions"]:
            assert (permission["IpProtocol"], permission["FromPort"], permission["ToPort"]) == ("tcp", 9443, 9444)  # the agent's, and one machine's
            cidrs |= {r["CidrIp"] for r in permission.get("IpRanges", [])}
            pairs |= {p["GroupId"] for p in permission.get("UserIdGroupPairs", [])}
        assert cidrs == {"203.0.113.7/32"} | {f"{i['PublicIpAddress']}/32" for i in found}
        assert pairs == {group}

        # the status page's view
        facts = b._instances[machines[0]].describe()
        assert facts["instance"] in {i["InstanceId"] for i in found}
        assert (facts["type"], facts["market"], facts["usd_per_hour"]) == ("m5.large", "on-demand", 0.096)
        assert facts["session_usd_per_hour"] == pytest.approx(0.192) and facts["session_cost_usd"] >= 0
        assert system.maxprocs() == 2  # m5.large's vCPUs
    assert {i["State"]["Name"] for i in instances_of(moto_env, b.name)} == {"terminated"}
    assert not ec2.describe_security_groups(Filters=[{"Name": "group-id", "Values": [group]}])["SecurityGroups"]


def test_spot_instances_with_a_max_price(moto_env: Moto, parked: None) -> None:
    system, calls = make_system(spot=True, max_price=0.05, price=None)
    with bigmachine.start(system) as b:
        m, = b.start(1, bigmachine.Services(A=Adder()))
        options = calls[0]["InstanceMarketOptions"]
        assert options == {"MarketType": "spot", "SpotOptions": {"MaxPrice": "0.0500", "SpotInstanceType": "one-time",
                                                                 "InstanceInterruptionBehavior": "terminate"}}
        assert "spot-instances-request" in {s["ResourceType"] for s in calls[0]["TagSpecifications"]}
        wait_for(lambda: all(getattr(i, "parked", False) for i in machines_of(system)))
        facts = b._instances[m].describe()
        assert facts["market"] == "spot" and isinstance(facts["usd_per_hour"], float)  # moto's spot price


def _no_spot_capacity(params: dict[str, Any], **_: Any) -> Any:
    """Answers spot RunInstances as EC2 does when it has no spot capacity."""
    from botocore.awsrequest import AWSResponse

    if not any(k.startswith("InstanceMarketOptions") for k in params.get("body", {})):
        return None
    error = {"Code": "InsufficientInstanceCapacity", "Message": "There is no Spot capacity available"}
    return AWSResponse("https://ec2", 500, {}, None), {"Error": error, "ResponseMetadata": {"HTTPStatusCode": 500}}


def test_spot_falls_back_to_on_demand(moto_env: Moto, parked: None, caplog: pytest.LogCaptureFixture) -> None:
    system, calls = make_system(spot=True)
    system._boto3_session.events.register("before-call.ec2.RunInstances", _no_spot_capacity)
    with bigmachine.start(system) as b:
        m, = b.start(1, bigmachine.Services(A=Adder()))
        assert [("InstanceMarketOptions" in c) for c in calls] == [True, False]
        assert b._instances[m].describe()["market"] == "on-demand"
        assert len(instances_of(moto_env, b.name)) == 1
    assert "launching on demand instead" in caplog.text


def test_spot_without_fallback_fails_the_start(moto_env: Moto, parked: None) -> None:
    system, calls = make_system(spot=True, fallback=False)
    system._boto3_session.events.register("before-call.ec2.RunInstances", _no_spot_capacity)
    with bigmachine.start(system) as b:
        with pytest.raises(bigmachine.Error, match="InsufficientInstanceCapacity"):
            b.start(1, bigmachine.Services(A=Adder()))
        assert len(calls) == 1 and not instances_of(moto_env, b.name)


def test_a_failed_start_terminates_its_instance(moto_env: Moto, parked: None) -> None:
    system, _ = make_system(start_timeout=1.0)
    with bigmachine.start(system) as b:
        m, = b.start(1, bigmachine.Services(A=Adder()))
        m.wait(bigmachine.STOPPED, timeout=10)
        assert isinstance(m.err, TimeoutError)
        wait_for(lambda: [i["State"]["Name"] for i in instances_of(moto_env, b.name)] == ["terminated"])


def test_the_monitor_stops_machines_of_interrupted_instances(moto_env: Moto, parked: None) -> None:
    system, _ = make_system()
    with bigmachine.start(system) as b:
        gone, noticed, fine = b.start(3, bigmachine.Services(A=Adder()))
        wait_for(lambda: all(getattr(i, "parked", False) for i in machines_of(system)))
        instance = b._instances[gone]
        moto_env.client().terminate_instances(InstanceIds=[instance.id])  # e.g. reclaimed: not by us
        b.loop.call_soon_threadsafe(instance._suspect, "test: its agent stopped answering")
        gone.wait(bigmachine.STOPPED, timeout=5)
        assert f"instance {instance.id} (m5.large, on-demand) is " in str(gone.err)
        assert "terminated" in str(gone.err) or "shutting-down" in str(gone.err)

        notice = {"Status": {"Code": "marked-for-termination", "Message": "Spot instance termination"}}
        b.loop.call_soon_threadsafe(b._instances[noticed].host.observe, None, notice)
        noticed.wait(bigmachine.STOPPED, timeout=5)
        assert "spot interruption notice: marked-for-termination" in str(noticed.err)
        assert fine.state == bigmachine.STARTING
        wait_for(lambda: sorted(i["State"]["Name"] for i in instances_of(moto_env, b.name))
                 == ["running", "terminated", "terminated"])


def test_an_unknown_instance_type_fails_the_session_at_once(moto_env: Moto) -> None:
    system, _ = make_system(instance_type="m5.huge")
    with pytest.raises(AwsError, match="no instance type 'm5.huge' in us-west-2"):
        bigmachine.start(system)


def test_driver_options_and_variables_make_the_system(monkeypatch: pytest.MonkeyPatch) -> None:
    import argparse

    monkeypatch.setenv("BIGMACHINE_EC2_REGION", "eu-west-1")
    monkeypatch.setenv("BIGMACHINE_EC2_DISK", "30")
    monkeypatch.setenv("BIGMACHINE_EC2_SPOT", "true")
    parser = argparse.ArgumentParser()
    driver.add_arguments(parser)
    args = parser.parse_args(["--bigm.system=ec2", "--bigm.ec2.instance-type", "c7i.large", "--bigm.ec2.max-price",
                              "0.05", "--bigm.ec2.tags", "team=pi,env=test", "--bigm.ec2.requirements", "none",
                              "--no-bigm.ec2.fallback", "--bigm.ec2.allow", "198.51.100.0/24",
                              "--bigm.ec2.cores-per-machine", "4", "--bigm.ec2.memory-limit", "2G"])
    system = driver.make_system(args)
    assert isinstance(system, EC2)
    assert (system.region, system.instance_type, system.spot, system.fallback) == ("eu-west-1", "c7i.large", True,
                                                                                   False)
    assert (system.max_price, system.disk, system.requirements, system.allow) == (0.05, 30, [], "198.51.100.0/24")
    assert system.tags == {"team": "pi", "env": "test"}
    assert (system.cores_per_machine, system.memory_limit, system.maxprocs()) == (4, 2 << 30, 4)
    with pytest.raises(ValueError, match="address must be"):
        EC2(address="elsewhere")


def test_an_instance_gone_before_its_agent_answers_fails_its_start_with_advice(
        moto_env: Moto, monkeypatch: pytest.MonkeyPatch) -> None:
    from bigmachine.systems import bootstrap

    async def refuse(self: EC2Instance, host: str, port: int, context: Any) -> Any:
        raise ConnectionRefusedError("nothing listens yet")  # and no traffic to moto's made-up addresses

    monkeypatch.setattr(EC2Instance, "_open", refuse)
    monkeypatch.setattr(bootstrap, "_RETRY_EVERY", 0.05)
    system, _ = make_system()
    with bigmachine.start(system) as b:
        m, = b.start(1, bigmachine.Services(A=Adder()))
        instance = b._instances[m]
        wait_for(lambda: instance.host.state == "running")
        moto_env.client().terminate_instances(InstanceIds=[instance.id])  # as when its user-data script fails
        m.wait(bigmachine.STOPPED, timeout=10)
    assert f"instance {instance.id} (m5.large, on-demand) is terminated" in str(m.err)
    assert f"aws ec2 get-console-output --instance-id {instance.id}" in str(m.err)
