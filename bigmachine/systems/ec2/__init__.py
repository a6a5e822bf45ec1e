"""The EC2 system: machines on EC2 instances, bootstrapped by an agent, terminated with their session.

    with bigmachine.start(EC2(instance_type="c7i.4xlarge", spot=True)) as b: ...
    python prog.py --bigm.system=ec2 --bigm.ec2.instance-type=c7i.4xlarge --bigm.ec2.spot

A machine is one Python process, whose plain methods share one interpreter lock, so an
instance runs ``vcpus // cores_per_machine`` machines (16 on a c7i.4xlarge by
default), each with ``maxprocs = cores_per_machine`` and its share of the instance's
memory. ``b.start(n)`` makes ``ceil(n / that)`` RunInstances calls at once (spot first
when asked, falling back to on-demand when EC2 has no spot capacity) and returns;
each instance's user-data installs Python and bigmachine and runs one bootstrap agent
(``bigmachine.systems.agent``), which the driver reaches over mutual TLS once per
machine to ship its code and start it on its own port (the agent's port plus 1, 2,
...). Every instance carries the tag ``bigmachine:session``, terminates when it powers
off, and powers off when its last machine ends (a lapsed lease included); a machine
that ends leaves its neighbours running. ``b.shutdown()`` terminates every instance
of the session. An instance whose agent goes quiet is looked up (DescribeInstances,
rate-limited and shared by the session's instances): one interrupted (spot notice,
stopping, terminated) stops its machines at once with the reason. ``python -m bigmachine.systems.ec2 list`` and
``terminate`` find instances left behind by their tags.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import ipaddress
import logging
import secrets
import socket
import sys
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from ...errors import Error
from ...version import __version__
from ..base import Instance, System
from ..bootstrap import BootstrapAuthority
from ..memory import parse_size
from ..shipping import Shipment, collect
from . import userdata
from .aws import SPOT_CAPACITY_ERRORS, Aws, AwsError, current_user
from .instances import EC2Host, EC2Instance

if TYPE_CHECKING:
    from ...machine import Machine
    from ...session import B

__all__ = ["EC2", "EC2Host", "EC2Instance"]

logger = logging.getLogger(__name__)

DEFAULT_PORT = 9443
SESSION_TAG = "bigmachine:session"
_CHECKIP = "https://checkip.amazonaws.com/"
_T = TypeVar("_T")


class EC2(System):
    """Machines on EC2 instances, ``vcpus // cores_per_machine`` per instance; see the module's docstring."""

    name = "ec2"
    start_timeout = 600.0  # boot, install Python and bigmachine, ship the code, run init
    describe_interval = 5.0  # DescribeInstances is called at most this often (seconds)

    def __init__(self, *, region: str | None = None, instance_type: str = "m5.large", spot: bool = False,
                 ami: str | None = None, max_price: float | None = None, fallback: bool = True,
                 subnet: str | None = None, security_group: str | None = None, allow: str | None = None,
                 address: str = "public", port: int = DEFAULT_PORT, instance_profile: str | None = None,
                 key_pair: str | None = None, disk: int | None = None, tags: Mapping[str, str] | None = None,
                 requirements: Sequence[str] | None = None, package: str | None = None, price: float | None = None,
                 cores_per_machine: int = 1, memory_limit: int | float | str | None = None,
                 boto3_session: Any = None, keepalive_period: float = 5.0, keepalive_timeout: float = 60.0,
                 keepalive_rpc_timeout: float = 10.0, **options: Any) -> None:
        """``cores_per_machine``: vCPUs per machine (its ``maxprocs``); an instance runs ``vcpus // cores_per_machine``
        machines. ``memory_limit`` bounds each machine (default: the instance's memory divided by its machines).
        ``options``: ``start_timeout``, ``service_threads``, ``max_connections`` (see ``System``)."""
        super().__init__(keepalive_period=keepalive_period, keepalive_timeout=keepalive_timeout,
                         keepalive_rpc_timeout=keepalive_rpc_timeout, **options)
        if not isinstance(cores_per_machine, int) or isinstance(cores_per_machine, bool) or cores_per_machine < 1:
            raise ValueError(f"cores_per_machine must be a whole number >= 1, not {cores_per_machine!r}")
        if address not in ("public", "private"):
            raise ValueError(f"address must be 'public' or 'private', not {address!r}")
        if not 0 < port < 65536:
            raise ValueError(f"port must be between 1 and 65535, not {port}")
        for label, value in (("max_price", max_price), ("disk", disk), ("price", price)):
            if value is not None and value <= 0:
                raise ValueError(f"{label} must be > 0, not {value}")
        if allow is not None:
            allow = str(ipaddress.ip_network(allow, strict=False))
        self.region, self.instance_type, self.spot, self.ami = region, instance_type, spot, ami
        self.max_price, self.fallback, self.subnet, self.security_group = max_price, fallback, subnet, security_group
        self.allow, self.address, self.port = allow, address, port
        self.instance_profile, self.key_pair, self.disk = instance_profile, key_pair, disk
        self.tags = dict(tags or {})
        self.requirements = None if requirements is None else list(requirements)
        self.package = package or f"bigmachine=={__version__}"
        self.price = price
        self.cores_per_machine = cores_per_machine
        self.memory_limit = parse_size(memory_limit) if memory_limit is not None else None
        self._boto3_session = boto3_session
        self.info: dict[str, Any] = {}
        self._session: B | None = None

    def __repr__(self) -> str:
        market = "spot" if self.spot else "on-demand"
        return f"EC2({self.region or 'default region'}, {self.instance_type}, {market})"

    # ------------------------------------------------------------------ System

    def init(self, session: B) -> None:
        self._session = session
        self.aws = Aws(self.region, self._boto3_session)
        self.region = self.aws.region
        self.info = self.aws.instance_type(self.instance_type)  # validated here: a typo fails at once
        if self.cores_per_machine > self.info["vcpus"]:
            raise Error(f"cores_per_machine={self.cores_per_machine} is more than the {self.info['vcpus']} vCPUs of "
                        f"{self.instance_type}: pass at most {self.info['vcpus']}, or a larger instance type")
        self.authority = BootstrapAuthority(lifetime=self.start_timeout + 300)
        self.hosts: dict[str, EC2Host] = {}  # instance id -> the instance and its machines
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._prepared: asyncio.Future[tuple[str, str | None]] | None = None
        self._created_group: str | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._round_task: asyncio.Task[None] | None = None
        self._last_round = 0.0
        self._doomed: set[str] = set()
        self._terminated: set[str] = set()
        self._terminating: asyncio.Task[None] | None = None
        self._prices: dict[tuple[str, str], float | None] = {}

    def maxprocs(self) -> int:
        return self.cores_per_machine

    @property
    def machines_per_instance(self) -> int:
        """How many machines each instance runs: a machine per ``cores_per_machine`` vCPUs."""
        return max(1, int(self.info.get("vcpus", 1)) // self.cores_per_machine)

    async def launch(self, session: B, machines: list[Machine], environ: dict[str, str]) -> list[Instance | BaseException]:
        try:
            ami, root = await self._prepare()
            shipment = await self._api(collect, self.requirements)
        except Exception as exc:  # noqa: BLE001 - no machine can start: each gets the reason
            return [exc] * len(machines)
        per = self.machines_per_instance
        groups = [machines[i:i + per] for i in range(0, len(machines), per)]
        results = await asyncio.gather(*(self._launch_host(g, ami, root, shipment, environ) for g in groups),
                                       return_exceptions=True)
        launched: list[Instance | BaseException] = []
        for group, result in zip(groups, results):
            launched += result if isinstance(result, list) else [result] * len(group)
        return launched

    async def shutdown(self) -> None:
        if self._session is None:
            return
        try:
            await self._terminate_session()
            if self._created_group is not None:
                await self._delete_group(self._created_group)
            total = self.cost()
            if total["instances"]:
                logger.info("session %s: %d EC2 instances, about $%.4f", self._session.name, total["instances"],
                            total["usd_so_far"])
        finally:
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            if self._executor is not None:
                await asyncio.to_thread(self._executor.shutdown, True)
                self._executor = None

    def cost(self) -> dict[str, Any]:
        """The session's instances: how many, their price per hour (running ones), their cost so far (USD)."""
        instances = list(getattr(self, "hosts", {}).values())  # each instance once, whatever its machines
        return {"instances": len(instances),
                "usd_per_hour": round(sum(i.price or 0.0 for i in instances if i.ended is None), 4),
                "usd_so_far": round(sum(i.cost() for i in instances), 4)}

    # ------------------------------------------------------------------ launching

    async def _api(self, fn: Callable[..., _T], *args: Any) -> _T:
        """Runs a (blocking) AWS call on the system's threads."""
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(8, thread_name_prefix="bigmachine-ec2")
        return await asyncio.get_running_loop().run_in_executor(self._executor, functools.partial(fn, *args))

    async def _prepare(self) -> tuple[str, str | None]:
        """Once per session: the image (and its root device, for a disk size) and the security group."""
        if self._prepared is None or (self._prepared.done() and self._prepared.exception() is not None):
            self._prepared = asyncio.ensure_future(self._resolve())
        return await asyncio.shield(self._prepared)

    async def _resolve(self) -> tuple[str, str | None]:
        arch = "arm64" if "arm64" in self.info["architectures"] else "x86_64"
        ami = self.ami if self.ami is not None else await self._api(self.aws.default_ami, arch)
        root = await self._api(self.aws.root_device, ami) if self.disk else None
        if self.security_group is None:
            await self._api(self._sweep_groups)
            vpc, cidr = await self._api(self.aws.vpc, self.subnet)
            allow = self.allow or (cidr if self.address == "private" else await self._api(_driver_address))
            assert self._session is not None
            self.security_group = self._created_group = await self._api(
                self.aws.create_security_group, _group_name(self._session.name), vpc, self.ports, allow,
                self._tags())
            logger.info("security group %s: ports %d-%d open to %s and the session's machines", self.security_group,
                        *self.ports, allow)
        return ami, root

    @property
    def ports(self) -> tuple[int, int]:
        """The machine port range: the agent's port, then one port per machine of an instance."""
        return self.port, self.port + self.machines_per_instance

    async def _launch_host(self, machines: list[Machine], ami: str, root: str | None, shipment: Shipment,
                           environ: dict[str, str]) -> list[Instance | BaseException]:
        """One instance for ``machines``: its agent starts them all."""
        assert self._session is not None
        names = [m.name for m in machines]
        agent = f"{self._session.name}/{names[0]}/{secrets.token_hex(4)}"
        script = userdata.render(self.authority.credentials(agent), session=self._session.name, machines=names,
                                 port=self.port, python="{}.{}".format(*sys.version_info[:2]), package=self.package,
                                 version=__version__)
        params = self._run_params(names, ami, root, script)
        desc = await self._api(self._run, params)
        host = EC2Host(self, desc, agent)
        self.hosts[host.id] = host
        logger.info("%s: launched %s (%s, %s) in %s", " ".join(names), host.id, host.instance_type, host.market,
                    host.zone)
        return [EC2Instance(host, m, shipment, environ) for m in machines]

    def _run(self, params: dict[str, Any]) -> dict[str, Any]:
        """RunInstances: spot first when asked, then on-demand if EC2 has no spot capacity (and fallback is on)."""
        if not self.spot:
            return self.aws.run(params)
        options: dict[str, Any] = {"SpotInstanceType": "one-time", "InstanceInterruptionBehavior": "terminate"}
        if self.max_price is not None:
            options["MaxPrice"] = f"{self.max_price:.4f}"
        spot_params = {**params, "ClientToken": params["ClientToken"] + "-spot",
                       "InstanceMarketOptions": {"MarketType": "spot", "SpotOptions": options},
                       "TagSpecifications": [*params["TagSpecifications"],
                                             {"ResourceType": "spot-instances-request",
                                              "Tags": params["TagSpecifications"][0]["Tags"]}]}
        try:
            return self.aws.run(spot_params)
        except AwsError as exc:
            if not self.fallback or exc.code not in SPOT_CAPACITY_ERRORS:
                raise
            logger.warning("no spot %s to be had (%s); launching on demand instead", self.instance_type, exc.code)
        return self.aws.run(params)

    def _run_params(self, machines: list[str], ami: str, root: str | None, script: str) -> dict[str, Any]:
        assert self._session is not None
        names = " ".join(machines)[:255]  # a tag value's limit
        tags = [{"Key": k, "Value": v} for k, v in {**self._tags(), "bigmachine:machines": names,
                                                    "Name": f"bigmachine {self._session.name} {names}"[:255]}.items()]
        params: dict[str, Any] = {
            "ImageId": ami, "InstanceType": self.instance_type, "MinCount": 1, "MaxCount": 1, "UserData": script,
            "InstanceInitiatedShutdownBehavior": "terminate",
            "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled", "HttpPutResponseHopLimit": 1},
            "TagSpecifications": [{"ResourceType": "instance", "Tags": tags}, {"ResourceType": "volume", "Tags": tags}],
            "ClientToken": f"{self._session.name}-{machines[0]}"[:58],  # the spot call adds "-spot": 64 at most
        }
        if self.subnet and self.address == "public":
            params["NetworkInterfaces"] = [{"DeviceIndex": 0, "SubnetId": self.subnet, "AssociatePublicIpAddress": True,
                                            "Groups": [self.security_group], "DeleteOnTermination": True}]
        else:
            params["SecurityGroupIds"] = [self.security_group]
            if self.subnet:
                params["SubnetId"] = self.subnet
        if self.instance_profile:
            key = "Arn" if self.instance_profile.startswith("arn:") else "Name"
            params["IamInstanceProfile"] = {key: self.instance_profile}
        if self.key_pair:
            params["KeyName"] = self.key_pair
        if self.disk and root:
            params["BlockDeviceMappings"] = [{"DeviceName": root, "Ebs": {"VolumeSize": int(self.disk),
                                                                          "VolumeType": "gp3",
                                                                          "DeleteOnTermination": True}}]
        return params

    def _tags(self) -> dict[str, str]:
        assert self._session is not None
        return {**self.tags, SESSION_TAG: self._session.name, "bigmachine:driver-host": socket.gethostname(),
                "bigmachine:user": current_user()}

    async def _open_to(self, instance: EC2Host) -> None:
        """Lets the session's machines reach one over its public address (our own group only)."""
        if self._created_group is None or not instance.public_ip or self.address != "public":
            return
        await self._api(self.aws.allow, self._created_group, self.ports, f"{instance.public_ip}/32",
                        f"bigmachine instance {instance.id}")

    async def _price(self, instance: EC2Host) -> float | None:
        if self.price is not None:
            return self.price
        key = (instance.market, instance.zone if instance.market == "spot" else "")
        if key not in self._prices:
            try:
                if instance.market == "spot":
                    self._prices[key] = await self._api(self.aws.spot_price, self.instance_type, instance.zone)
                else:
                    self._prices[key] = await self._api(self.aws.on_demand_price, self.instance_type)
            except Error as exc:
                logger.info("no %s price for %s: %s", instance.market, self.instance_type, exc)
                self._prices[key] = None
        return self._prices[key]

    # ------------------------------------------------------------------ watching

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _round(self) -> None:
        """One DescribeInstances of the whole session, shared by whoever asks meanwhile; rate-limited."""
        if self._round_task is None or self._round_task.done():
            self._round_task = self._spawn(self._describe())
        await asyncio.shield(self._round_task)

    async def _describe(self) -> None:
        wait = self._last_round + self.describe_interval - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        self._last_round = time.monotonic()
        assert self._session is not None
        try:
            found = await self._api(self.aws.instances, [{"Name": f"tag:{SESSION_TAG}",
                                                          "Values": [self._session.name]}])
            notices: dict[str, dict[str, Any]] = {}
            suspects = {i.spot_request for i in self.hosts.values() if i.suspected and i.spot_request}
            if suspects:
                notices = await self._api(self.aws.spot_requests, suspects)
        except Error as exc:
            logger.warning("session %s: could not describe its instances: %s", self._session.name, exc)
            return
        by_id = {d["InstanceId"]: d for d in found}
        for iid, instance in list(self.hosts.items()):
            instance.observe(by_id.get(iid), notices.get(instance.spot_request or ""))

    async def _terminate(self, iid: str) -> None:
        """Terminates an instance, batched with the others terminated at the same moment."""
        self._doomed.add(iid)
        while iid not in self._terminated:
            if self._terminating is None or self._terminating.done():
                self._terminating = self._spawn(self._terminate_batch())
            await asyncio.shield(self._terminating)

    async def _terminate_batch(self) -> None:
        await asyncio.sleep(0)  # the other kills of this moment join
        ids = self._doomed - self._terminated
        try:
            await self._api(self.aws.terminate, ids)
        except Error as exc:
            logger.error("could not terminate %s: %s; `python -m bigmachine.systems.ec2 terminate --session %s` "
                         "retries", " ".join(sorted(ids)), exc, self._session.name if self._session else "?")
        self._terminated |= ids

    async def _terminate_session(self) -> None:
        """Terminates every instance tagged with the session (one whose launch was cut short too)."""
        assert self._session is not None
        try:
            found = await self._api(self.aws.instances, [
                {"Name": f"tag:{SESSION_TAG}", "Values": [self._session.name]},
                {"Name": "instance-state-name", "Values": ["pending", "running", "stopping", "stopped"]}])
            await self._api(self.aws.terminate, {d["InstanceId"] for d in found})
            spot = {i.spot_request for i in self.hosts.values() if i.spot_request}
            await self._api(self.aws.cancel_spot_requests, spot)
        except Error as exc:
            logger.error("session %s: could not terminate its instances: %s; run `python -m "
                         "bigmachine.systems.ec2 terminate --session %s`", self._session.name, exc, self._session.name)

    async def _delete_group(self, group: str, patience: float = 12.0) -> None:
        """Deletes the session's group once its instances are gone, or says how to later."""
        deadline = time.monotonic() + patience
        while True:
            try:
                await self._api(self.aws.delete_security_group, group)
                return
            except AwsError as exc:
                if exc.code != "DependencyViolation" or time.monotonic() > deadline:
                    logger.warning("security group %s is left until its instances are gone (%s); the next EC2 "
                                   "session, or `python -m bigmachine.systems.ec2 terminate --all-mine`, deletes it",
                                   group, exc.code)
                    return
            await asyncio.sleep(2.0)

    def _sweep_groups(self) -> None:
        """Deletes groups earlier sessions of this user and host left behind, once their instances are gone."""
        from .cli import delete_groups

        try:
            delete_groups(self.aws, [{"Name": "tag:bigmachine:user", "Values": [current_user()]},
                                     {"Name": "tag:bigmachine:driver-host", "Values": [socket.gethostname()]}])
        except Error as exc:
            logger.debug("could not sweep old security groups: %s", exc)


def _group_name(session: str) -> str:
    return "bigmachine-" + "".join(c if c.isalnum() or c in "-_." else "-" for c in session)[:200]


def _driver_address() -> str:
    """The driver's public address, as AWS sees it (for the security group's one rule)."""
    try:
        with urllib.request.urlopen(_CHECKIP, timeout=10) as reply:  # noqa: S310 - a fixed https URL
            ip = ipaddress.ip_address(reply.read().decode().strip())
    except (OSError, ValueError) as exc:
        raise Error(f"could not find the driver's public address at {_CHECKIP} ({exc}); pass the address range "
                    "machines accept the driver from: --bigm.ec2.allow CIDR") from exc
    return f"{ip}/{32 if ip.version == 4 else 128}"

