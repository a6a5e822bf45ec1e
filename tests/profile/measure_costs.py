"""Measures what observing costs (not a test): the call-trace hook, a resource-history sample.

Run: ``python tests/profile/measure_costs.py``; the figures go to docs/debug-server.md. Heap
tracing has its own: ``python -m benchmarks.heap_cost``.
"""

from __future__ import annotations

import statistics
import time
from types import SimpleNamespace

from bigmachine.rpc import trace as calltrace


def calltrace_cost(n: int = 200_000) -> float:
    """Microseconds the call trace adds to a call (``rpc.blocking.call`` records it): one entry at the start,
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


if __name__ == "__main__":
    print(f"call-trace hook: {calltrace_cost():.2f} µs per call")
    print("resource history, one sample:", {k: round(v, 2) for k, v in history_sample_cost().items()})
