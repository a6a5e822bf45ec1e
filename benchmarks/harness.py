"""What every scenario module shares: the run's sizes, the scenario record, a started cluster."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from .backends import Backend, load
from .measure import MIB, Measurement

__all__ = ["MB", "Config", "Scenario", "cluster", "error_row", "measurement", "size_label", "temp_path", "timed"]

MB = 1e6  # transfer rates are in MB/s (10^6 bytes)


@dataclasses.dataclass
class Config:
    """Sizes and counts of a run; `quick()` scales them down for a smoke test."""

    repeat: int = 5
    latency_calls: int = 2000
    latency_warmup: int = 200
    inflight: int = 64
    throughput_seconds: float = 2.0
    #: Payload sizes of the bulk and tls_ceiling scenarios, in bytes.
    bulk_sizes: Sequence[int] = (64 * MIB, 256 * MIB)
    bigpi_n: int = 2 * 10**7
    scale_n: int = 16
    scale_repeat: int = 3
    scale_settle: float = 2.0
    profile_seconds: float = 3.0
    cpu_calls: int = 20_000
    cpu_warmup: int = 1000
    cpu_idle_seconds: float = 2.0

    @classmethod
    def quick(cls, repeat: int | None = None) -> Config:
        return cls(
            repeat=repeat or 2,
            latency_calls=500,
            throughput_seconds=0.5,
            bigpi_n=2 * 10**6,
            scale_repeat=1,
            scale_settle=0.5,
            profile_seconds=1.0,
            cpu_calls=2000,
            cpu_warmup=200,
            cpu_idle_seconds=0.5,
        )


@dataclasses.dataclass
class Scenario:
    name: str
    title: str
    run: Callable[[str, Config], list[Measurement]]
    #: Backends it applies to; None for all.
    only: tuple[str, ...] | None = None
    #: Set for a scenario that needs no backend: it runs once per run, reported under this label.
    once_as: str | None = None


@contextlib.contextmanager
def cluster(name: str, n: int) -> Iterator[Backend]:
    """A started backend with n workers, always shut down on the way out."""
    backend = load(name)
    try:
        backend.start(n)
        yield backend
    finally:
        backend.shutdown()


def measurement(name: str, scenario: str, metric: str, unit: str, **kw: Any) -> Measurement:
    return Measurement(backend=name, scenario=scenario, metric=metric, unit=unit, **kw)


@contextlib.contextmanager
def error_row(out: list[Measurement], name: str, scenario: str, metric: str,
              variant: str) -> Iterator[None]:
    """Turns a failing variant into an error row, so the scenario's other variants still run."""
    try:
        yield
    except Exception as exc:
        traceback.print_exc()
        out.append(measurement(name, scenario, metric, "", variant=variant,
                               error=f"{type(exc).__name__}: {exc}"[:500]))


def timed(fn: Callable[..., Any], *args: Any) -> float:
    t = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t


def size_label(nbytes: int) -> str:
    """A payload size as the variant names show it: "64 MiB"."""
    return f"{nbytes / MIB:g} MiB"


@contextlib.contextmanager
def temp_path() -> Iterator[str]:
    """The path of a new empty temporary file, removed on the way out."""
    fd, path = tempfile.mkstemp(prefix="bigmachine-bench-")
    os.close(fd)
    try:
        yield path
    finally:
        os.unlink(path)
