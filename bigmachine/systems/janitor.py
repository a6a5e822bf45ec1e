"""A tiny process per session that ends what its machines started once the driver is gone, even by SIGKILL.

A machine dies with its driver by itself (``PR_SET_PDEATHSIG``, bigmachine/runtime/process.py), but
what its services started would live on: the kernel signals no grandchild. So each session
starts a janitor (this file, run as a script with ``-I -S``: the standard library only) as it
begins, whatever its system, and keeps the only write end of a pipe that is the janitor's
stdin. The session tells it of its temp dir (its keys and certificates) at once, and ``Local``
of each machine's process group (each machine leads one) and cgroup, if it has one, and when
one is cleaned up already. At end of file, which comes when the session closes the pipe at
shutdown or when the kernel does so for a killed driver, the janitor kills every group and
cgroup it still watches, removes the cgroups and the temp dir, and exits.

A process that leaves its machine's process group (``setsid``) is only caught where the
machine has a cgroup (``Local(memory_limit=...)`` on a host that lets us make one). A child
the driver forks without exec (``multiprocessing``'s fork) holds the pipe too: the janitor
then acts when the last of them ends.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import signal
import subprocess
import sys
import time

__all__ = ["Janitor", "kill_cgroup", "kill_group", "reap", "remove_cgroup"]

logger = logging.getLogger(__name__)

_EXIT_GRACE = 5.0  # seconds a janitor told to end may take: it kills what it watches, then exits


def kill_group(pgid: int) -> None:
    """SIGKILLs a process group, if any of it is left."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def kill_cgroup(path: str) -> None:
    """SIGKILLs every process of a cgroup: ``cgroup.kill`` (v2), else each listed pid until none is left (v1)."""
    try:
        with open(os.path.join(path, "cgroup.kill"), "w") as f:
            f.write("1")
        return
    except FileNotFoundError:
        if not os.path.isdir(path):
            return
    except OSError:
        pass
    for _ in range(100):  # a group that forks while being killed takes a few rounds
        try:
            with open(os.path.join(path, "cgroup.procs")) as f:
                pids = [int(p) for p in f.read().split()]
        except (OSError, ValueError):
            return
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.001)


def remove_cgroup(path: str, *, wait: float = 2.0) -> bool:
    """Removes a cgroup once its killed processes have left it (they take a moment); whether it is gone."""
    deadline = time.monotonic() + wait
    while True:
        try:
            os.rmdir(path)
            return True
        except FileNotFoundError:
            return True
        except OSError as exc:
            if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                return False
        time.sleep(0.005)


class Janitor:
    """The driver's end: starts the janitor process and tells it what to clean up if the driver dies."""

    def __init__(self) -> None:
        read_fd, self._fd = os.pipe()  # both close-on-exec: no machine inherits the write end
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-I", "-S", os.path.abspath(__file__)], stdin=read_fd,
                start_new_session=True,  # Ctrl-C and a closed terminal reach the driver, not the janitor
            )
        except BaseException:
            os.close(self._fd)
            raise
        finally:
            os.close(read_fd)
        os.set_blocking(self._fd, False)

    def watch(self, pgid: int, cgroup: str | None) -> None:
        """The group ``pgid`` (and ``cgroup``) is to be killed if the driver dies."""
        self._say(f"+ {pgid} {cgroup or ''}")

    def forget(self, pgid: int) -> None:
        """The group ``pgid`` was cleaned up by the driver: the janitor must not kill it later."""
        self._say(f"- {pgid}")

    def watch_dir(self, path: str) -> None:
        """``path`` (the session's temp dir) is to be removed when the janitor ends: at the latest, with the driver."""
        self._say(f"d {os.fsencode(path).hex()}")  # any byte of a path, a newline included, goes as hex

    def _say(self, message: str) -> None:
        if self._fd < 0:
            return  # closed: what the session still had has been cleaned up
        try:
            os.write(self._fd, (message + "\n").encode())
        except BlockingIOError:  # the janitor stopped reading: a machine's group may outlive a killed driver
            logger.warning("the janitor process %d is not reading; dropped %r", self.process.pid, message)
        except OSError as exc:
            logger.warning("the janitor process %d is gone (%s): what machines start may outlive a killed driver",
                           self.process.pid, exc)

    def close(self) -> None:
        """Closes the pipe, on which the janitor cleans up what it still watches and exits, and reaps it."""
        if self._fd < 0:
            return
        os.close(self._fd)
        self._fd = -1
        try:
            self.process.wait(_EXIT_GRACE)
        except subprocess.TimeoutExpired:
            logger.warning("the janitor process %d did not exit within %g s of its end of file; killed it",
                           self.process.pid, _EXIT_GRACE)
            self.process.kill()
            self.process.wait()


async def reap(process: subprocess.Popen[bytes], timeout: float) -> None:
    """Waits, on the loop, for a child told to exit to do so; SIGKILLs it after ``timeout`` seconds."""
    import asyncio  # here, not above: the janitor process and ``Local`` (before its session) import this file without it

    if process.poll() is not None:  # reaped already (Popen.kill polls first): no pidfd can be opened for it
        return
    loop = asyncio.get_running_loop()
    pidfd = os.pidfd_open(process.pid)
    exited: asyncio.Future[None] = loop.create_future()
    loop.add_reader(pidfd, lambda: None if exited.done() else exited.set_result(None))
    try:
        await asyncio.wait_for(exited, timeout)
    except TimeoutError:
        process.kill()
    finally:
        loop.remove_reader(pidfd)
        os.close(pidfd)
    process.wait()


def main() -> None:
    """The janitor process: watches what stdin says until end of file, then kills what is left."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    watched: dict[int, str] = {}
    dirs: set[bytes] = set()
    for line in sys.stdin.buffer:
        op, subject, cgroup = (line.decode().rstrip("\n").split(" ", 2) + [""])[:3]  # subject: a group, or a dir's hex
        if op == "+":
            watched[int(subject)] = cgroup
        elif op == "-":
            watched.pop(int(subject), None)
        elif op == "d":
            dirs.add(bytes.fromhex(subject))
    for pgid, cgroup in watched.items():
        kill_group(pgid)
        if cgroup:
            kill_cgroup(cgroup)
    for cgroup in filter(None, watched.values()):
        remove_cgroup(cgroup)
    for path in dirs:  # a killed driver's keys must not outlive it; a session's own shutdown removed them already
        shutil.rmtree(path, ignore_errors=True)


if __name__ == "__main__":
    main()
