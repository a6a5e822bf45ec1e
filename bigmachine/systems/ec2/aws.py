"""The EC2 (and SSM, Pricing) calls bigmachine makes, with AWS errors translated once, here.

boto3 is synchronous: the EC2 system calls these from its own threads. boto3's
configuration is honoured (credential chain, profiles, ``AWS_ENDPOINT_URL`` and
``AWS_ENDPOINT_URL_EC2`` for a test endpoint such as moto's server).
"""

from __future__ import annotations

import datetime
import getpass
import json
import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from ...errors import Error

__all__ = ["AMI_PARAMETER", "Aws", "AwsError", "SPOT_CAPACITY_ERRORS", "current_user"]

logger = logging.getLogger(__name__)

AMI_PARAMETER = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-{arch}"
# RunInstances errors after which a spot launch falls back to on-demand.
SPOT_CAPACITY_ERRORS = frozenset({
    "InsufficientInstanceCapacity", "InsufficientCapacity", "SpotMaxPriceTooLow", "MaxSpotInstanceCountExceeded",
    "UnfulfillableCapacity", "InsufficientHostCapacity", "InsufficientReservedInstanceCapacity",
})
_TYPES: dict[tuple[str, str], dict[str, Any]] = {}  # (region, instance type) -> facts; they don't change
_TYPES_LOCK = threading.Lock()
_T = TypeVar("_T")


class AwsError(Error):
    """An AWS call failed; ``code`` is AWS's error code (``InvalidInstanceType``, ...)."""

    def __init__(self, message: str, *, code: str = "") -> None:
        super().__init__(message)
        self.code = code

    def __reduce__(self) -> tuple[Any, ...]:
        return _rebuild, (self.args[0] if self.args else "", self.code)


def _rebuild(message: str, code: str) -> AwsError:
    return AwsError(message, code=code)


