"""The bulk scenario: a large argument up and a large reply down, at each of `cfg.bulk_sizes`.

For each size: MB/s each way and the peak RSS of the driver and the worker above
their idle RSS (taken once the cluster is up, before any payload exists), so a
whole transfer counts the payload itself plus every copy made of it. bigmachine
also streams the same sizes, first, before either process has held a whole payload
(whose freed memory a process may keep).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Generator, Iterator
from typing import Any

from .backends import Backend
from .harness import MB, Config, cluster, error_row, measurement, size_label, temp_path, timed
from .measure import MIB, Measurement, RssSampler, rss

__all__ = ["bulk"]

#: (direction, run) pairs; each direction is set up just before it is yielded.
Runs = Generator[tuple[str, Callable[[], None]], None, None]
#: A way of moving a payload of a size.
Transfer = Callable[[Backend, int], Runs]


def bulk(name: str, cfg: Config) -> list[Measurement]:
    """Each size up and down, whole (and streamed where the backend can); an error row per failing size."""
    out: list[Measurement] = []
    with cluster(name, 1) as backend:
        pids = {"driver": os.getpid(), "worker": backend.worker_pids()[0]}
        idle = {side: rss(pid) for side, pid in pids.items()}
        for variant, transfer in _variants(backend):
            for size in cfg.bulk_sizes:
                label = f"{variant} {size_label(size)}"
                with error_row(out, name, "bulk", "rate", label), \
                        contextlib.closing(transfer(backend, size)) as runs:
                    for direction, run in runs:
                        out += _measure(name, label, direction, run, size, pids, idle, cfg)
    return out


def _variants(backend: Backend) -> list[tuple[str, Transfer]]:
    """Streamed first, every size, while neither process has yet held a whole payload."""
    streamed: list[tuple[str, Transfer]] = [("streamed", _streamed)] if backend.streaming else []
    return [*streamed, ("whole", _whole)]


def _whole(backend: Backend, size: int) -> Runs:
    """Up: a bytes argument; down: a bytes reply the worker builds ahead. Each payload lives only for its direction."""
    data = b"\xa5" * size

    def up() -> None:
        _check(backend.call(0, "sink", data), size)

    yield "up", up
    del data
    backend.call(0, "make_blob", size)
    try:
        yield "down", lambda: _check(len(backend.call(0, "blob")), size)
    finally:
        backend.call(0, "drop_blob")


def _streamed(backend: Backend, size: int) -> Runs:
    """Up: a file streamed as the argument; down: a reply streamed in 1 MiB chunks."""
    with _temp_file(size) as path:
        def up() -> None:
            with open(path, "rb") as f:
                _check(backend.call_stream_arg(0, "stream_sink", f), size)

        yield "up", up
        yield "down", lambda: _check(sum(len(c) for c in backend.call_stream_reply(0, "stream_blob", size, MIB)),
                                     size)


def _measure(name: str, variant: str, direction: str, run: Callable[[], None], size: int,
             pids: dict[str, int], idle: dict[str, int], cfg: Config) -> list[Measurement]:
    """MB/s of one direction and each side's peak RSS above idle, over cfg.repeat runs after a warm-up."""
    payload = {"payload_mib": size / MIB}
    run()  # warm-up
    rates, peaks = [], {side: [] for side in pids}  # type: list[float], dict[str, list[float]]
    for _ in range(cfg.repeat):
        with RssSampler(pids.values()) as sampler:
            seconds = timed(run)
        rates.append(size / MB / seconds)
        for side, pid in pids.items():
            peaks[side].append((sampler.peak[pid] - idle[side]) / MIB)
    out = [measurement(name, "bulk", f"{direction} rate", "MB/s", better="higher",
                       variant=variant, values=rates, extra=payload)]
    out += [measurement(name, "bulk", f"{side} peak RSS above idle ({direction})", "MiB",
                        variant=variant, values=values,
                        extra={**payload, "note": f"idle {idle[side] / MIB:.0f} MiB"})
            for side, values in peaks.items()]
    return out


def _check(got: Any, want: int) -> None:
    if got != want:
        raise AssertionError(f"transferred {got!r} bytes, want {want}")


@contextlib.contextmanager
def _temp_file(size: int) -> Iterator[str]:
    """A file of size bytes, written a MiB at a time (never whole in memory)."""
    chunk = b"\xa5" * MIB
    with temp_path() as path:
        with open(path, "wb") as f:
            for _ in range(size // MIB):
                f.write(chunk)
            f.write(chunk[: size % MIB])
        yield path
