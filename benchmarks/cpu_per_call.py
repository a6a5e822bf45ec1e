"""The cpu_per_call scenario: CPU per small sync call on each side, from process CPU times.

Each repetition makes `cfg.cpu_calls` sequential `echo(1)` calls on one worker and
divides each process's user+system CPU time over them by the call count (µs per
call). Every thread of a process counts, busy or idle, as the kernel sees it. The
driver is this process; the machine is the worker's (`Backend.worker_process`
says which); "rest of the cluster" is every other process below this one
(Ray's raylet and GCS, Dask's nannies; bigmachine's janitor). Each repetition then
idles `cfg.cpu_idle_seconds` and reports each side's CPU while no call runs (ms of
CPU per second): that rate times the wall time per call is the share of the
per-call figure that background threads would spend anyway.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import psutil

from .backends import Backend
from .harness import Config, cluster, measurement
from .measure import Measurement, descendants

__all__ = ["cpu_per_call"]

_ECHO_ARG = 1
_SIDES = {"driver": "driver", "machine": "machine", "rest": "rest of the cluster"}


def cpu_per_call(name: str, cfg: Config) -> list[Measurement]:
    """Driver, machine and rest-of-cluster CPU (µs) per sync echo call, plus wall time per call."""
    with cluster(name, 1) as backend:
        worker = backend.worker_pids()[0]
        driver = os.getpid()
        rest = [p for p in descendants() if p.pid != worker]
        sides = {"driver": [psutil.Process(driver)], "machine": [psutil.Process(worker)], "rest": rest}
        _calls(backend, cfg.cpu_warmup)
        reps = [_repetition(backend, sides, cfg) for _ in range(cfg.repeat)]
    counted = {
        "driver": "this process, all its threads",
        "machine": backend.worker_process,
        "rest": f"{len(rest)} other processes below the driver",
    }
    extra = {"calls_per_rep": cfg.cpu_calls}
    out = [
        measurement(name, "cpu_per_call", f"{_SIDES[side]} CPU per call", "µs",
                    values=[r[side] for r in reps], extra={**extra, "note": counted[side]})
        for side in sides
    ]
    out.append(measurement(name, "cpu_per_call", "wall time per call", "µs",
                           values=[r["wall"] for r in reps], extra=extra))
    out += [
        measurement(name, "cpu_per_call", f"{_SIDES[side]} idle CPU", "ms/s",
                    values=[r[f"{side} idle"] for r in reps],
                    extra={"note": f"while no call runs, over {cfg.cpu_idle_seconds:g} s", "versus": False})
        for side in sides
    ]
    return out


def _calls(backend: Backend, n: int) -> None:
    for _ in range(n):
        backend.call(0, "echo", _ECHO_ARG)


def _repetition(backend: Backend, sides: dict[str, list[psutil.Process]], cfg: Config) -> dict[str, float]:
    """µs of CPU per call for each side and of wall time; then each side's idle CPU in ms per second."""
    busy, wall = _cpu_during(sides, lambda: _calls(backend, cfg.cpu_calls))
    idle, quiet = _cpu_during(sides, lambda: time.sleep(cfg.cpu_idle_seconds))
    per_call = {side: cpu * 1e6 / cfg.cpu_calls for side, cpu in busy.items()}
    idle_rate = {f"{side} idle": cpu * 1e3 / quiet for side, cpu in idle.items()}
    return {**per_call, "wall": wall * 1e6 / cfg.cpu_calls, **idle_rate}


def _cpu_during(sides: dict[str, list[psutil.Process]], work: Callable[[], None]) -> tuple[dict[str, float], float]:
    """CPU seconds each side spends while work runs, and the wall seconds it took."""
    before = {side: _cpu_seconds(procs) for side, procs in sides.items()}
    t = time.perf_counter()
    work()
    wall = time.perf_counter() - t
    after = {side: _cpu_seconds(procs) for side, procs in sides.items()}
    return {side: _delta(before[side], after[side]) for side in sides}, wall


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
