"""Entry point of a machine process: ``python -m bigmachine.worker``.

The driver passes a JSON config in ``BIGMACHINE_WORKER``; the process takes the
driver's ``sys.path`` and ``argv``, serves, reports its address on the file
descriptor it was given, and exits when its lease lapses or its driver is gone.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys

__all__ = ["main"]

logger = logging.getLogger("bigmachine.worker")


def main() -> None:
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
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


if __name__ == "__main__":
    main()
