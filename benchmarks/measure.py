"""Measurement helpers: the measurement record, order statistics, RSS sampling, CPU time by side."""

from __future__ import annotations

import dataclasses
import math
import os
import statistics
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import psutil

__all__ = [
    "MIB",
    "Measurement",
    "RssSampler",
    "cpu_during",
    "descendants",
    "describe",
    "median",
    "percentile",
    "rss",
    "session_processes",
    "wait_gone",
]

MIB = 1 << 20


@dataclasses.dataclass
class Measurement:
    """One metric of one scenario for one backend: a value per repetition.

    `better` is "lower" or "higher". `error` is set (and `values` empty) when the
    backend failed or has no equivalent. `extra` carries figures shown next to
    the median, such as p99.
    """

    backend: str
    scenario: str
    metric: str
    unit: str
    better: str = "lower"
    variant: str = ""
    values: list[float] = dataclasses.field(default_factory=list)
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Measurement:
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in fields})

    @property
    def median(self) -> float:
        return median(self.values)


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs) if xs else math.nan


def percentile(xs: Iterable[float], q: float) -> float:
    """The q-th percentile (0..100) by the nearest-rank method."""
    s = sorted(xs)
    if not s:
        return math.nan
    k = max(0, math.ceil(q / 100 * len(s)) - 1)
    return s[k]


def rss(pid: int) -> int:
    """Resident set size of one process in bytes (0 if it is gone)."""
    try:
        return int(psutil.Process(pid).memory_info().rss)
    except psutil.Error:
        return 0


#: Helpers that live as long as their parent by design: not leftovers.
_HELPERS = ("multiprocessing.resource_tracker", "multiprocessing.forkserver")


def descendants(pid: int | None = None, *, helpers: bool = True) -> list[psutil.Process]:
    """Every live process below pid (default: this process); helpers=False omits
    multiprocessing's resource tracker and forkserver."""
    try:
        procs = psutil.Process(pid or os.getpid()).children(recursive=True)
    except psutil.Error:
        return []
    return procs if helpers else [p for p in procs if not _is_helper(p)]


def _is_helper(proc: psutil.Process) -> bool:
    try:
        cmd = " ".join(proc.cmdline())
    except psutil.Error:
        return False
    return any(h in cmd for h in _HELPERS)


class RssSampler:
    """Samples the RSS of some processes from a thread; keeps each one's peak.

    Use as a context manager around the work being measured; `peak[pid]` is in bytes.
    """

    def __init__(self, pids: Iterable[int], period: float = 0.002) -> None:
        self._procs = {pid: psutil.Process(pid) for pid in pids}
        self.peak = {pid: 0 for pid in self._procs}
        self._period = period
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _sample(self) -> None:
        for pid, proc in self._procs.items():
            try:
                self.peak[pid] = max(self.peak[pid], proc.memory_info().rss)
            except psutil.Error:
                pass

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self._period)

    def __enter__(self) -> RssSampler:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


def wait_gone(procs: Sequence[psutil.Process], timeout: float = 5.0) -> list[psutil.Process]:
    """Waits up to timeout for procs to exit; returns those still alive."""
    _, alive = psutil.wait_procs(list(procs), timeout=timeout)
    return alive


def session_processes(sids: Iterable[int]) -> list[psutil.Process]:
    """Live processes in any of the given sessions (ours: started with start_new_session)."""
    wanted, found = set(sids), []
    for proc in psutil.process_iter():
        try:
            if proc.pid != os.getpid() and os.getsid(proc.pid) in wanted:
                found.append(proc)
        except (OSError, psutil.Error):
            pass
    return found


def describe(proc: psutil.Process) -> str:
    """pid and command line of a process, shortened, for warnings."""
    try:
        cmd = " ".join(proc.cmdline()) or proc.name()
    except psutil.Error:
        cmd = "?"
    return f"{proc.pid} {cmd[:120]}"


def cpu_during(sides: dict[str, list[psutil.Process]], work: Callable[[], None]) -> tuple[dict[str, float], float]:
    """CPU seconds each side (a list of processes) spends while work runs, and the wall seconds it took."""
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
