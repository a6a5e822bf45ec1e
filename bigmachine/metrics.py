"""Prometheus metrics of one process (the driver or a machine): bigmachine's built-ins beside the user's.

Calls are counted on the hot path in plain per-method rows (``CallStats``: a lock, a
few list increments and a ``bisect``); they become Prometheus families only when
scraped, by the collectors below. ``exposition`` renders this process's default
``prometheus_client`` registry (process CPU and memory, GC, the users' own metrics)
together with those collectors. Nothing here imports ``prometheus_client`` until a
scrape, so a machine boots without it. Built-in names (Prometheus conventions):

- ``bigmachine_rpc_server_calls_total``, ``..._errors_total``, ``..._duration_seconds``
  (histogram), ``..._received_bytes_total``, ``..._sent_bytes_total``: by ``method``,
  served by a machine.
- ``bigmachine_rpc_client_calls_total``, ``..._errors_total``, ``..._duration_seconds``
  (histogram), ``..._sent_bytes_total``: by ``peer`` (the machine called) and ``method``,
  made by the driver.
- ``bigmachine_machines``: the driver's machines by ``state``.
- ``bigmachine_keepalive_latency_seconds``: the driver's last keepalive reply time per ``peer``.

The label ``machine`` is left to whoever scrapes: the debug server's merged exposition
and its ``http_sd`` targets set it to the process a series comes from (issue 13).
"""

from __future__ import annotations

import functools
import threading
from bisect import bisect_left
from collections.abc import Awaitable, Callable, Iterable, Iterator
from time import perf_counter
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from .session import B

__all__ = ["BUCKETS", "CallStats", "atimed", "driver_exposition", "exposition", "machine_exposition", "timed"]

BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
"""Upper bounds (seconds) of the call latency histograms; one more bucket is +Inf."""

_COUNT, _ERRORS, _SUM, _SENT, _RECEIVED, _CANCELLED, _FIRST_BUCKET = range(7)
_STREAM = b"application/x-bigmachine-stream"  # rpc.wire.STREAM; a reply made of frames
_FAIL_FRAME = b"e"  # rpc.wire.FAIL: a streamed reply that failed half-way

F = TypeVar("F", bound=Callable[..., Any])


