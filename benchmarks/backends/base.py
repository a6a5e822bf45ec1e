"""The interface every backend implements, so scenarios are written once.

A backend hosts one `benchmarks.workload.BenchService` per worker ("machine")
and calls its methods by name. Workers are numbered 0..n-1 in start order.
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, BinaryIO, ClassVar, TypeVar

__all__ = ["Backend", "Unsupported"]

T = TypeVar("T")


class Unsupported(Exception):
    """The backend has no equivalent of what a scenario asks for."""


class Backend(abc.ABC):
    """Workers hosting a BenchService, started and stopped as one cluster."""

    name: ClassVar[str]
    #: How `submit` is spelled for this backend, used as the variant label.
    submit_label: ClassVar[str] = "futures"
    #: What `worker_pids` names, for the notes of per-process figures (CPU, RSS).
    worker_process: ClassVar[str] = "the worker process"

    def __init__(self) -> None:
        self.n = 0

    @abc.abstractmethod
    def start(self, n: int) -> None:
        """Starts the session and n workers; returns once each has answered a call."""

    @abc.abstractmethod
    def shutdown(self) -> None:
        """Stops every worker and the session; idempotent, never raises on a dead cluster."""

    @abc.abstractmethod
    def call(self, i: int, method: str, *args: Any) -> Any:
        """Calls method on worker i and waits for its result (the sync round trip)."""

    @abc.abstractmethod
    def submit(self, i: int, method: str, *args: Any) -> Any:
        """Issues a call on worker i without waiting; `result` redeems the handle."""

    @abc.abstractmethod
    def result(self, handle: Any) -> Any:
        """Waits for the result of a `submit` handle. Handles are redeemed oldest first."""

    def worker_pids(self) -> list[int]:
        """The pid of each worker's process (the one running the service)."""
        return [int(self.call(i, "pid")) for i in range(self.n)]

    # Optional: async calls, each variant a way of running a coroutine.

    def async_variants(self) -> list[str]:
        return []

    def run_async(self, variant: str, coro_fn: Callable[[], Awaitable[T]]) -> T:
        raise Unsupported(f"{self.name} has no async calls")

    async def acall(self, i: int, method: str, *args: Any) -> Any:
        raise Unsupported(f"{self.name} has no async calls")

    # Optional: streamed arguments and replies.

    streaming: ClassVar[bool] = False

    def call_stream_reply(self, i: int, method: str, *args: Any) -> Iterator[bytes]:
        raise Unsupported(f"{self.name} does not stream replies")

    def call_stream_arg(self, i: int, method: str, stream: BinaryIO) -> Any:
        raise Unsupported(f"{self.name} does not stream arguments")

    # Optional: the debug application serving merged CPU profiles.

    def debug_app(self) -> Any:
        raise Unsupported(f"{self.name} has no debug application")

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
