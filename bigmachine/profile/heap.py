"""Heap profile from `tracemalloc`, started on the first request and stopped when unused.

Tracing slows every allocation of the process (docs/debug-server.md has the figures
per traceback depth: several times slower for allocation-heavy code, more with deeper
tracebacks), so it is off until someone asks: the first `heap_snapshot()` starts it
at `frames` deep (and says so: allocations made before are invisible), a request
for another depth restarts it, and a timer stops it `stop_after` seconds (60) after
the last request. `stop_heap_tracing()` stops it at once and joins the timer.

Tracebacks are lists of frames `(filename, line, function)`, root first (the
allocating line last), as in `cpu.Stack`.
"""

from __future__ import annotations

import linecache
import os
import threading
import time
import tracemalloc
from dataclasses import dataclass, field
from functools import lru_cache
from types import CodeType
from typing import Sequence

__all__ = [
    "HeapFrame",
    "HeapSnapshot",
    "HeapStat",
    "SLOWDOWN",
    "STOP_AFTER",
    "heap_snapshot",
    "heap_to_text",
    "merge_heap",
    "stop_heap_tracing",
    "tracing_note",
]

HeapFrame = tuple[str, int, str]
"""`(filename, line, function)` of one frame of an allocation's traceback."""

HeapStat = tuple[int, int, list[HeapFrame]]
"""`(size_bytes, count, traceback)`: live blocks allocated at one traceback, root first."""

_MACHINE_FILE = "<machine>"  # same convention as cpu.MACHINE_FILE
_STARTED_NOTE = (
    "heap tracing started now; ask again later to see allocations made since"
)


@dataclass
class HeapSnapshot:
    """Live allocations of one process (or merged), grouped by traceback; plain data."""

    stats: list[HeapStat] = field(default_factory=list)  # largest first
    total_size: int = 0  # bytes traced, including stats left out by `limit`
    total_count: int = 0
    frames: int = 0  # traceback depth traced
    started_now: bool = False  # tracing was only just started by this request
    notes: list[str] = field(default_factory=list)
    since: float | None = None  # time.time() tracing started (None: started by someone else)
    stops_after: float | None = None  # seconds without a request before tracing stops (None: never, not ours)


_lock = threading.Lock()
_started_by_us = False  # never stop tracing that someone else started
_since: float | None = None
_timer: threading.Timer | None = None
STOP_AFTER = 60.0
"""Seconds without a heap request after which tracing stops by itself."""

SLOWDOWN = {1: "4-13x", 2: "7-21x", 3: "14-28x", 5: "13-57x", 10: "17-36x", 25: "26-82x"}
"""Measured slowdown of allocation-heavy code per traceback depth (tests/profile/measure_costs.py)."""


def _arm_timer(stop_after: float) -> threading.Timer | None:
    """Restarts the idle timer; the caller holds `_lock` and joins the returned old one."""
    global _timer
    old = _timer
    if old is not None:
        old.cancel()  # joined by the caller after releasing _lock: _expire may want it
    timer = threading.Timer(stop_after, _expire)
    timer.name = "bigmachine-heap-timer"
    timer.daemon = True
    # Passing the timer to its own function lets it tell whether it is stale.
    timer.args = (timer,)
    _timer = timer
    timer.start()
    return old


def _expire(timer: threading.Timer) -> None:
    """Stops tracing when no request came for `stop_after` seconds."""
    global _started_by_us, _timer
    with _lock:
        if _timer is not timer:
            return  # superseded by a later request, or already stopped
        _timer = None
        if _started_by_us:
            _started_by_us = False
            tracemalloc.stop()


def stop_heap_tracing() -> None:
    """Stops tracing started by `heap_snapshot` and joins its timer thread."""
    global _started_by_us, _timer
    with _lock:
        timer, _timer = _timer, None
        if _started_by_us:
            _started_by_us = False
            tracemalloc.stop()
    if timer is not None:
        timer.cancel()
        if timer is not threading.current_thread():
            timer.join()


@lru_cache(maxsize=256)
def _functions_of(filename: str, mtime: float) -> dict[int, str]:
    """Line -> qualified name of the innermost function defined there, from the source."""
    lines = linecache.getlines(filename)
    if not lines:
        return {}
    try:
        code = compile("".join(lines), filename, "exec", dont_inherit=True)
    except (SyntaxError, ValueError):
        return {}
    names: dict[int, str] = {}

    def visit(code: CodeType) -> None:
        for _, _, line in code.co_lines():
            if line is not None:
                names[line] = code.co_qualname
        for const in code.co_consts:  # nested code after its parent: innermost wins
            if isinstance(const, CodeType):
                visit(const)

    visit(code)
    return names


def _function_at(filename: str, line: int) -> str:
    """Name of the function holding `filename:line`, or `<module>`/`?` if unknown."""
    try:
        mtime = os.stat(filename).st_mtime
    except OSError:
        return "?"
    return _functions_of(filename, mtime).get(line, "?")


def _traceback(
    tb: tracemalloc.Traceback, names: dict[tuple[str, int], str]
) -> list[HeapFrame]:
    """A tracemalloc traceback (oldest first) as root-first plain frames."""
    frames = []
    for f in tb:
        key = (f.filename, f.lineno)
        func = names.get(key)
        if func is None:
            func = names[key] = _function_at(f.filename, f.lineno)
        frames.append((f.filename, f.lineno, func))
    return frames


