"""The no-network floor: one stateful worker process per machine behind a `Pipe`.

Workers are started with the "spawn" method (a fresh interpreter, as every other
backend's workers are), never fork: the driver may hold threads of other libraries.
Pipelining is natural: `submit` sends, `result` receives, in order per pipe.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
from typing import Any

from .base import Backend

__all__ = ["MultiprocessingBackend"]


def _serve(conn: multiprocessing.connection.Connection) -> None:
    """Worker loop: (method, args) in, ("ok", value) or ("err", exception) out."""
    from benchmarks.workload import BenchService

    service = BenchService()
    while True:
        try:
            method, args = conn.recv()
        except EOFError:
            return
        try:
            reply = ("ok", getattr(service, method)(*args))
        except Exception as exc:  # the caller re-raises it
            reply = ("err", exc)
        conn.send(reply)


class MultiprocessingBackend(Backend):
    name = "multiprocessing"
    submit_label = "pipelined"
    worker_process = "the spawned child process"

    def __init__(self) -> None:
        super().__init__()
        self._ctx = multiprocessing.get_context("spawn")
        self._procs: list[Any] = []
        self._conns: list[multiprocessing.connection.Connection] = []

    def start(self, n: int) -> None:
        for _ in range(n):
            parent, child = self._ctx.Pipe()
            proc = self._ctx.Process(target=_serve, args=(child,), daemon=True)
            proc.start()
            child.close()
            self._procs.append(proc)
            self._conns.append(parent)
        self.n = n
        self.worker_pids()

    def shutdown(self) -> None:
        for conn in self._conns:
            conn.close()
        for proc in self._procs:
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
        self._procs, self._conns, self.n = [], [], 0

    def call(self, i: int, method: str, *args: Any) -> Any:
        return self.result(self.submit(i, method, *args))

    def submit(self, i: int, method: str, *args: Any) -> Any:
        self._conns[i].send((method, args))
        return i

    def result(self, handle: Any) -> Any:
        status, value = self._conns[handle].recv()
        if status == "err":
            raise value
        return value


BACKEND = MultiprocessingBackend
