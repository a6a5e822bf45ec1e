"""bigmachine's RPC path in under half a minute: the figures the runtime-core issue quotes.

    python -m benchmarks.rpc_quick

Median sync call latency (1 machine, 2,000 calls after 200 warm-up) and calls/s
with 64 in flight on 2 machines, via `submit` and via `acall` (and via `acall`
on the session's loop when `b.loop` exists), each with the driver's CPU per call by
thread: which thread carries a variant's calls, and what the hop to the loop costs.
"""

from __future__ import annotations

import threading
import time

from .backends.bigmachine_backend import BigmachineBackend
from .measure import median, percentile
from .scenarios import acalls_in_flight, futures_in_flight, sync_latencies

CALLS, WARMUP, INFLIGHT, THROUGHPUT_CALLS = 2000, 200, 64, 64 * 200


def main() -> None:
    backend = BigmachineBackend()
    t = time.perf_counter()
    backend.start(2)
    print(f"2 machines ready in {time.perf_counter() - t:.3f} s")
    try:
        sync_latencies(backend, WARMUP)
        lat = [x * 1e3 for x in sync_latencies(backend, CALLS)]
        print(f"sync call latency: median {median(lat):.3f} ms, p99 {percentile(lat, 99):.3f} ms "
              f"({CALLS} calls, 1 machine)")
        runs = {"submit": lambda n: futures_in_flight(backend, n, INFLIGHT)}
        for variant in backend.async_variants():
            runs[variant] = lambda n, v=variant: acalls_in_flight(backend, v, n, INFLIGHT)
        for variant, run in runs.items():
            run(10 * INFLIGHT)  # warm-up
            before = _thread_cpu()
            t = time.perf_counter()
            run(THROUGHPUT_CALLS)
            rate = THROUGHPUT_CALLS / (time.perf_counter() - t)
            after = _thread_cpu()
            per_call = ", ".join(f"{name} {(after[name] - used) / THROUGHPUT_CALLS * 1e6:.0f}"
                                 for name, used in before.items() if after.get(name, used) - used > 1e-3)
            print(f"throughput, {variant}: {rate:,.0f} calls/s ({INFLIGHT} in flight, 2 machines); "
                  f"driver CPU per call by thread, µs: {per_call}")
    finally:
        backend.shutdown()


def _thread_cpu() -> dict[str, float]:
    """CPU seconds each live thread of this process has used, by thread name."""
    used = {}
    for thread in threading.enumerate():
        try:
            used[thread.name] = time.clock_gettime(time.pthread_getcpuclockid(thread.ident or 0))
        except OSError:  # ended meanwhile
            pass
    return used


if __name__ == "__main__":
    main()
