"""rpc/stats.py: calls counted per method, and atimed recording them with the call trace."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from bigmachine.rpc import trace
from bigmachine.rpc.stats import CallStats, atimed


def test_rows_count_calls_errors_cancellations_bytes_and_latency() -> None:
    stats = CallStats()
    for seconds in (0.0002, 0.0002, 0.004, 0.3):
        stats.record("S.m", seconds, failed=False, sent=10, received=20)
    stats.record("S.m", 0.001, failed=True)
    stats.record("S.m", 0.001, failed=False, cancelled=True)
    row = stats.snapshot()["S.m"]
    assert row["calls"] == 6 and row["errors"] == 1 and row["cancelled"] == 1
    assert row["sent_bytes"] == 40 and row["received_bytes"] == 80
    assert row["p50"] == 0.001 and row["p99"] == 0.5  # bucket upper bounds
    assert row["mean"] == pytest.approx((0.0004 + 0.004 + 0.3 + 0.002) / 6)


class Caller:
    def __init__(self) -> None:
        self.rpc_stats = CallStats()

    @atimed
    async def acall(self, request: Any, deadline: float, timeout: float | None) -> Any:
        await asyncio.sleep(0)
        if request.method == "S.fail":
            raise ValueError("no")
        return 43


def test_atimed_counts_the_call_and_traces_it() -> None:
    caller = Caller()
    assert asyncio.run(caller.acall(SimpleNamespace(method="S.ok", size=3), 0.0, None)) == 43
    with pytest.raises(ValueError):
        asyncio.run(caller.acall(SimpleNamespace(method="S.fail", size=0), 0.0, None))
    assert asyncio.run(caller.acall(SimpleNamespace(method="S.async", size=2), 0.0, None)) == 43
    snapshot = caller.rpc_stats.snapshot()
    assert {m: (r["calls"], r["errors"], r["sent_bytes"]) for m, r in snapshot.items()} == {
        "S.ok": (1, 0, 3), "S.fail": (1, 1, 0), "S.async": (1, 0, 2)}
    traced = trace.calls(caller)
    assert [(c[2], c[3]) for c in traced] == [("S.ok", False), ("S.fail", True), ("S.async", False)]
    assert all(c[1] is not None and c[1] >= c[0] for c in traced)


def test_an_unfinished_call_is_in_the_trace_while_it_runs() -> None:
    holder = SimpleNamespace()
    entry = trace.record(holder, "S.slow")
    assert trace.calls(holder, since=entry[0] + 3600) == [[entry[0], None, "S.slow", False]]  # running: kept
    entry[1] = entry[0] + 1
    assert trace.calls(holder, since=entry[0] + 3600) == []  # ended before `since`
