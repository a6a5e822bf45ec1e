"""Ray actors on a local Ray instance (started by `ray.init`, stopped by `ray.shutdown`)."""

from __future__ import annotations

import logging
import os
from typing import Any

import ray

from benchmarks.workload import BenchService

from .base import Backend

__all__ = ["RayBackend"]

_CPUS = 2


class RayBackend(Backend):
    name = "ray"
    submit_label = "remote"
    worker_process = "the actor's worker process, all its threads (raylet, GCS: rest of the cluster)"

    def __init__(self) -> None:
        super().__init__()
        self._actors: list[Any] = []

    def start(self, n: int) -> None:
        ray.init(
            num_cpus=_CPUS,
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.WARNING,
            configure_logging=True,
            # Workers import benchmarks.workload by reference.
            runtime_env={"env_vars": {"PYTHONPATH": os.environ.get("PYTHONPATH", "")}},
        )
        actor_cls = ray.remote(BenchService)
        # An actor holds 1 CPU by default: beyond the 2 CPUs, ask for none so
        # that 16 actors fit on this machine (scale scenario).
        cpus = 1 if n <= _CPUS else 0
        self._actors = [actor_cls.options(num_cpus=cpus).remote() for _ in range(n)]
        self.n = n
        self.worker_pids()

    def shutdown(self) -> None:
        self._actors, self.n = [], 0
        if ray.is_initialized():
            ray.shutdown()

    def call(self, i: int, method: str, *args: Any) -> Any:
        return ray.get(getattr(self._actors[i], method).remote(*args))

    def submit(self, i: int, method: str, *args: Any) -> Any:
        return getattr(self._actors[i], method).remote(*args)

    def result(self, handle: Any) -> Any:
        return ray.get(handle)


BACKEND = RayBackend
