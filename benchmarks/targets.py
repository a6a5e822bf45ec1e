"""bigmachine's targets (issue 12), most of them ratios to another figure of the same run.

A target picks bigmachine's rows by scenario and fnmatch patterns on metric and
variant, and bounds either the median itself or its ratio to a reference: another
backend's median for the same metric, the same run's TLS ceiling for the payload
size, or the payload size. `evaluate` turns a run's measurements into verdicts.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import operator
from collections.abc import Callable, Sequence

from .measure import Measurement

__all__ = ["TARGETS", "Reference", "Target", "Verdict", "evaluate", "verdicts_for"]

SUBJECT = "bigmachine"
_OPS = {"<=": (operator.le, "≤"), ">=": (operator.ge, "≥"), "<": (operator.lt, "<")}


@dataclasses.dataclass(frozen=True)
class Reference:
    """What a figure is divided by: `value` finds it among the run's rows (None: not in this run)."""

    label: str
    value: Callable[[Measurement, Sequence[Measurement]], float | None]


@dataclasses.dataclass(frozen=True)
class Target:
    """`op bound` on the median of matching rows, or on its ratio to `versus`."""

    scenario: str
    metric: str
    variant: str
    op: str
    bound: float
    versus: Reference | None = None

    def matches(self, m: Measurement) -> bool:
        return (m.backend == SUBJECT and m.scenario == self.scenario
                and fnmatch.fnmatchcase(m.metric, self.metric)
                and fnmatch.fnmatchcase(m.variant, self.variant))

    def describe(self, unit: str = "") -> str:
        """The bound as shown: "≤ 0.25x ray's", "≤ 100 µs"."""
        tail = f"x {self.versus.label}" if self.versus else f" {unit}" if unit else ""
        return f"{_OPS[self.op][1]} {self.bound:,g}{tail}"


@dataclasses.dataclass(frozen=True)
class Verdict:
    """One target held against one row: the figure compared, its reference, met or not (None: no reference)."""

    target: Target
    row: Measurement
    reference: float | None
    figure: float
    met: bool | None

    def __str__(self) -> str:
        target = self.target.describe(self.row.unit)
        if self.met is None:
            return f"{target}: no reference in this run"
        return f"{target}: {'met' if self.met else '**not met**'}"


def backend(name: str) -> Reference:
    """Another backend's median for the same scenario and metric: same variant if it has one, else its first."""
    def value(m: Measurement, rows: Sequence[Measurement]) -> float | None:
        same = [r for r in rows if (r.backend, r.scenario, r.metric) == (name, m.scenario, m.metric)
                and r.values]
        row = next((r for r in same if r.variant == m.variant), same[0] if same else None)
        return row.median if row else None

    return Reference(f"{name}'s", value)


def _tls_ceiling(m: Measurement, rows: Sequence[Measurement]) -> float | None:
    size = m.extra.get("payload_mib")
    row = next((r for r in rows if r.scenario == "tls_ceiling" and r.metric == "rate" and r.values
                and r.extra.get("payload_mib") == size), None)
    return row.median if row else None


def _payload(m: Measurement, rows: Sequence[Measurement]) -> float | None:
    size = m.extra.get("payload_mib")
    return float(size) if size else None


TLS_CEILING = Reference("the TLS ceiling", _tls_ceiling)
PAYLOAD = Reference("the payload", _payload)
RAY, MULTIPROCESSING = backend("ray"), backend("multiprocessing")
_RSS = "* peak RSS above idle *"

TARGETS = [
    Target("cold_start", "ready", "*", "<=", 0.4),
    Target("cpu_per_call", "machine CPU per call", "*", "<=", 100),
    Target("cpu_per_call", "driver CPU per call", "*", "<=", 70),
    Target("latency", "call latency", "sync", "<=", 0.25, RAY),
    Target("latency", "call latency", "sync", "<=", 3, MULTIPROCESSING),
    Target("throughput", "calls/s", "submit", ">=", 5, RAY),
    Target("throughput", "calls/s", "submit", ">=", 0.3, MULTIPROCESSING),
    Target("bulk", "* rate", "whole *", ">=", 0.7, TLS_CEILING),
    Target("bulk", "* rate", "streamed *", ">=", 0.85, TLS_CEILING),
    Target("bulk", "* rate", "whole *", ">=", 1, RAY),
    Target("bulk", _RSS, "whole *", "<=", 2.5, PAYLOAD),
    Target("bulk", _RSS, "streamed *", "<", 64),
    Target("bigpi", "efficiency / multiprocessing's", "*", ">=", 0.95),
    Target("scale", "start 16", "*", "<=", 0.1, RAY),
    Target("scale", "idle RSS per machine", "*", "<=", 50),
]


def evaluate(rows: Sequence[Measurement]) -> list[tuple[Target, list[Verdict]]]:
    """Each target with its verdicts on this run's rows (an empty list: no figure)."""
    return [(t, [_verdict(t, m, rows) for m in rows if t.matches(m) and m.values]) for t in TARGETS]


def verdicts_for(m: Measurement, rows: Sequence[Measurement]) -> list[Verdict]:
    """The verdicts on one row."""
    return [_verdict(t, m, rows) for t in TARGETS if t.matches(m) and m.values]


def _verdict(target: Target, m: Measurement, rows: Sequence[Measurement]) -> Verdict:
    compare = _OPS[target.op][0]
    if target.versus is None:
        return Verdict(target, m, None, m.median, compare(m.median, target.bound))
    reference = target.versus.value(m, rows)
    if not reference:
        return Verdict(target, m, None, m.median, None)
    ratio = m.median / reference
    return Verdict(target, m, reference, ratio, compare(ratio, target.bound))
