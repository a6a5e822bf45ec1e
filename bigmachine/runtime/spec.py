"""``LaunchSpec``: what a system tells a machine it starts, and how it travels (JSON in the environment).

Local processes, the bootstrap agent (EC2, Hosts, Slurm) and the in-process ``Testing``
system all start machines from one of these.
"""

from __future__ import annotations

import json
import os
import signal
from dataclasses import asdict, dataclass, field, fields

from ..rpc.limits import DEFAULT_SERVICE_THREADS

__all__ = ["ENVIRONMENT_VARIABLE", "EXIT_OUT_OF_MEMORY", "FORK_MESSAGE_MAX", "LaunchSpec", "describe_exit"]

ENVIRONMENT_VARIABLE = "BIGMACHINE_LAUNCH_SPEC"
EXIT_OUT_OF_MEMORY = 52  # a machine process's exit status after MemoryError escaped a service
FORK_MESSAGE_MAX = 1 << 20  # bytes of one message to or from the fork server (bigmachine/runtime/forks.py)


@dataclass
class LaunchSpec:
    """Who a machine is, where it listens, its first lease and limits; and, for a process, how to start."""

    session: str
    tls_dir: str
    host: str = "127.0.0.1"
    port: int = 0
    listen_fd: int | None = None  # a socket the system bound for the machine (its address known up front)
    unix_fd: int | None = None  # a Unix socket bound for the driver's own calls, on the same host (Local)
    lease: float = 120.0
    maxprocs: int = 1
    parent: int | None = None  # the driver's pid, for a machine that must end with it
    system: str = "local"
    service_threads: int = DEFAULT_SERVICE_THREADS
    keepalive: tuple[float, float, float] = (2.0, 60.0, 10.0)  # period, timeout, RPC timeout: for dialled peers
    dump_stacks: bool = True  # faulthandler stack dumps when the loop is held (a process of its own only)
    # A process's start: where it reports its address, the driver's sys.path and argv, memory limits.
    report_fd: int | None = None
    path: list[str] = field(default_factory=list)
    argv: list[str] = field(default_factory=list)
    memory_limit: int | None = None
    cgroup_procs: str | None = None

    def to_environment(self) -> dict[str, str]:
        """The environment entry that carries this spec to a machine process."""
        return {ENVIRONMENT_VARIABLE: json.dumps(asdict(self))}

    @classmethod
    def from_environment(cls) -> LaunchSpec:
        """The spec a machine process was started with (removed from its environment: its children don't get it)."""
        values = json.loads(os.environ.pop(ENVIRONMENT_VARIABLE))
        known = {f.name for f in fields(cls)}
        if unknown := set(values) - known:
            raise ValueError(f"launch spec has unknown fields {sorted(unknown)}: driver and machine versions differ?")
        values["keepalive"] = tuple(values.get("keepalive", cls.keepalive))
        return cls(**values)


def describe_exit(code: int) -> str:
    """How a machine process ended, from its exit status (negative: the signal that killed it)."""
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"
