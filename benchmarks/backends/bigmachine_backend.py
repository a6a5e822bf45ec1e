"""bigmachine on the Local system (one process per machine, mutual TLS as shipped)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from typing import Any, BinaryIO, TypeVar

import bigmachine

from benchmarks.workload import BenchService

from .base import Backend, Unsupported

__all__ = ["BigmachineBackend"]

T = TypeVar("T")

#: acall from a coroutine under `asyncio.run` in the calling thread.
ASYNCIO_RUN = "acall (asyncio.run)"
#: acall from a coroutine on the session's own loop: the no-hop path.
SESSION_LOOP = "acall (on b.loop)"


class BigmachineBackend(Backend):
    name = "bigmachine"
    submit_label = "submit"
    worker_process = "the machine's process (Local system), all its threads"
    streaming = True

    def __init__(self) -> None:
        super().__init__()
        self.b: Any = None
        self._machines: list[Any] = []

    def start(self, n: int) -> None:
        self.b = bigmachine.start(bigmachine.systems.Local())
        self._machines = self.b.start(n, bigmachine.Services(Bench=BenchService()))
        if len(self._machines) != n:
            raise RuntimeError(f"b.start({n}) returned {len(self._machines)} machines")
        for m in self._machines:
            m.wait(bigmachine.RUNNING)
        self.n = n
        self.worker_pids()

    def shutdown(self) -> None:
        self._machines, self.n = [], 0
        if self.b is not None:
            b, self.b = self.b, None
            b.shutdown()

    def call(self, i: int, method: str, *args: Any) -> Any:
        return self._machines[i].call(f"Bench.{method}", *args)

    def submit(self, i: int, method: str, *args: Any) -> Any:
        return self._machines[i].submit(f"Bench.{method}", *args)

    def result(self, handle: Any) -> Any:
        return handle.result()

    def async_variants(self) -> list[str]:
        if hasattr(self.b, "loop"):
            return [ASYNCIO_RUN, SESSION_LOOP]
        return [ASYNCIO_RUN]

    def run_async(self, variant: str, coro_fn: Callable[[], Awaitable[T]]) -> T:
        import asyncio  # here: loading this backend imports what a program using bigmachine imports, no more

        if variant == ASYNCIO_RUN:
            return asyncio.run(_as_coroutine(coro_fn))
        if variant == SESSION_LOOP:
            return asyncio.run_coroutine_threadsafe(_as_coroutine(coro_fn), self.b.loop).result()
        raise Unsupported(variant)

    async def acall(self, i: int, method: str, *args: Any) -> Any:
        return await self._machines[i].acall(f"Bench.{method}", *args)

    def call_stream_reply(self, i: int, method: str, *args: Any) -> Iterator[bytes]:
        return self.call(i, method, *args)  # type: ignore[no-any-return]

    def call_stream_arg(self, i: int, method: str, stream: BinaryIO) -> Any:
        return self.call(i, method, stream)

    def debug_app(self) -> Any:
        if not hasattr(self.b, "debug_app"):
            raise Unsupported("b.debug_app does not exist (yet)")
        return self.b.debug_app()


async def _as_coroutine(coro_fn: Callable[[], Awaitable[T]]) -> T:
    return await coro_fn()


BACKEND = BigmachineBackend
