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

import psutil

from .backends import Backend
from .harness import Config, cluster, measurement
from .measure import Measurement, cpu_during, descendants

__all__ = ["SIDES", "cpu_per_call", "process_sides"]

_ECHO_ARG = 1
#: Side -> how its rows name it.
SIDES = {"driver": "driver", "machine": "machine", "rest": "rest of the cluster"}


def cpu_per_call(name: str, cfg: Config) -> list[Measurement]:
    """Driver, machine and rest-of-cluster CPU (µs) per sync echo call, plus wall time per call."""
    with cluster(name, 1) as backend:
        sides = process_sides(backend)
        _calls(backend, cfg.cpu_warmup)
        reps = [_repetition(backend, sides, cfg) for _ in range(cfg.repeat)]
    counted = {
        "driver": "this process, all its threads",
        "machine": backend.worker_process,
        "rest": f"{len(sides['rest'])} other processes below the driver",
    }
    extra = {"calls_per_rep": cfg.cpu_calls}
    out = [
        measurement(name, "cpu_per_call", f"{SIDES[side]} CPU per call", "µs",
                    values=[r[side] for r in reps], extra={**extra, "note": counted[side]})
        for side in sides
    ]
    out.append(measurement(name, "cpu_per_call", "wall time per call", "µs",
                           values=[r["wall"] for r in reps], extra=extra))
    out += [
        measurement(name, "cpu_per_call", f"{SIDES[side]} idle CPU", "ms/s",
                    values=[r[f"{side} idle"] for r in reps],
                    extra={"note": f"while no call runs, over {cfg.cpu_idle_seconds:g} s", "versus": False})
        for side in sides
    ]
    return out


def process_sides(backend: Backend) -> dict[str, list[psutil.Process]]:
    """The processes of each side: this driver, the backend's workers ("machine"), every other process below us."""
    workers = backend.worker_pids()
    rest = [p for p in descendants() if p.pid not in workers]
    return {"driver": [psutil.Process(os.getpid())], "machine": [psutil.Process(w) for w in workers], "rest": rest}


def _calls(backend: Backend, n: int) -> None:
    for _ in range(n):
        backend.call(0, "echo", _ECHO_ARG)


def _repetition(backend: Backend, sides: dict[str, list[psutil.Process]], cfg: Config) -> dict[str, float]:
    """µs of CPU per call for each side and of wall time; then each side's idle CPU in ms per second."""
    busy, wall = cpu_during(sides, lambda: _calls(backend, cfg.cpu_calls))
    idle, quiet = cpu_during(sides, lambda: time.sleep(cfg.cpu_idle_seconds))
    per_call = {side: cpu * 1e6 / cfg.cpu_calls for side, cpu in busy.items()}
    idle_rate = {f"{side} idle": cpu * 1e3 / quiet for side, cpu in idle.items()}
    return {**per_call, "wall": wall * 1e6 / cfg.cpu_calls, **idle_rate}
