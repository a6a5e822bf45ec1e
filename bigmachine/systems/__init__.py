"""Where machines run: ``Local`` processes, in-process ``Testing`` machines, ``EC2`` instances,
``Slurm`` jobs, and ``Hosts`` you already have (each running the bootstrap agent)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .base import Instance, System
from .local import Local

if TYPE_CHECKING:
    from .bootstrap import BootstrapAuthority
    from .ec2 import EC2
    from .hosts import Hosts
    from .slurm import Slurm
    from .testing import Testing

__all__ = ["EC2", "BootstrapAuthority", "Hosts", "Instance", "Local", "Slurm", "System", "Testing"]


def __getattr__(name: str) -> Any:
    if name == "Testing":  # asyncio is imported by the session, after Local has started its fork server
        from .testing import Testing

        return Testing
    if name == "EC2":  # boto3 is imported only by who uses EC2
        from .ec2 import EC2

        return EC2
    if name == "Slurm":
        from .slurm import Slurm

        return Slurm
    if name == "Hosts":  # cryptography's x509 is imported only by who bootstraps machines
        from .hosts import Hosts

        return Hosts
    if name == "BootstrapAuthority":
        from .bootstrap import BootstrapAuthority

        return BootstrapAuthority
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
