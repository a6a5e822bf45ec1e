"""A machine that runs out of memory is reported as OutOfMemory with the figures, fast.

Both ways ``Local(memory_limit=...)`` bounds a machine: a memory cgroup (the kernel's OOM killer
ends it; the cgroup counts the kill) and, where no cgroup can be made, RLIMIT_AS (MemoryError
escapes a service; the machine reports it and exits with a status of its own). Plus the kernel
log parsing (``kernel_oom_kill``) against current kernels' wording, and ``parse_size``.
"""

from __future__ import annotations

import errno
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from services import Hog, Work

import bigmachine
from bigmachine import RUNNING, STOPPED
from bigmachine.systems import Local
from bigmachine.systems import memory
from bigmachine.systems.memory import MemoryCgroup, kernel_oom_kill, parse_size

pytestmark = pytest.mark.timeout(120)

LIMIT = "200M"
FAST = 10.0  # seconds from the allocation to the caller's error (it takes well under a second here)


def _cgroups_available() -> bool:
    group = MemoryCgroup.create(f"bigmachine-probe-{os.getpid()}", 256 << 20)
    if group is None:
        return False
    group.remove()
    return True


def _run_out_of_memory(b: bigmachine.B) -> tuple[bigmachine.Machine, BaseException, float, int]:
    (m,) = b.start(1, bigmachine.Services(Hog=Hog(), Work=Work()))
    assert m.wait(RUNNING, timeout=60) == RUNNING, m.err
    pid = m.call("Hog.pid", timeout=10)
    assert m.call("Hog.allocate", 32, timeout=10) == 32  # well under the limit: fine
    begun = time.monotonic()
    with pytest.raises(bigmachine.OutOfMemory) as info:
        m.call("Hog.allocate", 1024, timeout=60)
    took = time.monotonic() - begun
    return m, info.value, took, pid


def test_cgroup_limit_oom_kill_is_out_of_memory_with_figures() -> None:
    if not _cgroups_available():
        pytest.skip("no memory cgroup can be made here (needs a writable cgroup v2 memory.max or v1 memory controller)")
    with bigmachine.start(Local(memory_limit=LIMIT)) as b:
        m, err, took, pid = _run_out_of_memory(b)
        assert took < FAST
        assert m.state == STOPPED and isinstance(m.err, bigmachine.OutOfMemory)
        assert isinstance(err, bigmachine.MachineStopped) and err.machine == m.addr and err.__cause__ is m.err
        assert f"machine process {pid} was killed by the kernel's OOM killer" in str(m.err)
        assert re.search(r"limit 200 MiB, peak \d+ MiB", str(m.err)), str(m.err)
        # Later calls fail fast with the same kind of error.
        with pytest.raises(bigmachine.OutOfMemory):
            m.call("Work.add", 1, 2)


def test_cgroup_oom_kill_is_found_in_the_kernel_log() -> None:
    """The real kernel's wording for a memory-cgroup OOM kill is what ``kernel_oom_kill`` parses."""
    if not _cgroups_available():
        pytest.skip("no memory cgroup can be made here")
    try:
        os.close(os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK))
    except OSError as exc:
        pytest.skip(f"the kernel log can't be read here: {exc}")
    with bigmachine.start(Local(memory_limit=LIMIT)) as b:
        _, _, _, pid = _run_out_of_memory(b)
    deadline = time.monotonic() + 5
    while (line := kernel_oom_kill(pid)) is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert line is not None, f"no OOM kill of pid {pid} found in /dev/kmsg"
    assert f"Killed process {pid} (" in line or f"pid={pid}," in line, line


def test_address_space_limit_memory_error_is_out_of_memory_with_figures(monkeypatch: pytest.MonkeyPatch) -> None:
    """No cgroup (forced): the machine caps its own address space; MemoryError is reported, not a crash."""
    monkeypatch.setattr(MemoryCgroup, "create", classmethod(lambda cls, name, limit: None))
    with bigmachine.start(Local(memory_limit=LIMIT)) as b:
        m, err, took, pid = _run_out_of_memory(b)
        assert took < FAST
        assert m.state == STOPPED and isinstance(m.err, bigmachine.OutOfMemory)
        assert err.__cause__ is m.err
        message = str(m.err)
        assert f"machine process {pid} ran out of memory: MemoryError in Hog.allocate" in message
        assert re.search(r"resident \d+ MiB, address-space limit 200 MiB", message), message


