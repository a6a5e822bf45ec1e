"""Entry point of a machine process: ``python -m bigmachine.worker``.

The driver passes a JSON config in ``BIGMACHINE_WORKER``; the process takes the
driver's ``sys.path`` and ``argv``, serves, reports its address on the file
descriptor it was given, and exits when its lease lapses or its driver is gone.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import sys

from .systems.memory import EXIT_OUT_OF_MEMORY

__all__ = ["main"]

logger = logging.getLogger("bigmachine.worker")


def main() -> None:
    try:
        _serve()
    except MemoryError:  # the memory limit is too small even to start: say so as a machine that ran out does
        limit = resource.getrlimit(resource.RLIMIT_AS)[0]
        os.write(2, b"out of memory: MemoryError while the machine was starting; address-space limit %d MiB\n"
                 % (limit >> 20))
        os._exit(EXIT_OUT_OF_MEMORY)


def _serve() -> None:
    spec = json.loads(os.environ.pop("BIGMACHINE_WORKER"))
    sys.path[:0] = [p for p in spec.pop("path") if p not in sys.path]
    sys.argv = spec.pop("argv")
    report_fd = spec.pop("report_fd")
    _limit_memory(spec.pop("memory_limit", None), spec.pop("cgroup_procs", None))
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    from .serving import MachineConfig, MachineServer

    def exit_now(reason: str, code: int = 0) -> None:
        logger.warning("machine exiting: %s", reason)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

    async def serve() -> None:
        server = MachineServer(MachineConfig(**spec), on_exit=exit_now)
        addr = await server.start()
        os.write(report_fd, (addr + "\n").encode())
        os.close(report_fd)
        await server.serve_until_exit()

    import uvloop

    uvloop.run(serve())
    exit_now("stopped by a signal")


def _limit_memory(limit: int | None, cgroup_procs: str | None) -> None:
    """Joins the memory cgroup the driver made for this machine, or else caps the address space."""
    if cgroup_procs:
        with open(cgroup_procs, "w") as f:
            f.write(str(os.getpid()))
    elif limit:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


if __name__ == "__main__":
    main()
