"""bigmachine: self-managing serverless computing for Python.

A driver starts an ad-hoc cluster of machines, installs stateful services on them,
and calls their methods over mutually authenticated HTTPS.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from . import expvar
from .errors import (
    Cancelled,
    Error,
    MachineStopped,
    NotFound,
    OutOfMemory,
    ProtocolError,
    RemoteError,
    SerializationError,
    Unavailable,
)
from .params import Environ, Services
from .starting import start
from .state import RUNNING, STARTING, STOPPED, UNSTARTED, State
from .version import __version__ as __version__

if TYPE_CHECKING:
    from . import systems
    from .executor import Executor
    from .machine import Machine
    from .session import B

__all__ = [
    "B",
    "Cancelled",
    "Environ",
    "Error",
    "Executor",
    "Machine",
    "MachineStopped",
    "NotFound",
    "OutOfMemory",
    "ProtocolError",
    "RUNNING",
    "RemoteError",
    "STARTING",
    "STOPPED",
    "SerializationError",
    "Services",
    "State",
    "UNSTARTED",
    "Unavailable",
    "expvar",
    "start",
    "systems",
]


_LAZY = {"B": ".session", "Executor": ".executor", "Machine": ".machine"}  # name: the module defining it


def __getattr__(name: str) -> Any:
    """The session's classes and ``systems`` load on first use. ``import bigmachine`` stays free of asyncio,
    so ``start`` begins the machines' fork server before the driver's heavier imports."""
    if name == "systems":  # not ``from . import systems``: that asks this very function first
        return importlib.import_module(".systems", __name__)
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    """The lazily loaded names too, for completion in notebooks and shells."""
    return sorted({*globals(), *__all__})
