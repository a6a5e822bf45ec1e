"""Where machines run: ``Local`` processes, in-process ``Testing`` machines, ``EC2`` instances."""

from __future__ import annotations

from typing import Any

from .base import Instance, System
from .local import Local
from .testing import Testing

__all__ = ["EC2", "Instance", "Local", "System", "Testing"]


def __getattr__(name: str) -> Any:
    if name == "EC2":  # boto3 is imported only by who uses EC2
        from .ec2 import EC2

        return EC2
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
