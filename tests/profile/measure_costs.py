"""Measures what observing costs (not a test): heap tracing per frame depth, the call-trace hook.

Run: ``python tests/profile/measure_costs.py``; the figures go to docs/debug-server.md.
"""

from __future__ import annotations

import statistics
import time
import tracemalloc
from types import SimpleNamespace
from typing import Any

from bigmachine.rpc import trace as calltrace


def _allocating_work() -> int:
    """A mix of small allocations, as Python code makes them: dicts, lists, strings, tuples."""
    total = 0
    for i in range(20_000):
        row = {"i": i, "s": str(i), "t": (i, i + 1)}
        total += len([row, row["s"]])
    return total


def _best(fn: Any, runs: int = 7) -> float:
    times = []
    for _ in range(runs):
        begun = time.perf_counter()
        fn()
        times.append(time.perf_counter() - begun)
    return min(times)


def heap_tracing_cost() -> dict[str, float]:
    """Slowdown of allocating work with tracemalloc at each depth, against tracing off (min of 7 runs)."""
    base = _best(_allocating_work)
    out = {"off_ms": base * 1000}
    for frames in (1, 2, 3, 5, 10, 25):
        tracemalloc.start(frames)
        try:
            out[f"{frames}_frames_x"] = _best(_allocating_work) / base
        finally:
            tracemalloc.stop()
    return out


def calltrace_cost(n: int = 200_000) -> float:
    """Microseconds the call trace adds to a call (``rpc.stats.timed`` records it): one entry at the start,
    its end filled in."""
    holder = SimpleNamespace()
    runs = []
    for _ in range(5):
        begun = time.perf_counter()
        for _ in range(n):
            entry = calltrace.record(holder, "S.m")
            entry[1], entry[3] = 0.0, False
        runs.append((time.perf_counter() - begun) / n)
    return statistics.median(runs) * 1e6


def history_sample_cost(machines: int = 2, samples: int = 20) -> dict[str, float]:
    """One resource-history sample of ``machines`` Local machines: driver wall and CPU ms, machine ms per status."""
    import asyncio

    import bigmachine
    from bigmachine import RUNNING, systems
    from bigmachine.web.cluster import SessionView
    from bigmachine.web.history import History

    with bigmachine.start(systems.Local()) as b:
        started = b.start(machines, bigmachine.Services(Idle=_Idle()))
        for machine in started:
            machine.wait(RUNNING, timeout=60)
        history, session = History(), SessionView(b)

        async def run() -> tuple[float, float]:
            await history.sample(session, 2.0)  # warm: connections, imports on the machines
            wall, cpu = time.perf_counter(), time.process_time()
            for _ in range(samples):
                await history.sample(session, 2.0)
            return (time.perf_counter() - wall) / samples, (time.process_time() - cpu) / samples

        wall, cpu = asyncio.run(run())
        served = started[0].call("Supervisor.stats")["Supervisor.status"]
    return {"driver_wall_ms": wall * 1000, "driver_cpu_ms": cpu * 1000, "machine_ms_per_status": served["mean"] * 1000}


class _Idle:
    def nothing(self) -> None:
        return None

    def allocate(self) -> int:
        return _allocating_work()


def heap_service_cost(seconds: float = 2.0, method: str = "Idle.allocate") -> dict[str, float]:
    """Calls per ``seconds`` of a service method on a Local machine: tracing off, at 1, 3 and 25 frames."""
    import bigmachine
    from bigmachine import RUNNING, systems

    def rate(machine: Any) -> float:
        end, n = time.monotonic() + seconds, 0
        while time.monotonic() < end:
            machine.call(method)
            n += 1
        return n

    with bigmachine.start(systems.Local()) as b:
        (machine,) = b.start(1, bigmachine.Services(Idle=_Idle()))
        machine.wait(RUNNING, timeout=60)
        out = {"off": rate(machine)}
        for frames in (1, 3, 25):
            machine.call("Supervisor.heap", frames)
            out[f"{frames}_frames"] = rate(machine)
    return out


if __name__ == "__main__":
    print("heap tracing:", {k: round(v, 2) for k, v in heap_tracing_cost().items()})
    print(f"call-trace hook: {calltrace_cost():.2f} µs per call")
    print("allocating service calls per 2 s:", heap_service_cost())
    print("no-op service calls per 2 s:", heap_service_cost(method="Idle.nothing"))
    print("resource history, one sample:", {k: round(v, 2) for k, v in history_sample_cost().items()})
