"""Services for the wire, stream, cancellation and callback tests (importable on machines: tests/ is on sys.path)."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any


class Calc:
    """Small answers that tell calls apart."""

    def add(self, a: int, b: int) -> int:
        return a + b

    async def aadd(self, a: int, b: int) -> int:
        await asyncio.sleep(0)
        return a + b

    def añadir(self, a: int, b: int) -> int:  # a Unicode method name travels percent-encoded
        return a + b

    def sleep(self, seconds: float) -> float:
        time.sleep(seconds)
        return seconds

    def blob(self, size: int) -> bytes:
        return bytes(size)


class Pipe:
    """Streams a streamed argument straight back."""

    def echo(self, chunks: Iterator[bytes]) -> Iterator[bytes]:
        for chunk in chunks:
            yield chunk

    async def aecho(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        async for chunk in chunks:
            yield chunk

    def head(self, chunks: Iterator[bytes], n: int) -> Iterator[bytes]:
        """Replies with the first ``n`` chunks and ends: the rest of the argument is left unread."""
        yield from itertools.islice(chunks, n)

    async def ahead(self, chunks: AsyncIterator[bytes], n: int) -> AsyncIterator[bytes]:
        i = 0
        async for chunk in chunks:
            if i == n:
                return
            i += 1
            yield chunk

    def length(self, chunks: Iterator[bytes]) -> int:
        return sum(len(c) for c in chunks)


class Waits:
    """Calls that run until cancelled, and what they saw."""

    def __init__(self) -> None:
        self.started = 0
        self.cancelled = 0
        self.finished = 0

    def init(self, b: Any) -> None:
        self._release = threading.Event()  # made on the machine: an Event doesn't pickle

    async def forever(self) -> None:
        self.started += 1
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        self.finished += 1

    def block(self) -> int:
        """A thread method: it cannot be interrupted, so it waits for ``release``."""
        self.started += 1
        self._release.wait(30)
        self.finished += 1
        return 1

    def release(self) -> None:
        self._release.set()

    def counts(self) -> dict[str, Any]:
        return {"started": self.started, "cancelled": self.cancelled, "finished": self.finished}