def test_memory_limit_too_small_to_start_is_out_of_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    """MemoryError while the machine process starts (imports): OutOfMemory too, not a bare crash."""
    monkeypatch.setattr(MemoryCgroup, "create", classmethod(lambda cls, name, limit: None))
    with bigmachine.start(Local(memory_limit="20M", start_timeout=30)) as b:
        begun = time.monotonic()
        (m,) = b.start(1, bigmachine.Services(Work=Work()))
        assert m.wait(RUNNING, timeout=35) == STOPPED
        assert time.monotonic() - begun < FAST
        assert isinstance(m.err, bigmachine.OutOfMemory), repr(m.err)
        assert "MemoryError" in str(m.err) and "20 MiB" in str(m.err), str(m.err)


def test_a_shared_object_not_mapped_under_the_limit_is_out_of_memory(monkeypatch: pytest.MonkeyPatch,
                                                                     tmp_path: Path) -> None:
    """Under an address-space cap, loading a C extension fails with ImportError ("failed to map segment"),
    not MemoryError: seen with uvloop's. A stand-in uvloop fails the same way here, whatever the limit."""
    monkeypatch.setattr(MemoryCgroup, "create", classmethod(lambda cls, name, limit: None))
    (tmp_path / "uvloop").mkdir()
    (tmp_path / "uvloop" / "__init__.py").write_text(
        'raise ImportError("uvloop/loop.so: failed to map segment from shared object")\n')
    with bigmachine.start(Local(memory_limit="1G", start_timeout=30)) as b:
        (m,) = b.start(1, bigmachine.Services(Work=Work()), bigmachine.Environ({"PYTHONPATH": str(tmp_path)}))
        assert m.wait(RUNNING, timeout=35) == STOPPED
        assert isinstance(m.err, bigmachine.OutOfMemory), repr(m.err)
        assert "MemoryError" in str(m.err) and "1024 MiB" in str(m.err), str(m.err)


# ------------------------------------------------------------------ the kernel log


class _FakeOs:
    """Stands in for ``os`` inside bigmachine.systems.memory only (the real module is untouched)."""

    def __init__(self, records: list[bytes | OSError], openable: bool) -> None:
        self._records: Iterator[bytes | OSError] = iter(records)
        self._openable = openable
        self.closed: list[int] = []

    def __getattr__(self, name: str) -> object:
        return getattr(os, name)  # constants such as O_RDONLY

    def open(self, path: str, flags: int) -> int:
        assert path == "/dev/kmsg" and flags & os.O_NONBLOCK
        if not self._openable:
            raise PermissionError(errno.EPERM, "Operation not permitted")
        return 12345

    def read(self, fd: int, size: int) -> bytes:
        assert fd == 12345 and size >= 4096  # a record is read whole, or not at all (EINVAL)
        record = next(self._records, None)
        if record is None:
            raise BlockingIOError(errno.EAGAIN, "no more records")
        if isinstance(record, OSError):
            raise record
        return record

    def close(self, fd: int) -> None:
        self.closed.append(fd)


def _fake_kmsg(monkeypatch: pytest.MonkeyPatch, records: list[bytes | OSError], openable: bool = True) -> list[int]:
    """Feeds ``kernel_oom_kill`` these /dev/kmsg records (one per read, as the kernel does)."""
    fake = _FakeOs(records, openable)
    monkeypatch.setattr(memory, "os", fake)
    return fake.closed


# Records as kernels 5.x and 6.x write them (the 6.18 ones copied from this host's /dev/kmsg).
OOM_KILL = (b"6,2811,3215618869,-;oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,"
            b"oom_memcg=/m0,task_memcg=/m0,task=python,pid=4242,uid=0\n")
MEMCG_KILLED = (b"3,2812,3215618895,-;Memory cgroup out of memory: Killed process 4242 (python) total-vm:326920kB, "
                b"anon-rss:218336kB, file-rss:14276kB, shmem-rss:0kB, UID:0 pgtables:524kB oom_score_adj:0\n")
GLOBAL_KILLED = (b"3,977,88123456,-;Out of memory: Killed process 4242 (python3) total-vm:9437184kB, "
                 b"anon-rss:8388608kB, file-rss:0kB, shmem-rss:0kB, UID:1000 pgtables:16444kB oom_score_adj:0\n")
