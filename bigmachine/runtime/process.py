"""Entry point of a machine process: ``python -m bigmachine.runtime``.

The system passes a ``LaunchSpec`` in the environment; the process takes the driver's
``sys.path`` and ``argv``, serves, reports its address on the file descriptor it was
given, and exits when its lease lapses or its driver is gone.
"""

from __future__ import annotations

import ctypes
import logging
import os
import resource
import signal
import sys
import threading

from .spec import EXIT_OUT_OF_MEMORY, LaunchSpec

__all__ = ["SCHEDULING", "die_with_parent", "main", "run", "schedule_as_batch"]

logger = logging.getLogger("bigmachine.machine")

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>

#: The environment variable that picks how the kernel schedules a machine's threads: "batch" (the default)
#: or "normal" (docs/api.md, "Scheduling").
SCHEDULING = "BIGMACHINE_SCHEDULING"


def main() -> None:
    run(LaunchSpec.from_environment())


def run(spec: LaunchSpec) -> None:
    """Serves as the machine ``spec`` describes until it exits (a fresh process, or a fork of the fork server)."""
    die_with_parent(spec.parent)
    schedule_as_batch(os.environ.get(SCHEDULING, "batch"))
    # Made before the limit applies: past a MemoryError under it, even this line may not be allocated.
    starving = (b"out of memory: MemoryError while the machine was starting; address-space limit %d MiB\n"
                % ((spec.memory_limit or 0) >> 20))
    try:
        _serve(spec)
    except MemoryError:  # the memory limit is too small even to start: say so as a machine that ran out does
        os.write(2, starving)
        os._exit(EXIT_OUT_OF_MEMORY)


def die_with_parent(parent: int | None) -> None:
    """Has the kernel SIGKILL this process the moment its parent ends, even while a thread holds the GIL.

    The supervisor's own parent check needs the interpreter; this needs nothing. The signal
    comes when the parent *thread* that forked us ends: the driver forks machines on its session
    loop thread, which lives until they are all stopped, and the fork server (whose forks die with
    it in turn) there or on its main thread, which lives as long as the process
    (bigmachine/systems/local.py, local_processes.py).
    """
    if parent is None:
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            logger.debug("prctl(PR_SET_PDEATHSIG) failed: %s", os.strerror(ctypes.get_errno()))
    except (OSError, AttributeError):  # no prctl (not Linux): the supervisor's parent check remains
        pass
    if os.getppid() != parent:  # the parent ended before the prctl took hold: it will never fire
        os.write(2, b"machine exiting: its parent (pid %d) ended before the machine started\n" % parent)
        os._exit(0)


def schedule_as_batch(policy: str) -> None:
    """Runs this thread, and every thread and process it starts later, as batch work (``SCHED_BATCH``),
    unless ``policy`` is "normal".

    A batch thread that wakes never preempts the thread running on its CPU; it waits for that
    thread's time slice (a few ms at most). Under load, the thread a request wakes would
    mostly preempt the one holding the GIL, only to wait for it, or preempt the driver on a
    shared host in the middle of sending more calls. Fairness and priority stay as they were.
    """
    if policy == "normal":
        return
    if policy != "batch":
        logger.warning("%s=%r is neither 'batch' nor 'normal': scheduling as batch work", SCHEDULING, policy)
    try:
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    except (AttributeError, OSError) as exc:  # not Linux, or refused: the machine runs as normal work
        logger.debug("SCHED_BATCH not set: %s", exc)


def _serve(spec: LaunchSpec) -> None:
    sys.path[:0] = [p for p in spec.path if p not in sys.path]
    sys.argv = spec.argv
    report_fd = spec.report_fd
    assert report_fd is not None, "a machine process reports its address on a file descriptor"
    _limit_memory(spec.memory_limit, spec.cgroup_procs)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    try:
        import uvloop

        from .server import MachineServer
    except (SystemError, ImportError) as exc:
        if spec.memory_limit is None:
            raise
        # Under the limit, a C extension that cannot allocate may say so with SystemError, and a shared object
        # that cannot be mapped with ImportError ("failed to map segment"), instead of MemoryError.
        raise MemoryError(f"importing the machine's server failed: {exc}") from exc

    def exit_now(reason: str, code: int = 0) -> None:
        logger.warning("machine exiting: %s", reason)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

    async def serve() -> signal.Signals | None:
        server = MachineServer(spec, on_exit=exit_now)
        addr = await server.start()
        os.write(report_fd, (addr + "\n").encode())
        os.close(report_fd)
        await server.serve_until_exit()
        return server.stopped_by

    stopped_by = uvloop.run(serve())
    if stopped_by is not None:  # end as the signal would have ended us: the driver sees it in the exit status
        # Quiet: a shutdown stops every machine so, and a signal from elsewhere the driver reports itself
        # ("machine process N was killed by SIGTERM").
        logger.debug("machine exiting: stopped by %s", stopped_by.name)
        sys.stdout.flush()
        sys.stderr.flush()
        signal.signal(stopped_by, signal.SIG_DFL)
        os.kill(os.getpid(), stopped_by)
    exit_now("stopped")


_CAPPED_THREAD_STACK = 4 << 20
_M_ARENA_MAX = -8  # glibc's mallopt parameter


def _limit_memory(limit: int | None, cgroup_procs: str | None) -> None:
    """Joins the memory cgroup the driver made for this machine, or else caps the address space."""
    if cgroup_procs:
        with open(cgroup_procs, "w") as f:
            f.write(str(os.getpid()))
    elif limit:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        _spend_little_address_space()


def _spend_little_address_space() -> None:
    """Under an address-space cap, what is only reserved counts as much as what is used: each connection's
    thread would reserve an 8 MiB stack and a 64 MiB malloc arena. Threads get 4 MiB stacks and share
    one arena instead (enough for service code; the cap is the fallback where no cgroup can be made)."""
    threading.stack_size(_CAPPED_THREAD_STACK)
    try:
        ctypes.CDLL(None).mallopt(_M_ARENA_MAX, 1)
    except (OSError, AttributeError):  # not glibc
        pass


if __name__ == "__main__":
    main()
