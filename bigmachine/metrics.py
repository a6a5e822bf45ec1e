"""Prometheus metrics of one process (the driver or a machine): bigmachine's built-ins beside the user's.

Calls are counted on the hot path in plain per-method rows (``rpc.stats.CallStats``);
they become Prometheus families only when scraped, by the collectors below. ``exposition`` renders this process's default
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

from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from .rpc.stats import COUNT, ERRORS, FIRST_BUCKET, RECEIVED, SENT, SUM, BUCKETS, CallStats

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from .session import B

__all__ = ["driver_exposition", "exposition", "machine_exposition"]

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
        calls.add_metric(values, row[COUNT])
        errors.add_metric(values, row[ERRORS])
        sent.add_metric(values, row[SENT])
        got.add_metric(values, row[RECEIVED])
        cumulative, buckets = 0.0, []
        for bound, n in zip([*map(repr, BUCKETS), "+Inf"], row[FIRST_BUCKET:]):
            cumulative += n
            buckets.append((bound, cumulative))
        duration.add_metric(values, buckets, row[SUM])
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
