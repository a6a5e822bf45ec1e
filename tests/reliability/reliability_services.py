"""Services the reliability tests install on machines.

Importable on Local machines: pytest puts this directory on the driver's ``sys.path``
(rootdir-relative, no ``__init__.py``), and machines take the driver's ``sys.path``.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import bigmachine


class Work:
    """Calls that answer, sleep, stall the machine's loop, stream, or end the machine."""

    def __init__(self) -> None:
        self.calls = 0

    def add(self, a: int, b: int) -> int:
        self.calls += 1
        return a + b

    def echo(self, value: Any) -> Any:
        return value

    async def aadd(self, a: int, b: int) -> int:
        await asyncio.sleep(0)
        return a + b

    def sleep(self, seconds: float) -> float:
        time.sleep(seconds)
        return seconds

    async def stall(self, seconds: float) -> float:
        """Blocks the machine's event loop: nothing (keepalives included) is answered meanwhile."""
        time.sleep(seconds)
        return seconds

    def pid(self) -> int:
        return os.getpid()

    def environ(self) -> dict[str, str]:
        return dict(os.environ)

    def count(self) -> int:
        return self.calls

    def exit_process(self, code: int) -> None:
        """Ends the machine's process at once, as a service calling os._exit would."""
        os._exit(code)

    def chunks(self, n: int, size: int, pause: float = 0.0) -> Iterator[bytes]:
        for _ in range(n):
            if pause:
                time.sleep(pause)
            yield b"c" * size

    def consume(self, stream: Iterator[bytes]) -> int:
        return sum(len(chunk) for chunk in stream)

    def pipe(self, stream: Iterator[bytes]) -> Iterator[bytes]:
        """A streamed reply made of a streamed argument, as it arrives."""
        for chunk in stream:
            yield chunk

    def read_files(self, paths: list[str]) -> dict[str, bytes | None]:
        """The contents of each file this machine can read (None where it can't)."""
        found: dict[str, bytes | None] = {}
        for path in paths:
            try:
                with open(path, "rb") as f:
                    found[path] = f.read()
            except OSError:
                found[path] = None
        return found

    def _secret(self) -> str:
        return "private: never callable remotely"

    def hold(self, token: bytes) -> int:
        """Keeps ``token`` in this process's memory (a marker a memory scan must find)."""
        self.token = bytearray(token)
        return len(self.token)


class Flaky:
    """Remote failures of the kinds a caller must never retry."""

    def __init__(self) -> None:
        self.calls = 0

    def raise_temporary(self) -> None:
        """Raises the library's own temporary error *from the remote method*."""
        self.calls += 1
        raise bigmachine.Unavailable("raised by the service itself, not by the transport")

    def raise_value_error(self) -> None:
        self.calls += 1
        raise ValueError("remote failure")

    def count(self) -> int:
        return self.calls


class BadArgs:
    """Results, errors and streams that can't travel as they are."""

    def unpicklable_args(self) -> None:
        raise ValueError("cannot travel", threading.Lock())

    def lock(self) -> Any:
        return threading.Lock()

    def stream_text(self) -> Iterator[Any]:
        yield b"fine"
        yield "not bytes"

    def stream_then_fail(self, n: int) -> Iterator[bytes]:
        for i in range(n):
            yield b"%d" % i
        raise RuntimeError("stream broke half-way")

    async def astream_then_fail(self, n: int) -> Any:
        for i in range(n):
            yield b"%d" % i
        raise RuntimeError("async stream broke half-way")


class Hog:
    """Allocates memory until the machine runs out."""

    def allocate(self, mib: int) -> int:
        held = []
        for _ in range(mib // 16):
            held.append(b"\1" * (16 << 20))  # written, so the pages are really used
        return len(held) * 16

    def pid(self) -> int:
        return os.getpid()


class SlowInit:
    """An ``init`` that never finishes in time."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def init(self, b: Any) -> None:
        time.sleep(self.seconds)

    def never(self) -> None:
        pass


class Busy:
    """Work that keeps a machine busy: long calls, a held interpreter lock."""

    def sleep(self, seconds: float, tag: Any = None) -> Any:
        time.sleep(seconds)
        return tag

    def hold_gil(self, seconds: float) -> float:
        """Holds the interpreter lock for ``seconds``: libc's usleep called through PyDLL never releases it
        (as a C extension that forgets to release the GIL, or a huge regex, would)."""
        import ctypes

        ctypes.PyDLL(None).usleep(int(seconds * 1e6))
        return seconds

    def chatter(self, lines: int) -> int:
        """Prints progress as a user's code would: lines, and a bar redrawn with carriage returns."""
        for i in range(lines):
            print(f"working on item {i}")
            sys.stderr.write(f"\rprogress {i + 1}/{lines}")
        sys.stderr.write("\n")
        return lines

    async def asleep(self, seconds: float, tag: Any = None) -> Any:
        """Sleeps on the machine's event loop (stuck behind ``stall_loop``)."""
        await asyncio.sleep(seconds)
        return tag

    async def stall_loop(self, seconds: float) -> float:
        """Blocks the machine's event loop: its pings and ``async def`` methods hang meanwhile (plain methods,
        served by their connections' threads, go on)."""
        time.sleep(seconds)
        return seconds

    def pid(self) -> int:
        return os.getpid()


class Relay:
    """Calls another machine of the session from inside this one (``b.dial``)."""

    def init(self, b: Any) -> None:
        self.b = b

    def call(self, addr: str, method: str, *args: Any, timeout: float | None = None) -> Any:
        return self.b.dial(addr).call(method, *args, timeout=timeout)

    def retry_call(self, addr: str, method: str, *args: Any, timeout: float | None = None) -> Any:
        return self.b.dial(addr).retry_call(method, *args, timeout=timeout)

    def state(self, addr: str) -> str:
        return self.b.dial(addr).state.name

    def cancel(self, addr: str) -> None:
        self.b.dial(addr).cancel()

    def same_object(self, addr: str) -> bool:
        return self.b.dial(addr) is self.b.dial(addr)
