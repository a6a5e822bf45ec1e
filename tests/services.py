"""The services tests install on machines, in one place.

Importable on the machines: pytest puts this directory on the driver's ``sys.path`` (the
rootdir's conftest.py, no ``__init__.py``), Local machines take the driver's ``sys.path``, and
a test that runs a driver of its own puts this directory on its path first.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import bigmachine
from bigmachine import expvar


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


class Mixed:
    """Replies whole or streamed, at once or after a while, or fails, as each call asks: the cases a
    pipelined connection meets."""

    def reply(self, value: Any, seconds: float = 0.0, chunks: int = 0) -> Any:
        if seconds:
            time.sleep(seconds)
        if chunks:
            return (b"%s:%d;" % (str(value).encode(), i) for i in range(chunks))
        return value

    def fail(self, value: Any) -> None:
        raise ValueError(f"failed for {value!r}")


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
    """Fails its machine's start."""

    def init(self, b: Any) -> None:
        raise RuntimeError("init failed on purpose")

    def never(self) -> None:
        pass


# ---------------------------------------- calls, streams and cancellation (the wire)


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


# ---------------------------------------- processes: output, subprocesses, the interpreter lock


class Output:
    """Writes to the machine's stdout the ways real programs do."""

    def pid(self) -> int:
        return os.getpid()

    def add(self, a: int, b: int) -> int:
        return a + b

    def spew(self, total: int, chunk: int = 1 << 16) -> int:
        """``total`` bytes of ``x`` without a newline, then one."""
        piece = "x" * chunk
        for _ in range(total // chunk):
            sys.stdout.write(piece)
        sys.stdout.write("\n")
        sys.stdout.flush()
        return total

    def progress(self, steps: int, end: str = " done\n") -> None:
        """A progress bar rewriting its line with ``\\r``, as tqdm does."""
        for i in range(steps + 1):
            sys.stdout.write(f"\r{100 * i // steps:3d}%")
            sys.stdout.flush()
        sys.stdout.write(end)
        sys.stdout.flush()

    def stall(self, *states: str) -> None:
        """Rewrites its line with each state in turn (a little apart), then stops with no newline."""
        for state in states:
            sys.stdout.write("\r" + state)
            sys.stdout.flush()
            time.sleep(0.05)

    def chatter(self, seconds: float, per_second: int = 2000) -> None:
        """Prints numbered 100-character lines from a thread for ``seconds``, returning at once."""
        def run() -> None:
            end, n = time.monotonic() + seconds, 0
            while time.monotonic() < end:
                for _ in range(per_second // 100):
                    print(f"{n:08d} " + "y" * 91)
                    n += 1
                time.sleep(0.01)

        threading.Thread(target=run, daemon=True).start()


class Spawner:
    """Starts subprocesses that would outlive the machine if nothing ended them."""

    def __init__(self) -> None:
        self.children: list[subprocess.Popen[bytes]] = []

    def pid(self) -> int:
        return os.getpid()

    def spawn(self, setsid: bool = False) -> int:
        """Starts ``sleep 1000`` (in a session of its own if ``setsid``: out of the machine's process group)."""
        child = subprocess.Popen(["sleep", "1000"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL, start_new_session=setsid)
        self.children.append(child)
        return child.pid


class Gil:
    """Holds the interpreter lock for a long time in one C call, as a huge regex or C extension does."""

    def pid(self) -> int:
        return os.getpid()

    def hold(self, n: int = 40) -> bool:
        """Catastrophic backtracking: 2**n steps inside ``re``, which never releases the GIL."""
        return re.match(r"(a+)+$", "a" * n + "b") is not None


# ---------------------------------------- reliability: faults, load, machine-to-machine calls


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


# ---------------------------------------- the debug server: what its pages observe


def hot_loop_for_profile(seconds: float, cooled: threading.Event) -> int:
    """Burns CPU in pure Python, so a CPU profile finds this function by name; ``cooled`` ends it early."""
    end, n = time.monotonic() + seconds, 0
    while time.monotonic() < end and not cooled.is_set():
        n += sum(i * i for i in range(500))
    return n


class Observed:
    """Work to observe: CPU, a user Prometheus counter, an expvar, output, failures."""

    def init(self, b: Any) -> None:
        from prometheus_client import Counter

        self.jobs = 0
        self.cooled = threading.Event()
        self.counter = Counter("debug_test_jobs", "Jobs done by the debug test service.")
        expvar.publish("jobs", lambda: {"done": self.jobs})
        print("debug test service ready", flush=True)

    def burn(self, seconds: float) -> int:
        self.cooled.clear()
        return hot_loop_for_profile(seconds, self.cooled)

    def cool(self) -> None:
        """Ends a burn in progress, so a test need not wait out its seconds."""
        self.cooled.set()

    def work(self, n: int) -> int:
        self.jobs += n
        self.counter.inc(n)
        return self.jobs

    def fail(self) -> None:
        raise ValueError("failed on purpose")

    def sleep(self, seconds: float) -> float:
        """A call of a known duration, for the timeline."""
        time.sleep(seconds)
        return seconds


class LongInitError:
    """Fails its machine's start with one long unbreakable word, as a path or a URL in an error is."""

    def init(self, b: Any) -> None:
        raise RuntimeError("cannot open /" + "/".join(f"directory_number_{i}" for i in range(30)) + "/config.toml")


class LongNames:
    """Method names long enough to overflow a careless table cell."""

    def a_method_name_long_enough_to_push_every_column_of_the_status_table_past_its_card(self) -> int:
        return 1

    def fail_with_a_long_message(self) -> None:
        raise ValueError("failed on purpose, " + "with a message that goes on " * 12)


RELEASE = threading.Event()  # in-process (Testing) machines share it: the test ends a block early


class Hang:
    """Blocks the machine's event loop (an async method that never yields): the machine stops answering."""

    async def block(self, seconds: float) -> float:
        RELEASE.wait(seconds)
        return seconds

    def ping(self) -> int:
        return 1


class Modules:
    """What a machine has imported."""

    def loaded(self, roots: list[str]) -> list[str]:
        return sorted(name for name in sys.modules if name.split(".")[0] in roots or name.startswith("bigmachine.web"))


INIT_GATE = threading.Event()  # in-process machines: GatedInit stays STARTING until the test sets it


class GatedInit:
    """Keeps its machine STARTING until INIT_GATE is set (Testing machines only)."""

    def init(self, b: Any) -> None:
        INIT_GATE.wait(30)

