"""The EC2 system's ``--bigm.ec2.*`` options, each defaulting to its ``BIGMACHINE_EC2_*`` variable."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..options import Option, add_options, keywords

if TYPE_CHECKING:
    from . import EC2

__all__ = ["add_arguments", "from_arguments"]

# The variable of each is BIGMACHINE_EC2_<OPTION> with - as _.
_OPTIONS: list[Option] = [
    ("region", "region", str, "AWS region (default: boto3's, e.g. AWS_DEFAULT_REGION)"),
    ("instance-type", "instance_type", str, "instance type (default: m5.large)"),
    ("cores-per-machine", "cores_per_machine", int,
     "vCPUs per machine, its maxprocs: an instance runs vcpus // this many machines (default: 1; use the type's "
     "vCPUs for one machine per instance, for native code that releases the GIL)"),
    ("memory-limit", "memory_limit", str,
     "memory per machine, like 2G (default: the instance's memory divided by its machines)"),
    ("max-price", "max_price", float, "highest spot price to pay, USD per hour (default: the on-demand price)"),
    ("ami", "ami", str, "image (default: the current Amazon Linux 2023, from its public SSM parameter)"),
    ("subnet", "subnet", str, "subnet to launch in (default: a default subnet of the default VPC)"),
    ("security-group", "security_group", str,
     "security group for the instances (default: one made for the session with only the machine ports open)"),
    ("allow", "allow", str, "address range the made security group admits the driver from "
                            "(default: the driver's public address; the VPC's range with --bigm.ec2.address=private)"),
    ("address", "address", str, "which address machines are reached at: public or private (default: public)"),
    ("port", "port", int, "the agent's port; an instance's machines take the ports above it (default: 9443)"),
    ("instance-profile", "instance_profile", str, "IAM instance profile (name or ARN) for the machines"),
    ("key-pair", "key_pair", str, "EC2 key pair, for SSH access to the instances"),
    ("disk", "disk", int, "root disk size, GiB (default: the image's)"),
    ("tags", "tags", str, "extra tags, KEY=VALUE,KEY=VALUE"),
    ("requirements", "requirements", str,
     "packages to pip-install on the machines, comma-separated, or 'auto' (default: the driver's imported "
     "packages at its versions) or 'none'"),
    ("package", "package", str, "pip spec of bigmachine for the instances (default: bigmachine==this version)"),
    ("price", "price", float, "price per hour to show on the status page, USD (default: looked up)"),
]


def add_arguments(group: argparse._ArgumentGroup, env: Callable[[str, str], str]) -> None:
    """Adds the EC2 options to ``group`` (the driver gives each system a --help group of its own)."""
    add_options(group, env, "ec2", _OPTIONS)
    spot = env("ec2.spot", "").lower() in ("1", "true", "yes", "on")
    group.add_argument("--bigm.ec2.spot", dest="bigm_ec2_spot", action=argparse.BooleanOptionalAction, default=spot,
                       help="spot instances, falling back to on-demand when there are none (BIGMACHINE_EC2_SPOT)")
    fallback = env("ec2.fallback", "1").lower() not in ("0", "false", "no", "off")
    group.add_argument("--bigm.ec2.fallback", dest="bigm_ec2_fallback", action=argparse.BooleanOptionalAction,
                       default=fallback, help="launch on demand when spot capacity is short (BIGMACHINE_EC2_FALLBACK; "
                                              "default: on)")


def from_arguments(args: argparse.Namespace) -> EC2:
    """The EC2 system the parsed options describe."""
    from . import EC2

    kwargs = keywords(args, "ec2", _OPTIONS)
    if "tags" in kwargs:
        kwargs["tags"] = _tags(kwargs["tags"])
    if "requirements" in kwargs:
        kwargs["requirements"] = _requirements(kwargs["requirements"])
    return EC2(spot=bool(args.bigm_ec2_spot), fallback=bool(args.bigm_ec2_fallback), **kwargs)


def _tags(text: str) -> dict[str, str]:
    tags = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--bigm.ec2.tags takes KEY=VALUE,KEY=VALUE, not {text!r}")
        tags[key.strip()] = value.strip()
    return tags


def _requirements(text: str) -> list[str] | None:
    if text.strip().lower() == "auto":
        return None
    if text.strip().lower() == "none":
        return []
    return [r.strip() for r in text.split(",") if r.strip()]
