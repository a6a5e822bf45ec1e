"""Machines scheduled as batch work against normal work, in turn on the same two machines.

    python -m benchmarks.scheduling_ab [--rounds 8]

A machine's threads run as ``SCHED_BATCH`` (bigmachine/runtime/process.py). This switches
the policy of every thread of both machines between rounds, so the two arms share the host's
stretch of speed, and reports per arm: calls/s with 64 in flight via ``submit`` and via
``acall`` on the session's loop, and the median sync call latency. Linux only.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

from .backends.bigmachine_backend import SESSION_LOOP, BigmachineBackend
from .scenarios import acalls_in_flight, futures_in_flight, sync_latencies

INFLIGHT, CALLS, LATENCY_CALLS = 64, 64 * 150, 1000
ARMS = {"normal": os.SCHED_OTHER, "batch": os.SCHED_BATCH}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scheduling_ab", description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=8, help="rounds per arm (default 8)")
    rounds = parser.parse_args().rounds
    backend = BigmachineBackend()
    backend.start(2)
    figures: dict[str, list[tuple[float, float, float]]] = {arm: [] for arm in ARMS}
    try:
        futures_in_flight(backend, 100 * INFLIGHT, INFLIGHT)  # warm-up: every connection opened
        for r in range(rounds):
            for arm in ARMS if r % 2 == 0 else reversed(ARMS):  # neither arm always goes first
                _set_policy(backend.worker_pids(), ARMS[arm])
                figures[arm].append((_rate(lambda: futures_in_flight(backend, CALLS, INFLIGHT)),
                                     _rate(lambda: acalls_in_flight(backend, SESSION_LOOP, CALLS, INFLIGHT)),
                                     statistics.median(sync_latencies(backend, LATENCY_CALLS)) * 1e3))
    finally:
        backend.shutdown()
    for arm, rows in figures.items():
        submit, acall, latency = zip(*rows)
        print(f"{arm:6}  submit {statistics.median(submit):7,.0f} calls/s   acall on b.loop "
              f"{statistics.median(acall):7,.0f} calls/s   sync latency {statistics.median(latency):.3f} ms   "
              f"(medians of {len(rows)} rounds)")


def _rate(run: Callable[[], None]) -> float:
    begun = time.perf_counter()
    run()
    return CALLS / (time.perf_counter() - begun)


def _set_policy(pids: list[int], policy: int) -> None:
    """Sets ``policy`` on every thread of each process (a thread started later inherits its starter's)."""
    for pid in pids:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                os.sched_setscheduler(int(tid), policy, os.sched_param(0))
            except ProcessLookupError:  # the thread ended meanwhile
                pass


if __name__ == "__main__":
    main()