class Aws:
    """Clients for one region, and the calls the EC2 system and its command make."""

    def __init__(self, region: str | None = None, session: Any = None) -> None:
        import boto3
        from botocore.config import Config

        self.session = session or boto3.Session()
        self.region = region or self.session.region_name
        if not self.region:
            raise Error("no AWS region: pass --bigm.ec2.region (EC2(region=...)), set AWS_DEFAULT_REGION, "
                        "or give your AWS profile a region")
        self._config = Config(retries={"mode": "standard", "max_attempts": 5}, connect_timeout=10, read_timeout=60)
        self.ec2 = self._client("ec2")
        self._ssm: Any = None

    def _client(self, service: str, region: str | None = None, config: Any = None) -> Any:
        return self.session.client(service, region_name=region or self.region, config=config or self._config)

    def call(self, what: str, fn: Callable[..., _T], **params: Any) -> _T:
        """``fn(**params)``, with boto errors turned into AwsError naming ``what``."""
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        try:
            return fn(**params)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code", "Unknown"))
            raise AwsError(f"EC2 {what} failed in {self.region}: {code}: {error.get('Message', exc)}",
                           code=code) from exc
        except NoCredentialsError as exc:
            raise AwsError("no AWS credentials found: configure them as for the AWS CLI (aws configure, "
                           "AWS_PROFILE, an instance profile, ...)", code="NoCredentials") from exc
        except BotoCoreError as exc:
            raise AwsError(f"EC2 {what} failed in {self.region}: {exc}", code=type(exc).__name__) from exc

    # ------------------------------------------------------------------ what to launch

    def instance_type(self, name: str) -> dict[str, Any]:
        """vCPUs, memory (MiB) and architectures of an instance type; AwsError if there is none such."""
        key = (self.region, name)
        with _TYPES_LOCK:
            if key in _TYPES:
                return _TYPES[key]
        try:
            found = self.call("DescribeInstanceTypes", self.ec2.describe_instance_types, InstanceTypes=[name])
        except AwsError as exc:
            if exc.code == "InvalidInstanceType":
                raise AwsError(f"there is no instance type {name!r} in {self.region} (see `aws ec2 "
                               "describe-instance-types`, or pass --bigm.ec2.instance-type)", code=exc.code) from exc
            raise
        facts = found["InstanceTypes"][0]
        info = {"type": name, "vcpus": int(facts["VCpuInfo"]["DefaultVCpus"]),
                "memory_mib": int(facts["MemoryInfo"]["SizeInMiB"]),
                "architectures": list(facts.get("ProcessorInfo", {}).get("SupportedArchitectures", ["x86_64"]))}
        with _TYPES_LOCK:
            _TYPES[key] = info
        return info

    def default_ami(self, arch: str) -> str:
        """The current Amazon Linux 2023 image for ``arch``, from its public SSM parameter."""
        if self._ssm is None:
            self._ssm = self._client("ssm")
        name = AMI_PARAMETER.format(arch="arm64" if arch == "arm64" else "x86_64")
        reply = self.call("GetParameter (SSM)", self._ssm.get_parameter, Name=name)
        return str(reply["Parameter"]["Value"])

    def root_device(self, ami: str) -> str:
        images = self.call("DescribeImages", self.ec2.describe_images, ImageIds=[ami])["Images"]
        if not images:
            raise AwsError(f"there is no image {ami} in {self.region}", code="InvalidAMIID.NotFound")
        return str(images[0].get("RootDeviceName") or "/dev/xvda")

    def vpc(self, subnet: str | None) -> tuple[str, str]:
        """(VPC id, CIDR) of ``subnet``, or of the region's default VPC."""
        if subnet:
            found = self.call("DescribeSubnets", self.ec2.describe_subnets, SubnetIds=[subnet])["Subnets"]
            vpc_id = found[0]["VpcId"]
            vpcs = self.call("DescribeVpcs", self.ec2.describe_vpcs, VpcIds=[vpc_id])["Vpcs"]
        else:
            vpcs = self.call("DescribeVpcs", self.ec2.describe_vpcs,
                             Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"]
            if not vpcs:
                raise AwsError(f"{self.region} has no default VPC: pass a subnet (--bigm.ec2.subnet)", code="NoVpc")
        return str(vpcs[0]["VpcId"]), str(vpcs[0]["CidrBlock"])

    # ------------------------------------------------------------------ security groups

    def create_security_group(self, name: str, vpc: str, ports: tuple[int, int], allow: str,
                              tags: dict[str, str]) -> str:
        """A group with only the machine port range ``ports`` (first, last) open, to ``allow`` and to its own members."""
        first, last = ports
        group = self.call("CreateSecurityGroup", self.ec2.create_security_group, GroupName=name, VpcId=vpc,
                          Description=f"bigmachine machine ports {first}-{last} for {allow} and the group members",
                          TagSpecifications=[{"ResourceType": "security-group", "Tags": _tags(tags)}])["GroupId"]
        self.call("AuthorizeSecurityGroupIngress", self.ec2.authorize_security_group_ingress, GroupId=group,
                  IpPermissions=[
                      {"IpProtocol": "tcp", "FromPort": first, "ToPort": last,
                       "IpRanges": [{"CidrIp": allow, "Description": "bigmachine driver"}]},
                      {"IpProtocol": "tcp", "FromPort": first, "ToPort": last,
                       "UserIdGroupPairs": [{"GroupId": group, "Description": "bigmachine machines"}]},
                  ])
        return str(group)

    def allow(self, group: str, ports: tuple[int, int], cidr: str, description: str) -> None:
        """Opens the port range ``ports`` (first, last) of the group to ``cidr`` (an instance's public address), once."""
        try:
            self.call("AuthorizeSecurityGroupIngress", self.ec2.authorize_security_group_ingress, GroupId=group,
                      IpPermissions=[{"IpProtocol": "tcp", "FromPort": ports[0], "ToPort": ports[1],
                                      "IpRanges": [{"CidrIp": cidr, "Description": description}]}])
        except AwsError as exc:
            if exc.code != "InvalidPermission.Duplicate":
                raise

    def delete_security_group(self, group: str) -> None:
        self.call("DeleteSecurityGroup", self.ec2.delete_security_group, GroupId=group)

    def security_groups(self, filters: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return list(self.call("DescribeSecurityGroups", self.ec2.describe_security_groups,
                              Filters=filters)["SecurityGroups"])

    # ------------------------------------------------------------------ instances

    def run(self, params: dict[str, Any]) -> dict[str, Any]:
        """RunInstances for one instance; returns its description."""
        return dict(self.call("RunInstances", self.ec2.run_instances, **params)["Instances"][0])

    def terminate(self, ids: Iterable[str]) -> None:
        ids = sorted(ids)
        if ids:
            self.call("TerminateInstances", self.ec2.terminate_instances, InstanceIds=ids)

    def instances(self, filters: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Every instance matching the filters (paginated)."""
        paginator = self.ec2.get_paginator("describe_instances")
        pages = self.call("DescribeInstances", lambda: list(paginator.paginate(Filters=filters)))
        return [i for page in pages for r in page["Reservations"] for i in r["Instances"]]

    def spot_requests(self, ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """Spot request id -> its description (``Status`` has the interruption notices)."""
        ids = sorted(ids)
        if not ids:
            return {}
        found = self.call("DescribeSpotInstanceRequests", self.ec2.describe_spot_instance_requests,
                          SpotInstanceRequestIds=ids)["SpotInstanceRequests"]
        return {r["SpotInstanceRequestId"]: r for r in found}

    def cancel_spot_requests(self, ids: Iterable[str]) -> None:
        ids = sorted(ids)
        if ids:
            self.call("CancelSpotInstanceRequests", self.ec2.cancel_spot_instance_requests, SpotInstanceRequestIds=ids)

    # ------------------------------------------------------------------ prices (USD per hour)

    def spot_price(self, instance_type: str, zone: str) -> float | None:
        history = self.call("DescribeSpotPriceHistory", self.ec2.describe_spot_price_history,
                            InstanceTypes=[instance_type], AvailabilityZone=zone,
                            ProductDescriptions=["Linux/UNIX", "Linux/UNIX (Amazon VPC)"],
                            StartTime=datetime.datetime.now(datetime.timezone.utc))["SpotPriceHistory"]
        history.sort(key=lambda h: h["Timestamp"], reverse=True)
        return float(history[0]["SpotPrice"]) if history else None

    def on_demand_price(self, instance_type: str) -> float | None:
        """The Linux on-demand price from the Pricing API (served in us-east-1 only)."""
        from botocore.config import Config

        pricing = self._client("pricing", "us-east-1", Config(retries={"max_attempts": 1}, connect_timeout=5,
                                                              read_timeout=10))
        filters = {"instanceType": instance_type, "regionCode": self.region, "operatingSystem": "Linux",
                   "tenancy": "Shared", "preInstalledSw": "NA", "capacitystatus": "Used"}
        reply = self.call("GetProducts (Pricing)", pricing.get_products, ServiceCode="AmazonEC2", MaxResults=1,
                          Filters=[{"Type": "TERM_MATCH", "Field": k, "Value": v} for k, v in filters.items()])
        for item in reply.get("PriceList", []):
            product = json.loads(item) if isinstance(item, str) else item
            for term in product.get("terms", {}).get("OnDemand", {}).values():
                for dimension in term.get("priceDimensions", {}).values():
                    usd = dimension.get("pricePerUnit", {}).get("USD")
                    if usd is not None:
                        return float(usd)
        return None


def _tags(tags: dict[str, str]) -> list[dict[str, str]]:
    return [{"Key": k, "Value": v} for k, v in tags.items()]


def current_user() -> str:
    """Who runs the driver, for the ``bigmachine:user`` tag."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"
