"""The cpu_per_call scenario: CPU per small sync call on each side, from process CPU times.

Each repetition makes `cfg.cpu_calls` sequential `echo(1)` calls on one worker and
divides each process's user+system CPU time over them by the call count (µs per
call). Every thread of a process counts, busy or idle, as the kernel sees it. The
driver is this process; the machine is the worker's (`Backend.worker_process`
says which); "rest of the cluster" is every other process below this one
(Ray's raylet and GCS, Dask's nannies; none for bigmachine or multiprocessing).
"""

from __future__ import annotations

import os
import time

import psutil

from .backends import Backend
from .harness import Config, cluster, measurement
from .measure import Measurement, descendants

__all__ = ["cpu_per_call"]

_ECHO_ARG = 1


def cpu_per_call(name: str, cfg: Config) -> list[Measurement]:
    """Driver, machine and rest-of-cluster CPU (µs) per sync echo call, plus wall time per call."""
    with cluster(name, 1) as backend:
        worker = backend.worker_pids()[0]
        driver = os.getpid()
        rest = [p for p in descendants() if p.pid != worker]
        sides = {"driver": [psutil.Process(driver)], "machine": [psutil.Process(worker)], "rest": rest}
        _calls(backend, cfg.cpu_warmup)
        reps = [_cpu_per_call(backend, sides, cfg.cpu_calls) for _ in range(cfg.repeat)]
    counted = {
        "driver": "this process, all its threads",
        "machine": backend.worker_process,
        "rest": f"{len(rest)} other processes below the driver",
    }
    extra = {"calls_per_rep": cfg.cpu_calls}
    out = [
        measurement(name, "cpu_per_call", f"{side} CPU per call" if side != "rest"
                    else "rest of the cluster CPU per call", "µs", values=[r[side] for r in reps],
                    extra={**extra, "note": counted[side]})
        for side in sides
    ]
    out.append(measurement(name, "cpu_per_call", "wall time per call", "µs",
                           values=[r["wall"] for r in reps], extra=extra))
    return out


def _calls(backend: Backend, n: int) -> None:
    for _ in range(n):
        backend.call(0, "echo", _ECHO_ARG)


def _cpu_per_call(backend: Backend, sides: dict[str, list[psutil.Process]], n: int) -> dict[str, float]:
    """One repetition: µs of CPU per call for each side, and of wall time."""
    before = {side: _cpu_seconds(procs) for side, procs in sides.items()}
    t = time.perf_counter()
    _calls(backend, n)
    wall = time.perf_counter() - t
    after = {side: _cpu_seconds(procs) for side, procs in sides.items()}
    per_call = {side: _delta(before[side], after[side]) * 1e6 / n for side in sides}
    return {**per_call, "wall": wall * 1e6 / n}


def _cpu_seconds(procs: list[psutil.Process]) -> dict[int, float]:
    """User + system CPU seconds of each live process (its own, not its children's), by pid."""
    seconds = {}
    for proc in procs:
        try:
            times = proc.cpu_times()
        except psutil.Error:
            continue
        seconds[proc.pid] = times.user + times.system
    return seconds


def _delta(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds spent between the two readings by the processes alive at both."""
    return sum(after[pid] - before[pid] for pid in before.keys() & after.keys())