REAPED = b"6,978,88123470,-;oom_reaper: reaped process 4242 (python3), now anon-rss:0kB, file-rss:0kB, shmem-rss:0kB\n"
OTHER = b"6,979,88123480,-;Out of memory: Killed process 4243 (python3) total-vm:100kB, anon-rss:10kB\n"
NOISE = b"6,100,1000,-;e1000: eth0 NIC Link is Up 1000 Mbps Full Duplex\n SUBSYSTEM=net\n DEVICE=n2\n"


@pytest.mark.parametrize("records, wanted", [
    ([NOISE, OOM_KILL, MEMCG_KILLED, REAPED], "Memory cgroup out of memory: Killed process 4242 (python)"),
    ([NOISE, GLOBAL_KILLED, REAPED], "Out of memory: Killed process 4242 (python3)"),
    ([OOM_KILL, NOISE], "oom-kill:constraint=CONSTRAINT_MEMCG"),  # the summary line alone still tells
    ([NOISE, OSError(errno.EPIPE, "Broken pipe"), GLOBAL_KILLED], "Out of memory: Killed process 4242"),
], ids=["memcg", "global", "summary-only", "ring-buffer-wrapped"])
def test_kernel_oom_kill_finds_the_kill_of_this_pid(monkeypatch: pytest.MonkeyPatch, records: list[bytes | OSError],
                                                    wanted: str) -> None:
    closed = _fake_kmsg(monkeypatch, records)
    line = kernel_oom_kill(4242)
    assert line is not None and line.startswith(wanted) and "\n" not in line, line
    assert closed == [12345]


@pytest.mark.parametrize("records", [
    [NOISE, OTHER, REAPED],  # someone else was killed; the reaper line alone doesn't say OOM killed 4242
    [NOISE],
    [],
    [b"6,1,1,-;Out of memory: Killed process 42420 (python) total-vm:1kB\n"],  # pid prefix is not the pid
], ids=["another-pid", "no-oom", "empty", "pid-prefix"])
def test_kernel_oom_kill_ignores_other_records(monkeypatch: pytest.MonkeyPatch, records: list[bytes | OSError]) -> None:
    closed = _fake_kmsg(monkeypatch, records)
    assert kernel_oom_kill(4242) is None
    assert closed == [12345]


def test_kernel_oom_kill_without_access_to_the_kernel_log_is_none(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_kmsg(monkeypatch, [GLOBAL_KILLED], openable=False)
    assert kernel_oom_kill(4242) is None


# ------------------------------------------------------------------ sizes


@pytest.mark.parametrize("text, size", [
    (1073741824, 1 << 30), ("1073741824", 1 << 30), ("512M", 512 << 20), ("512m", 512 << 20),
    ("2GiB", 2 << 30), ("2gb", 2 << 30), ("1.5g", 3 << 29), ("64k", 64 << 10), (" 1 T ", 1 << 40), ("100b", 100),
])
def test_parse_size(text: int | str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "lots", "5X", "1..5G", "-1G", "G"])
def test_parse_size_rejects_nonsense_naming_it(text: str) -> None:
    with pytest.raises(ValueError, match=re.escape(repr(text))):
        parse_size(text)


def test_local_rejects_a_bad_memory_limit() -> None:
    with pytest.raises(ValueError, match="'lots'"):
        Local(memory_limit="lots")


@pytest.mark.parametrize("limit", [0, -1, True, False, float("nan"), float("inf"), -2.0e9, 1.5, "0", "0M", [512], b"512M"],
                         ids=repr)
def test_local_memory_limit_that_is_not_a_positive_size_is_a_value_error_naming_it(limit: object) -> None:
    """Issue 9: 0 and -1 silently meant no limit, True meant 1 byte, NaN slipped through."""
    with pytest.raises(ValueError, match=re.escape(repr(limit)) + ".*positive number of bytes.*'512M'"):
        Local(memory_limit=limit)  # type: ignore[arg-type]


@pytest.mark.parametrize("limit, size", [(1.5e9, 1_500_000_000), (2.0 ** 30, 1 << 30), (1, 1), ("1.5g", 3 << 29)])
def test_local_memory_limit_takes_integral_floats_as_bytes(limit: float | str, size: int) -> None:
    """Issue 9: 1.5e9 raised AttributeError."""
    assert Local(memory_limit=limit).memory_limit == size