def heap_snapshot(
    frames: int = 1, *, stop_after: float = STOP_AFTER, limit: int | None = 1000
) -> HeapSnapshot:
    """Live allocations grouped by traceback; starts tracing on first use (see module doc)."""
    global _started_by_us, _since
    old_timer = None
    with _lock:
        if _started_by_us and tracemalloc.get_traceback_limit() != frames:
            tracemalloc.stop()  # another depth asked for: start over at that one
        started_now = not tracemalloc.is_tracing()
        if started_now:
            tracemalloc.start(frames)
            _started_by_us, _since = True, time.time()
        if _started_by_us:
            old_timer = _arm_timer(stop_after)
        snapshot = tracemalloc.take_snapshot()
        depth = tracemalloc.get_traceback_limit()
        since = _since if _started_by_us else None
    if old_timer is not None:
        old_timer.join()  # so no timer thread outlives its replacement
    # Our own caches (source of files, for function names) are no user's memory.
    snapshot = snapshot.filter_traces([
        tracemalloc.Filter(False, tracemalloc.__file__),
        tracemalloc.Filter(False, __file__, all_frames=True),
    ])
    grouped = snapshot.statistics("traceback")  # largest first
    names: dict[tuple[str, int], str] = {}
    stats = [(s.size, s.count, _traceback(s.traceback, names)) for s in grouped[:limit]]
    notes = [_STARTED_NOTE] if started_now else []
    return HeapSnapshot(
        stats=stats,
        total_size=sum(s.size for s in grouped),
        total_count=sum(s.count for s in grouped),
        frames=depth,
        started_now=started_now,
        notes=notes,
        since=since,
        stops_after=stop_after if since is not None else None,
    )


def merge_heap(
    snapshots: Sequence[HeapSnapshot], labels: Sequence[str] | None = None
) -> HeapSnapshot:
    """Adds several processes' snapshots by traceback; `labels` adds a root frame each."""
    if labels is not None and len(labels) != len(snapshots):
        raise ValueError(f"{len(labels)} labels for {len(snapshots)} snapshots")
    sums: dict[tuple[HeapFrame, ...], list[int]] = {}
    notes: list[str] = []
    for i, snap in enumerate(snapshots):
        root: list[HeapFrame] = []
        if labels is not None:
            root = [(_MACHINE_FILE, 0, labels[i])]
            notes += [f"{labels[i]}: {note}" for note in snap.notes]
        else:
            notes += [n for n in snap.notes if n not in notes]
        for size, count, tb in snap.stats:
            key = tuple(root + [(f[0], f[1], f[2]) for f in tb])  # lists after unpickling
            acc = sums.setdefault(key, [0, 0])
            acc[0] += size
            acc[1] += count
    stats = [(size, count, list(tb)) for tb, (size, count) in sums.items()]
    stats.sort(key=lambda s: (-s[0], -s[1]))
    return HeapSnapshot(
        stats=stats,
        total_size=sum(s.total_size for s in snapshots),
        total_count=sum(s.total_count for s in snapshots),
        frames=max((s.frames for s in snapshots), default=0),
        started_now=any(s.started_now for s in snapshots),
        notes=notes,
        since=min((s.since for s in snapshots if s.since is not None), default=None),
        stops_after=max((s.stops_after for s in snapshots if s.stops_after is not None), default=None),
    )


def _size(n: float) -> str:
    """Bytes in a human unit."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # not reached


def tracing_note(snapshot: HeapSnapshot) -> str:
    """What tracing costs and how it stops, for the top of a heap page."""
    if snapshot.since is None:
        return "note: tracemalloc was started by someone else on these machines; it stays on"
    since = time.strftime("%H:%M:%S", time.localtime(snapshot.since))
    cost = SLOWDOWN.get(snapshot.frames, "several times")
    return (f"note: heap tracing is ON since {since} at {snapshot.frames} frame(s): allocations run slower "
            f"(allocation-heavy code about {cost} slower; docs/debug-server.md); it stops by itself "
            f"{snapshot.stops_after:g} s after the last heap request; ?frames=N for deeper tracebacks, at more cost")


def heap_to_text(snapshot: HeapSnapshot, limit: int = 40) -> str:
    """The `limit` largest allocation sites with their tracebacks, largest first."""
    out = [
        f"{_size(snapshot.total_size)} in {snapshot.total_count} live blocks "
        f"(tracebacks of {snapshot.frames} frames)"
    ]
    out += [f"note: {note}" for note in snapshot.notes]
    out.append(tracing_note(snapshot))
    for size, count, tb in snapshot.stats[:limit]:
        pct = 100 * size / snapshot.total_size if snapshot.total_size else 0.0
        out.append("")
        out.append(f"{_size(size)} ({pct:.1f}%) in {count} blocks")
        for filename, line, func in reversed(tb):  # allocating line first
            where = func if filename == _MACHINE_FILE else f"{filename}:{line} {func}"
            out.append(f"    {where}")
    return "\n".join(out) + "\n"
