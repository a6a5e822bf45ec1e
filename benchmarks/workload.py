"""The service every backend hosts: the same methods, whatever carries the calls.

Keep this module free of heavy imports: worker processes of every backend import
it (it is pickled by reference), and cold start counts that import.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterable, Iterator

__all__ = ["BenchService", "sample"]

MIB = 1 << 20


def sample(n: int) -> int:
    """Counts how many of n random points of the unit square fall in the circle (bigpi)."""
    r = random.Random()
    return sum(1 for _ in range(n) if (r.random() - 0.5) ** 2 + (r.random() - 0.5) ** 2 < 0.25)


class BenchService:
    """Trivial, CPU-bound and bulk methods; state lives in the worker process."""

    def __init__(self) -> None:
        self._blob = b""

    def echo(self, x: object) -> object:
        return x

    def pid(self) -> int:
        return os.getpid()

    def sample(self, n: int) -> int:
        return sample(n)

    def sink(self, data: bytes) -> int:
        """Receives a bulk argument; returns its size so the caller can check it."""
        return len(data)

    def make_blob(self, nbytes: int) -> int:
        """Builds the reply of `blob` ahead, so a download measures only the transfer."""
        self._blob = b"\x5a" * nbytes
        return len(self._blob)

    def blob(self) -> bytes:
        return self._blob

    def drop_blob(self) -> None:
        self._blob = b""

    def stream_blob(self, nbytes: int, chunk: int = MIB) -> Iterator[bytes]:
        """Streams nbytes as chunks of one reused buffer: constant memory on the worker."""
        buf = b"\x5a" * chunk
        for _ in range(nbytes // chunk):
            yield buf
        if nbytes % chunk:
            yield buf[: nbytes % chunk]

    def stream_sink(self, chunks: Iterable[bytes]) -> int:
        """Receives a streamed argument chunk by chunk; returns its size."""
        return sum(len(c) for c in chunks)