class CallStats:
    """Calls, errors, cancellations, latency histogram and bytes per method; cheap to update from any thread."""

    def __init__(self) -> None:
        self._rows: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def record(self, method: str, seconds: float, failed: bool, sent: int = 0, received: int = 0,
               cancelled: bool = False) -> None:
        """Counts one finished call (a cancelled one is counted apart, not as an error)."""
        bucket = _FIRST_BUCKET + bisect_left(BUCKETS, seconds)
        with self._lock:
            row = self._rows.get(method)
            if row is None:
                row = self._rows[method] = [0] * (_FIRST_BUCKET + len(BUCKETS) + 1)
            row[_COUNT] += 1
            row[_ERRORS] += failed
            row[_SUM] += seconds
            row[_SENT] += sent
            row[_RECEIVED] += received
            row[_CANCELLED] += cancelled
            row[bucket] += 1

    def rows(self) -> dict[str, list[float]]:
        """A copy of every method's row (for collectors)."""
        with self._lock:
            return {method: list(row) for method, row in self._rows.items()}

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Per method: calls, errors, cancelled, mean and approximate p50/p99 latency (seconds), bytes."""
        out = {}
        for method, row in sorted(self.rows().items()):
            count = int(row[_COUNT])
            buckets = row[_FIRST_BUCKET:]
            out[method] = {
                "calls": count, "errors": int(row[_ERRORS]), "cancelled": int(row[_CANCELLED]), "mean": row[_SUM] / count if count else 0.0,
                "p50": _quantile(buckets, count, 0.5), "p99": _quantile(buckets, count, 0.99),
                "sent_bytes": int(row[_SENT]), "received_bytes": int(row[_RECEIVED]),
            }
        return out

    async def measure(self, method: str, handler: Callable[[str, Any, Any, Any], Awaitable[bool]],
                      scope: Any, receive: Any, send: Any) -> None:
        """Serves one ASGI call with ``handler(method, scope, receive, send)``, counting its time, bytes and failure (4xx, 5xx, failed stream).

        ``handler`` returns True when the caller cancelled the call (it disconnected): counted as cancelled.
        """
        begun = perf_counter()
        counts = [0, 0, 0]  # received, sent, failed
        streamed = False

        async def counting_receive() -> Any:
            message = await receive()
            counts[0] += len(message.get("body", b""))
            return message

        async def counting_send(message: Any) -> None:
            nonlocal streamed
            body = message.get("body")
            if body:
                counts[1] += len(body)
                if streamed and body[:1] == _FAIL_FRAME:
                    counts[2] = 1
            elif message["type"] == "http.response.start":
                counts[2] = message["status"] >= 400
                streamed = (b"content-type", _STREAM) in message.get("headers", ())
            await send(message)

        cancelled = False
        try:
            cancelled = await handler(method, scope, counting_receive, counting_send)
        except BaseException:
            counts[2] = 1
            raise
        finally:
            self.record(method, perf_counter() - begun, bool(counts[2]) and not cancelled, counts[1], counts[0],
                        cancelled)


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


def timed(fn: F) -> F:
    """Records each sync call of a ``Machine`` method ``(self, request, deadline, timeout)`` in ``self.rpc_stats``."""

    @functools.wraps(fn)
    def call(self: Any, request: Any, deadline: float, timeout: float | None) -> Any:
        begun = perf_counter()
        failed = True
        try:
            result = fn(self, request, deadline, timeout)
            failed = False
            return result
        finally:
            self.rpc_stats.record(request.method, perf_counter() - begun, failed, len(request.data))

    return call  # type: ignore[return-value]


def atimed(fn: F) -> F:
    """The async twin of ``timed``."""

    @functools.wraps(fn)
    async def call(self: Any, request: Any, deadline: float, timeout: float | None) -> Any:
        begun = perf_counter()
        failed = True
        try:
            result = await fn(self, request, deadline, timeout)
            failed = False
            return result
        finally:
            self.rpc_stats.record(request.method, perf_counter() - begun, failed, len(request.data))

    return call  # type: ignore[return-value]


# ------------------------------------------------------------------ collectors (scrape time only)


def _call_families(prefix: str, what: str, rows: Iterable[tuple[dict[str, str], list[float]]],
                   received: bool) -> Iterator[Metric]:
    """Counters and a latency histogram of calls; ``rows`` are (labels, CallStats row)."""
    from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

    rows = list(rows)
    names = sorted({k for labels, _ in rows for k in labels})
    calls = CounterMetricFamily(f"{prefix}_calls", f"RPC calls {what}, finished.", labels=names)
    errors = CounterMetricFamily(f"{prefix}_errors", f"RPC calls {what} that failed.", labels=names)
    duration = HistogramMetricFamily(f"{prefix}_duration_seconds", f"Latency of RPC calls {what}.", labels=names)
    sent = CounterMetricFamily(f"{prefix}_sent_bytes", f"Bytes sent in RPC calls {what}.", labels=names)
    got = CounterMetricFamily(f"{prefix}_received_bytes", f"Bytes received in RPC calls {what}.", labels=names)
    for labels, row in rows:
        values = [labels[k] for k in names]
        calls.add_metric(values, row[_COUNT])
        errors.add_metric(values, row[_ERRORS])
        sent.add_metric(values, row[_SENT])
        got.add_metric(values, row[_RECEIVED])
        cumulative, buckets = 0.0, []
        for bound, n in zip([*map(repr, BUCKETS), "+Inf"], row[_FIRST_BUCKET:]):
            cumulative += n
            buckets.append((bound, cumulative))
        duration.add_metric(values, buckets, row[_SUM])
    yield from (calls, errors, duration, sent)
    if received:
        yield got


class _Collector:
    def __init__(self, collect: Callable[[], Iterator[Metric]]) -> None:
        self.collect = collect


class _Joined:
    """The default registry's families followed by ``extra`` collectors' (what ``generate_latest`` reads)."""

    def __init__(self, *extra: _Collector) -> None:
        self.extra = extra

    def collect(self) -> Iterator[Metric]:
        from prometheus_client import REGISTRY

        yield from REGISTRY.collect()
        for collector in self.extra:
            yield from collector.collect()


def exposition(*collectors: _Collector) -> bytes:
    """Prometheus text exposition of the default registry plus ``collectors``."""
    from prometheus_client import generate_latest

    return generate_latest(_Joined(*collectors))


def machine_exposition(stats: CallStats) -> bytes:
    """A machine's exposition: its process and users' metrics, and the calls its services served."""

    def collect() -> Iterator[Metric]:
        rows = (({"method": method}, row) for method, row in sorted(stats.rows().items()))
        yield from _call_families("bigmachine_rpc_server", "served by this machine", rows, received=True)

    return exposition(_Collector(collect))


def driver_exposition(b: B) -> bytes:
    """The driver's exposition: its process and users' metrics, its machines, and the calls it made."""
    return exposition(_Collector(lambda: _driver_families(b)))


def _driver_families(b: B) -> Iterator[Metric]:
    from prometheus_client.core import GaugeMetricFamily

    from .state import State

    machines = b.machines()
    by_state = GaugeMetricFamily("bigmachine_machines", "Machines of this session by state.", labels=["state"])
    for state in State:
        by_state.add_metric([state.name], sum(1 for m in machines if m.state == state))
    yield by_state
    keepalive = GaugeMetricFamily("bigmachine_keepalive_latency_seconds",
                                  "Time the last keepalive of each running machine took.", labels=["peer"])
    rows = []
    for m in machines:
        if not m.addr:
            continue
        times = m.keepalive_reply_times()
        if times and m.state == State.RUNNING:
            keepalive.add_metric([m.addr], times[0])
        stats = getattr(m, "rpc_stats", None)
        if stats is not None:
            rows += [({"peer": m.addr, "method": method}, row) for method, row in sorted(stats.rows().items())]
    yield keepalive
    yield from _call_families("bigmachine_rpc_client", "made by the driver", rows, received=False)
