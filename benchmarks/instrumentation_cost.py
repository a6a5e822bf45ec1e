"""What the driver's per-call instrumentation costs: `python -m benchmarks.instrumentation_cost`.

A/B on one Local machine: short blocks of sync `m.call`, in ABBA order, alternate
between the instrumented `Machine._call_sync` (as shipped: `bigmachine.rpc.stats.timed`)
and the bare function it wraps, so both see the same machine, connection and noise;
the medians of all their calls are compared. Prints the median call
latency of each, the relative cost (which must stay under 5%), and the cost of the
wrapper (timing plus `CallStats.record`) measured alone, which is what the A/B
difference amounts to on a quiet machine. Exits 1 if the budget is exceeded.

    --rounds N   ABBA rounds (default 100)
    --calls N    calls per block (default 50)
    --json       one JSON line instead of the table
    --control    A/A run (bare against a trivially wrapped bare): the noise floor
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
import timeit
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

BUDGET = 0.05


class Echo:
    def ping(self, value: int) -> int:
        return value


def _round(machine: object, calls: int) -> list[float]:
    """Seconds each of ``calls`` sync calls took."""
    call = machine.call  # type: ignore[attr-defined]
    laps = []
    for i in range(calls):
        begun = time.perf_counter()
        call("Echo.ping", i)
        laps.append(time.perf_counter() - begun)
    return laps


def _wrapper_cost(stats_class: type, timed: Callable[[Any], Any]) -> float:
    """Seconds ``timed`` adds to one call, measured alone on a call that does nothing."""

    class Stub:
        rpc_stats = stats_class()

    def nothing(self: object, request: object, deadline: float, timeout: float | None) -> None:
        return None

    request = SimpleNamespace(method="Echo.ping", data=b"x" * 120)
    stub, wrapped, n = Stub(), timed(nothing), 100_000
    with_ = min(timeit.repeat(lambda: wrapped(stub, request, 0.0, None), number=n, repeat=7)) / n
    without = min(timeit.repeat(lambda: nothing(stub, request, 0.0, None), number=n, repeat=7)) / n
    return with_ - without


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--control", action="store_true", help="A/A: both variants bare, to see the noise floor")
    args = parser.parse_args(argv)

    import bigmachine
    from bigmachine.machine import Machine
    from bigmachine.rpc.stats import CallStats, timed

    original = instrumented = Machine._call_sync
    bare = instrumented.__wrapped__  # type: ignore[attr-defined]
    if args.control:
        instrumented = functools.wraps(bare)(lambda *a: bare(*a))  # another object, the same work
    laps: dict[str, list[float]] = {"on": [], "off": []}
    with bigmachine.start(bigmachine.systems.Local()) as b:
        (machine,) = b.start(1, bigmachine.Services(Echo=Echo()))
        machine.wait(bigmachine.RUNNING, timeout=60)
        _round(machine, args.calls)  # warm up: connection, caches, CPU frequency
        try:
            # Short blocks in ABBA order: drift and noise (other processes) hit both variants alike.
            for r in range(args.rounds):
                for variant in ("on", "off", "off", "on") if r % 2 == 0 else ("off", "on", "on", "off"):
                    Machine._call_sync = instrumented if variant == "on" else bare  # type: ignore[method-assign]
                    laps[variant] += _round(machine, args.calls)
        finally:
            Machine._call_sync = original  # type: ignore[method-assign]

    record_s = _wrapper_cost(CallStats, timed)
    on, off = statistics.median(laps["on"]), statistics.median(laps["off"])
    cost = (on - off) / off
    result = {
        "median_call_s": {"instrumented": on, "bare": off},
        "relative_cost": cost,
        "wrapper_s": record_s,
        "wrapper_share": record_s / off,
        "calls_per_variant": len(laps["on"]),
        "budget": BUDGET,
        "ok": cost < BUDGET,
    }
    if args.json:
        print(json.dumps(result))
    else:
        if args.control:
            print("control run: 'instrumented' is the bare function behind another wrapper object")
        print(f"median sync call, instrumented: {on * 1e6:8.1f} µs")
        print(f"median sync call, bare:         {off * 1e6:8.1f} µs")
        print(f"relative cost:                  {cost * 100:+8.2f} %  (budget {BUDGET * 100:.0f} %)")
        print(f"the wrapper alone (no I/O):     {record_s * 1e9:8.0f} ns  ({record_s / off * 100:.2f} % of a call)")
    sys.exit(0 if result["ok"] else 1)


if __name__ == "__main__":
    main()
