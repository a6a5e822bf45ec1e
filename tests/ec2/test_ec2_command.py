"""``python -m bigmachine.systems.ec2 list|terminate``: finding and ending what sessions left behind, by tag."""

from __future__ import annotations

import socket
import subprocess
import sys
from typing import Any

from bigmachine.systems.ec2.aws import current_user

Moto = Any  # tests/ec2/conftest.py


def _command(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "bigmachine.systems.ec2", *args], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _orphans(moto_env: Moto, session: str, n: int, *, user: str) -> list[str]:
    """Instances as a killed driver leaves them: tagged, running."""
    ec2 = moto_env.client()
    tags = [{"Key": "bigmachine:session", "Value": session}, {"Key": "bigmachine:user", "Value": user},
            {"Key": "bigmachine:driver-host", "Value": socket.gethostname()}]
    reply = ec2.run_instances(ImageId="ami-12c6146b", InstanceType="t3.micro", MinCount=n, MaxCount=n,
                              TagSpecifications=[{"ResourceType": "instance", "Tags": tags}])
    return [i["InstanceId"] for i in reply["Instances"]]


def _states(moto_env: Moto, ids: list[str]) -> set[str]:
    reply = moto_env.client().describe_instances(InstanceIds=ids)
    return {i["State"]["Name"] for r in reply["Reservations"] for i in r["Instances"]}


def test_list_and_terminate_by_session_and_by_owner(moto_env: Moto) -> None:
    mine = _orphans(moto_env, "bigmachine-0rphan01", 2, user=current_user())
    theirs = _orphans(moto_env, "bigmachine-0rphan02", 1, user="somebody-else")
    group = moto_env.client().create_security_group(
        GroupName="bigmachine-bigmachine-0rphan01", Description="left behind",
        TagSpecifications=[{"ResourceType": "security-group",
                            "Tags": [{"Key": "bigmachine:session", "Value": "bigmachine-0rphan01"}]}])["GroupId"]

    listed = _command("list")
    assert all(i in listed for i in mine + theirs) and "bigmachine-0rphan02" in listed
    assert f"security group {group}" in listed
    one = _command("list", "--session", "bigmachine-0rphan01")
    assert all(i in one for i in mine) and theirs[0] not in one
    assert theirs[0] not in _command("list", "--all-mine")

    out = _command("terminate", "--session", "bigmachine-0rphan01")
    assert f"terminating 2 instances: {' '.join(sorted(mine))}" in out
    assert f"deleted security group {group}" in out
    assert _states(moto_env, mine) == {"terminated"} and _states(moto_env, theirs) == {"running"}
    assert "no bigmachine instances of session bigmachine-0rphan01" in _command("list", "--session",
                                                                                 "bigmachine-0rphan01")
    assert "no running bigmachine instances of yours" in _command("terminate", "--all-mine", "--no-wait")
    assert _states(moto_env, theirs) == {"running"}
    moto_env.client().terminate_instances(InstanceIds=theirs)


def test_terminate_needs_a_session_or_all_mine() -> None:
    done = subprocess.run([sys.executable, "-m", "bigmachine.systems.ec2", "terminate"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2 and "--session ID or --all-mine" in done.stderr
