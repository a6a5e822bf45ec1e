"""Bounding a local machine's memory, and telling an out-of-memory death from any other.

A limit is a memory cgroup where this host lets us make one (cgroup v2 ``memory.max``
or v1 ``memory.limit_in_bytes``; the kernel's OOM killer then ends the machine and
counts it), else ``RLIMIT_AS`` set by the machine process itself (allocations fail
with MemoryError, which the machine reports before exiting). Deaths by the global
OOM killer are found in the kernel log (``/dev/kmsg``).
"""

from __future__ import annotations

import errno
import logging
import math
import os
import re
from pathlib import Path

from .janitor import kill_cgroup, remove_cgroup

__all__ = ["MemoryCgroup", "kernel_oom_kill", "parse_size"]

logger = logging.getLogger(__name__)


_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(size: object) -> int:
    """Bytes from ``1073741824``, ``1.5e9``, ``"512M"``, ``"2GiB"``, ``"1.5g"``: a positive whole number of bytes."""
    if isinstance(size, str):
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?\s*", size.lower())
        value: float = int(float(match[1]) * _UNITS[match[2]]) if match else 0
    elif isinstance(size, (int, float)) and not isinstance(size, bool):
        value = size
    else:
        value = 0
    if not (value > 0 and math.isfinite(value) and value == int(value)):
        raise ValueError(f"memory size {size!r} is not a positive number of bytes: give an int or integral float "
                         "of bytes > 0 (1073741824, 1.5e9) or a string like '512M', '2GiB'")
    return int(value)


class MemoryCgroup:
    """A memory cgroup of its own for one machine process; ``None`` from ``create`` where none can be made."""

    def __init__(self, path: Path, version: int, limit: int) -> None:
        self.path, self.version, self.limit = path, version, limit

    @classmethod
    def create(cls, name: str, limit: int) -> MemoryCgroup | None:
        for version, parent in _cgroup_parents():
            path = parent / name
            try:
                path.mkdir()
            except OSError as exc:
                logger.debug("no memory cgroup under %s: %s", parent, exc)
                continue
            group = cls(path, version, limit)
            try:
                if version == 2:
                    (path / "memory.max").write_text(str(limit))
                    if (path / "memory.swap.max").exists():
                        (path / "memory.swap.max").write_text("0")
                else:
                    (path / "memory.limit_in_bytes").write_text(str(limit))
            except OSError as exc:
                logger.debug("cannot limit memory in %s: %s", path, exc)
                group.remove()
                continue
            return group
        return None

    @property
    def procs_file(self) -> str:
        """Where the machine process writes its pid to join (first thing it does)."""
        return str(self.path / "cgroup.procs")

    def oom_kills(self) -> int:
        """How many processes of this group the kernel's OOM killer ended."""
        name = "memory.events" if self.version == 2 else "memory.oom_control"
        try:
            for line in (self.path / name).read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        except OSError:
            pass
        return 0

    def peak(self) -> int | None:
        """The group's peak memory use in bytes, where the kernel keeps it."""
        for name in ("memory.peak", "memory.max_usage_in_bytes"):
            try:
                return int((self.path / name).read_text())
            except (OSError, ValueError):
                continue
        return None

    def kill(self) -> None:
        """SIGKILLs every process left in the group, those that left the machine's process group too."""
        kill_cgroup(str(self.path))

    def remove(self) -> None:
        """Removes the group, waiting (up to 2 s) for processes just killed to leave it."""
        if not remove_cgroup(str(self.path)):
            logger.warning("could not remove memory cgroup %s: still busy, or not ours to remove", self.path)


def _cgroup_parents() -> list[tuple[int, Path]]:
    """Cgroup directories where this process may make a memory-limited child: v2 first."""
    parents: list[tuple[int, Path]] = []
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return parents
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            base = Path("/sys/fs/cgroup") / path.lstrip("/")
            control = base / "cgroup.subtree_control"
            if control.exists() and "memory" in control.read_text().split():
                parents.insert(0, (2, base))
        elif "memory" in controllers.split(","):
            parents.append((1, Path("/sys/fs/cgroup/memory") / path.lstrip("/")))
    return parents


_KILLED = re.compile(r"(?:Out of memory|Memory cgroup out of memory): Killed process (\d+) \(([^)]*)\)(.*)")
_OOM_KILL = re.compile(r"oom-kill:.*\bpid=(\d+)\b")


def kernel_oom_kill(pid: int) -> str | None:
    """The kernel log's line saying the OOM killer ended ``pid``, if it says so (needs /dev/kmsg access)."""
    try:
        fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return None
    found = None
    try:
        while True:
            try:
                record = os.read(fd, 8192).decode(errors="replace")
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.EPIPE:  # the ring buffer wrapped past us; keep reading
                    continue
                break
            message = record.partition(";")[2].strip()
            killed = _KILLED.search(message)
            if killed and int(killed[1]) == pid:
                found = message
            elif (kill := _OOM_KILL.search(message)) and int(kill[1]) == pid and found is None:
                found = message
    finally:
        os.close(fd)
    return found
