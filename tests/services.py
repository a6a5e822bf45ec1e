"""Services the tests install on machines (importable on the machines: tests/ is on sys.path)."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any


class Echo:
    """Returns what it is given, in several ways."""

    def __init__(self) -> None:
        self.calls = 0

    def echo(self, value: Any) -> Any:
        self.calls += 1
        return value

    def add(self, a: int, b: int = 0, *, c: int = 0) -> int:
        return a + b + c

    def count(self) -> int:
        return self.calls

    async def aecho(self, value: Any) -> Any:
        await asyncio.sleep(0)
        return value

    def thread_name(self) -> str:
        return threading.current_thread().name

    async def loop_thread_name(self) -> str:
        return threading.current_thread().name

    def sleep(self, seconds: float) -> float:
        time.sleep(seconds)
        return seconds

    def pid(self) -> int:
        return os.getpid()

    def environ(self, name: str) -> str | None:
        return os.environ.get(name)

    def argv(self) -> list[str]:
        return sys.argv

    def say(self, text: str) -> None:
        print(text)
        print(text + " (stderr)", file=sys.stderr)

    def _private(self) -> int:
        return 1


class Failing:
    """Raises in the ways the error tests need."""

    def raise_value_error(self, message: str) -> None:
        raise ValueError(message, 42)

    def unpicklable_result(self) -> Any:
        return threading.Lock()

    def unpicklable_exception(self) -> None:
        raise WithLock()

    def stream_then_fail(self, n: int) -> Iterator[bytes]:
        for i in range(n):
            yield b"%d" % i
        raise RuntimeError("stream broke half-way")


class WithLock(Exception):
    """An exception that can't be pickled (it holds a lock)."""

    def __init__(self) -> None:
        super().__init__("holds a lock")
        self.lock = threading.Lock()


class Streams:
    """Streams bytes both ways."""

    def chunks(self, n: int, size: int) -> Iterator[bytes]:
        for _ in range(n):
            yield b"x" * size

    async def achunks(self, n: int, size: int) -> AsyncIterator[bytes]:
        for _ in range(n):
            yield b"y" * size

    def consume(self, stream: Iterator[bytes]) -> int:
        return sum(len(chunk) for chunk in stream)

    async def aconsume(self, stream: AsyncIterator[bytes], tag: str = "") -> tuple[int, str]:
        total = 0
        async for chunk in stream:
            total += len(chunk)
        return total, tag

    def rss(self) -> int:
        import psutil

        return psutil.Process().memory_info().rss


class Peer:
    """Calls another machine from inside a service, with the machine's own session."""

    def init(self, b: Any) -> None:
        self.b = b
        self.is_driver = b.is_driver

    def driver_flag(self) -> bool:
        return self.is_driver

    def call_other(self, addr: str, method: str, *args: Any) -> Any:
        return self.b.dial(addr).call(method, *args, timeout=10)

    async def acall_other(self, addr: str, method: str, *args: Any) -> Any:
        return await self.b.dial(addr).acall(method, *args, timeout=10)


class BadInit:
    def init(self, b: Any) -> None:
        raise RuntimeError("init failed on purpose")

    def never(self) -> None:
        pass
