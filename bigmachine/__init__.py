"""bigmachine: self-managing serverless computing for Python.

A driver starts an ad-hoc cluster of machines, installs stateful services on them,
and calls their methods over mutually authenticated HTTPS.
"""

from __future__ import annotations

from . import expvar, systems
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
from .executor import Executor
from .machine import Machine
from .params import Environ, Services
from .session import B, start
from .state import RUNNING, STARTING, STOPPED, UNSTARTED, State
from .version import __version__ as __version__

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
