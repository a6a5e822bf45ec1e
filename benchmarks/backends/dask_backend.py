"""`distributed` Actors on a LocalCluster of single-threaded worker processes."""

from __future__ import annotations

import logging
from typing import Any

from distributed import Client, LocalCluster

from benchmarks.workload import BenchService

from .base import Backend

__all__ = ["DaskBackend"]


class DaskBackend(Backend):
    name = "dask"
    submit_label = "actor futures"
    worker_process = ("the worker process hosting the actor, all its threads "
                      "(the scheduler runs in the driver; nannies: rest of the cluster)")

    def __init__(self) -> None:
        super().__init__()
        self._cluster: LocalCluster | None = None
        self._client: Client | None = None
        self._actors: list[Any] = []

    def start(self, n: int) -> None:
        self._cluster = LocalCluster(
            n_workers=n,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            silence_logs=logging.ERROR,
        )
        self._client = Client(self._cluster)
        self._client.wait_for_workers(n)
        workers = sorted(self._client.scheduler_info(n_workers=-1)["workers"])
        futures = [
            self._client.submit(BenchService, actor=True, workers=[w], pure=False) for w in workers
        ]
        self._actors = [f.result() for f in futures]
        self.n = n
        self.worker_pids()

    def shutdown(self) -> None:
        self._actors, self.n = [], 0
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._cluster is not None:
            self._cluster.close()
            self._cluster = None

    def call(self, i: int, method: str, *args: Any) -> Any:
        return getattr(self._actors[i], method)(*args).result()

    def submit(self, i: int, method: str, *args: Any) -> Any:
        return getattr(self._actors[i], method)(*args)

    def result(self, handle: Any) -> Any:
        return handle.result()


BACKEND = DaskBackend
