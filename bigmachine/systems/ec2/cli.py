"""``python -m bigmachine.systems.ec2 list|terminate``: the instances bigmachine sessions left, by tag.

    python -m bigmachine.systems.ec2 list                        # every bigmachine instance in the region
    python -m bigmachine.systems.ec2 list --all-mine             # those of this user on this host
    python -m bigmachine.systems.ec2 terminate --session bigmachine-1a2b3c4d
    python -m bigmachine.systems.ec2 terminate --all-mine

``terminate`` also cancels the instances' spot requests and deletes the security
groups the sessions made, once their instances are gone.
"""

from __future__ import annotations

import argparse
import datetime
import socket
import time
from collections.abc import Sequence
from typing import Any

from ...errors import Error
from ..leftovers import LeftoversCommand, none_of, print_table
from .aws import Aws, AwsError, current_user

__all__ = ["delete_groups", "find", "main"]

SESSION_TAG = "bigmachine:session"
_LIVE = ["pending", "running", "stopping", "stopped", "shutting-down"]


def find(aws: Aws, *, session: str | None = None, mine: bool = False,
         states: Sequence[str] = tuple(_LIVE)) -> list[dict[str, Any]]:
    """bigmachine's instances: of one session, or this user's on this host, or all; in ``states``."""
    filters = _filters(session, mine) + [{"Name": "instance-state-name", "Values": list(states)}]
    return sorted(aws.instances(filters), key=lambda i: (_tag(i, SESSION_TAG), str(i.get("LaunchTime", "")),
                                                        i["InstanceId"]))


def delete_groups(aws: Aws, filters: list[dict[str, Any]]) -> list[str]:
    """Deletes the security groups sessions made (matching ``filters``) whose instances are all gone."""
    groups = aws.security_groups([*filters, {"Name": "tag-key", "Values": [SESSION_TAG]}])
    deleted = []
    for group in groups:
        session = _tag(group, SESSION_TAG)
        if session and find(aws, session=session):
            continue
        try:
            aws.delete_security_group(group["GroupId"])
        except AwsError as exc:
            if exc.code not in ("DependencyViolation", "InvalidGroup.NotFound"):
                raise
            continue
        deleted.append(group["GroupId"])
    return deleted


_COMMAND = LeftoversCommand(prog="python -m bigmachine.systems.ec2",
                            description="List or terminate the EC2 instances of bigmachine sessions.",
                            end="terminate", things="instances", session_metavar="ID",
                            mine="the instances of this user on this host")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _COMMAND.parser()
    parser.add_argument("--region", help="AWS region (default: boto3's)")
    parser.add_argument("--no-wait", action="store_true", help="terminate: don't wait until the instances are gone")
    return _COMMAND.run(parser, argv, _act, Error)


def _act(args: argparse.Namespace) -> int:
    aws = Aws(args.region)
    if args.command == "list":
        return _list(aws, args.session, args.all_mine)
    return _terminate(aws, args.session, args.all_mine, wait=not args.no_wait)


def _list(aws: Aws, session: str | None, mine: bool) -> int:
    instances = find(aws, session=session, mine=mine)
    rows = [("INSTANCE", "STATE", "TYPE", "MARKET", "LAUNCHED", "SESSION", "USER@HOST", "ADDRESS", "MACHINES")]
    for i in instances:
        launched = i.get("LaunchTime")
        rows.append((i["InstanceId"], i["State"]["Name"], i.get("InstanceType", ""),
                     "spot" if i.get("InstanceLifecycle") == "spot" else "on-demand",
                     launched.strftime("%Y-%m-%d %H:%M") if isinstance(launched, datetime.datetime) else "",
                     _tag(i, SESSION_TAG), f"{_tag(i, 'bigmachine:user')}@{_tag(i, 'bigmachine:driver-host')}",
                     i.get("PublicIpAddress") or i.get("PrivateIpAddress") or "", _machines(i)))
    if len(rows) == 1:
        print(none_of("bigmachine instances", session, mine) + f" in {aws.region}")
    else:
        print_table(rows)
    groups = aws.security_groups([*_filters(session, mine), {"Name": "tag-key", "Values": [SESSION_TAG]}])
    for group in groups:
        print(f"security group {group['GroupId']} ({group.get('GroupName', '')}) of session {_tag(group, SESSION_TAG)}")
    return 0


def _terminate(aws: Aws, session: str | None, mine: bool, *, wait: bool) -> int:
    instances = [i for i in find(aws, session=session, mine=mine) if i["State"]["Name"] != "shutting-down"]
    ids = [i["InstanceId"] for i in instances]
    if ids:
        aws.terminate(ids)
        spot = [i["SpotInstanceRequestId"] for i in instances if i.get("SpotInstanceRequestId")]
        aws.cancel_spot_requests(spot)
        print(f"terminating {len(ids)} instances: {' '.join(ids)}")
    else:
        print(none_of("running bigmachine instances", session, mine))
    deadline = time.monotonic() + 300
    while wait and find(aws, session=session, mine=mine) and time.monotonic() < deadline:
        time.sleep(5)
    for group in delete_groups(aws, _filters(session, mine)):
        print(f"deleted security group {group}")
    return 0


def _filters(session: str | None, mine: bool) -> list[dict[str, Any]]:
    if session:
        return [{"Name": f"tag:{SESSION_TAG}", "Values": [session]}]
    if mine:
        return [{"Name": "tag:bigmachine:user", "Values": [current_user()]},
                {"Name": "tag:bigmachine:driver-host", "Values": [socket.gethostname()]}]
    return [{"Name": "tag-key", "Values": [SESSION_TAG]}]


def _machines(instance: dict[str, Any]) -> str:
    """The machines an instance runs (its ``bigmachine:machines`` tag): how many, and their names."""
    names = (_tag(instance, "bigmachine:machines") or _tag(instance, "bigmachine:machine")).split()
    return f"{len(names)}: {' '.join(names)}" if names else ""


def _tag(resource: dict[str, Any], key: str) -> str:
    return next((t["Value"] for t in resource.get("Tags", []) if t["Key"] == key), "")
