"""The driver's recent calls per machine (start, end, method, failed), for the debug server's live timeline.

Each call appends one record to its machine's bounded ring when it starts and fills
in its end when it finishes, so in-flight calls are visible: ``rpc.blocking.call`` and
``rpc.stats.atimed`` record every call of a ``Machine``; the cost is a dict lookup,
a list and a deque append per call (measured in docs/debug-server.md).
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Any

__all__ = ["RING", "Call", "calls", "record"]

RING = 2000  # calls kept per machine: a minute of a busy machine at ~30 calls/s

Call = list[Any]
"""``[start, end or None while running, method, failed]``: ``time.time()`` instants."""

_ATTR = "_calltrace_ring"  # the ring lives on the machine object: no lookup table, gone with the machine
_lock = threading.Lock()


def _ring(machine: Any) -> collections.deque[Call]:
    ring: collections.deque[Call] | None = getattr(machine, _ATTR, None)
    if ring is None:
        with _lock:
            ring = machine.__dict__.setdefault(_ATTR, collections.deque(maxlen=RING))
    return ring


def record(machine: Any, method: str) -> Call:
    """Starts the record of a call to ``machine``; the caller sets ``[1]`` (end) and ``[3]`` (failed)."""
    call: Call = [time.time(), None, method, False]
    _ring(machine).append(call)
    return call


def calls(machine: Any, since: float = 0.0) -> list[Call]:
    """Copies of ``machine``'s recorded calls still running or ended after ``since``, oldest first."""
    ring = getattr(machine, _ATTR, None)
    if ring is None:
        return []
    return [list(c) for c in list(ring) if c[1] is None or c[1] >= since]
