"""Calls counted per method, cheaply, on the hot path: ``CallStats`` rows and the wrappers that fill them.

A row is a list of floats: calls, errors, seconds, bytes sent and received, cancelled, and a
latency histogram (``BUCKETS``); updating one takes a lock, a few increments and a
``bisect``. Servers count the calls they serve (``rpc.serving``), clients the calls they make
(``begin`` and ``end``: ``rpc.blocking.call``, ``atimed``, ``relayed``). ``bigmachine.metrics`` turns rows into Prometheus families at scrape time.
"""

from __future__ import annotations

import functools
import threading
import time
from bisect import bisect_left
from collections.abc import Callable
from time import perf_counter
from typing import Any, TypeVar

from . import trace

__all__ = ["BUCKETS", "CANCELLED", "COUNT", "ERRORS", "FIRST_BUCKET", "RECEIVED", "SENT", "SUM", "CallStats", "atimed",
           "begin", "end"]

BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
"""Upper bounds (seconds) of the call latency histograms; one more bucket is +Inf."""

COUNT, ERRORS, SUM, SENT, RECEIVED, CANCELLED, FIRST_BUCKET = range(7)  # where each figure sits in a row

F = TypeVar("F", bound=Callable[..., Any])


class CallStats:
    """Calls, errors, cancellations, latency histogram and bytes per method; cheap to update from any thread."""

    def __init__(self) -> None:
        self._rows: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def record(self, method: str, seconds: float, failed: bool, sent: int = 0, received: int = 0,
               cancelled: bool = False) -> None:
        """Counts one finished call (a cancelled one is counted apart, not as an error)."""
        bucket = FIRST_BUCKET + bisect_left(BUCKETS, seconds)
        with self._lock:
            row = self._rows.get(method)
            if row is None:
                row = self._rows[method] = [0] * (FIRST_BUCKET + len(BUCKETS) + 1)
            row[COUNT] += 1
            row[ERRORS] += failed
            row[SUM] += seconds
            row[SENT] += sent
            row[RECEIVED] += received
            row[CANCELLED] += cancelled
            row[bucket] += 1

    def rows(self) -> dict[str, list[float]]:
        """A copy of every method's row (for collectors)."""
        with self._lock:
            return {method: list(row) for method, row in self._rows.items()}

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Per method: calls, errors, cancelled, mean and approximate p50/p99 latency (seconds), bytes."""
        out = {}
        for method, row in sorted(self.rows().items()):
            count = int(row[COUNT])
            buckets = row[FIRST_BUCKET:]
            out[method] = {
                "calls": count, "errors": int(row[ERRORS]), "cancelled": int(row[CANCELLED]), "mean": row[SUM] / count if count else 0.0,
                "p50": _quantile(buckets, count, 0.5), "p99": _quantile(buckets, count, 0.99),
                "sent_bytes": int(row[SENT]), "received_bytes": int(row[RECEIVED]),
            }
        return out


def _quantile(buckets: list[float], count: int, q: float) -> float:
    """The upper bound of the bucket holding quantile ``q`` (the last finite bound past it)."""
    if not count:
        return 0.0
    rank, seen = q * count, 0.0
    for bound, n in zip(BUCKETS, buckets):
        seen += n
        if seen >= rank:
            return bound
    return BUCKETS[-1]


def begin(caller: Any, method: str) -> tuple[trace.Call, float]:
    """A call by ``caller`` (a ``Machine``) starts: its trace entry, and the instant to time it from (``end``)."""
    return trace.record(caller, method), perf_counter()


def end(caller: Any, request: Any, started: tuple[trace.Call, float], failed: bool) -> None:
    """A call ``begin`` started ended: its trace entry and its row are filled in."""
    entry, begun = started
    entry[1], entry[3] = time.time(), failed
    caller.rpc_stats.record(request.method, perf_counter() - begun, failed, request.size)


def atimed(fn: F) -> F:
    """Records each async call of a ``Machine`` method ``(self, request, deadline, timeout)`` in ``self.rpc_stats``,
    and in the machine's call trace (``trace``) from its start, so in-flight calls show (blocking calls:
    ``rpc.blocking``)."""

    @functools.wraps(fn)
    async def call(self: Any, request: Any, deadline: float, timeout: float | None) -> Any:
        started = begin(self, request.method)
        failed = True
        try:
            result = await fn(self, request, deadline, timeout)
            failed = False
            return result
        finally:
            end(self, request, started, failed)

    return call  # type: ignore[return-value]
