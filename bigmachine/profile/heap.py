"""Heap profile: live allocations by traceback, started on the first request and stopped when unused.

Two tracers, one chosen at import. The sampled profiler (the `_heapsample` C extension) works
as Go's MemProfileRate: it records one allocation per `rate` bytes allocated on average, and
scales each up by the chance it had of being picked, so totals estimate the live heap at a
small cost whatever the code does. Without the extension (no C compiler at install time)
`tracemalloc` records every allocation, several times slower for allocation-heavy code.
docs/debug-server.md has the figures of both.

Tracing is off until someone asks: the first `heap_snapshot()` starts it (and says so:
allocations made before are invisible), a request for other settings restarts it, and a
timer stops it `stop_after` seconds (60) after the last request. `stop_heap_tracing()` stops
it at once and joins the timer.

Tracebacks are lists of frames `(filename, line, function)`, root first (the
allocating line last), as in `cpu.Stack`.
"""

from __future__ import annotations

import atexit
import importlib
import linecache
import logging
import math
import os
import threading
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from types import CodeType, ModuleType
from typing import Sequence

__all__ = [
    "FRAMES",
    "HeapFrame",
    "HeapSnapshot",
    "HeapStat",
    "RATE",
    "SAMPLED_COST",
    "SLOWDOWN",
    "STOP_AFTER",
    "heap_snapshot",
    "heap_to_text",
    "merge_heap",
    "stop_heap_tracing",
    "traced_bytes",
    "tracing_note",
]

logger = logging.getLogger(__name__)


def _load_sampler() -> ModuleType | None:
    """The C extension, or None if it was not built (no C compiler at install time: see pyproject.toml)."""
    try:
        return importlib.import_module("._heapsample", __package__)
    except ImportError:
        return None


_heapsample = _load_sampler()

HeapFrame = tuple[str, int, str]
"""`(filename, line, function)` of one frame of an allocation's traceback."""

HeapStat = tuple[int, int, list[HeapFrame]]
"""`(size_bytes, count, traceback)`: live blocks allocated at one traceback, root first."""

_MACHINE_FILE = "<machine>"  # same convention as cpu.MACHINE_FILE
_NO_FRAME: list[HeapFrame] = [("<unknown>", 0, "?")]  # allocated with no Python code running
_STARTED_NOTE = (
    "heap tracing started now; ask again later to see allocations made since"
)


@dataclass
class HeapSnapshot:
    """Live allocations of one process (or merged), grouped by traceback; plain data."""

    stats: list[HeapStat] = field(default_factory=list)  # largest first
    total_size: int = 0  # bytes traced (estimated when sampled), including stats left out by `limit`
    total_count: int = 0
    frames: int = 0  # traceback depth traced
    started_now: bool = False  # tracing was only just started by this request
    notes: list[str] = field(default_factory=list)
    since: float | None = None  # time.time() tracing started (None: started by someone else)
    stops_after: float | None = None  # seconds without a request before tracing stops (None: never, not ours)
    rate: int = 0  # bytes allocated per sample on average; 0: every allocation traced (tracemalloc)


_lock = threading.Lock()
_since: float | None = None
_timer: threading.Timer | None = None
STOP_AFTER = 60.0
"""Seconds without a heap request after which tracing stops by itself."""

RATE = 512 * 1024
"""Default bytes allocated per sample of the sampled profiler, as Go's MemProfileRate."""

FRAMES = 32 if _heapsample is not None else 1
"""Default traceback depth: deep when sampled (only samples pay for it), 1 for tracemalloc."""

SAMPLED_COST = "1.0-1.2x"
"""Measured slowdown of allocation-heavy code while sampling, 1 or 32 frames (benchmarks/heap_cost.py)."""

SLOWDOWN = {1: "7-11x", 3: "14-21x", 25: "22-81x"}
"""Measured slowdown of allocation-heavy code per tracemalloc traceback depth (benchmarks/heap_cost.py)."""


class _Sampler:
    """The sampled profiler of `_heapsample`: one sample per `rate` bytes, scaled up to estimate."""

    def __init__(self) -> None:
        self.settings: tuple[int, int] | None = None  # (frames, rate) while running

    def ours(self) -> bool:
        return self.settings is not None

    def start(self, frames: int, rate: int) -> bool:
        """(Re)starts at these settings unless running at them; whether it started now."""
        if self.settings == (frames, rate):
            return False
        self.stop()
        assert _heapsample is not None
        _heapsample.start(rate, frames)
        self.settings = (frames, rate)
        return True

    def stop(self) -> None:
        if self.settings is not None:
            assert _heapsample is not None
            _heapsample.stop()
            self.settings = None

    def capture(self) -> tuple[int, int, Callable[[], list[HeapStat]]]:
        """(depth, rate, grouping to do outside the lock) of the live samples."""
        assert _heapsample is not None and self.settings is not None
        frames, rate = self.settings
        samples = _heapsample.samples()
        return frames, rate, lambda: _estimate(samples, rate)

    def live_bytes(self) -> int | None:
        if self.settings is None:
            return None
        _, _, group = self.capture()
        return sum(size for size, _, _ in group())


def _estimate(samples: list[tuple[int, tuple[HeapFrame, ...]]], rate: int) -> list[HeapStat]:
    """Samples grouped by traceback, each scaled by 1/P(sampled) = 1/(1 - exp(-size/rate)), as pprof does."""
    sums: dict[tuple[HeapFrame, ...], list[float]] = {}
    for size, stack in samples:
        if any(f[0] == __file__ for f in stack):
            continue  # our own snapshot being built
        weight = 1 / -math.expm1(-size / rate)
        acc = sums.setdefault(stack[::-1], [0.0, 0.0])  # innermost first -> root first
        acc[0] += size * weight
        acc[1] += weight
    stats = [(round(size), round(count), list(tb) or list(_NO_FRAME)) for tb, (size, count) in sums.items()]
    stats.sort(key=lambda s: (-s[0], -s[1]))
    return stats


class _Tracemalloc:
    """`tracemalloc`: every allocation, exact but slow; never stops tracing someone else started."""

    def __init__(self) -> None:
        self.started_by_us = False

    def ours(self) -> bool:
        return self.started_by_us

    def start(self, frames: int, rate: int) -> bool:
        """(Re)starts at `frames` unless tracing at it (or by someone else); whether it started now."""
        if self.started_by_us and tracemalloc.get_traceback_limit() != frames:
            self.stop()  # another depth asked for: start over at that one
        if tracemalloc.is_tracing():
            return False
        tracemalloc.start(frames)
        self.started_by_us = True
        return True

    def stop(self) -> None:
        if self.started_by_us:
            self.started_by_us = False
            tracemalloc.stop()

    def capture(self) -> tuple[int, int, Callable[[], list[HeapStat]]]:
        """(depth, 0, grouping to do outside the lock) of every traced block."""
        snapshot = tracemalloc.take_snapshot()
        return tracemalloc.get_traceback_limit(), 0, lambda: _group_traces(snapshot)

    def live_bytes(self) -> int | None:
        return tracemalloc.get_traced_memory()[0] if tracemalloc.is_tracing() else None


_tracer: _Sampler | _Tracemalloc = _Sampler() if _heapsample is not None else _Tracemalloc()
_others = _Tracemalloc()  # reads tracemalloc that someone else started, and leaves it on


def _current() -> _Sampler | _Tracemalloc:
    """Ours, unless someone else's tracemalloc is on: then that is read (and no hook stacked on it,
    since stopping tracemalloc restores the allocators it found, dropping any installed after it)."""
    return _others if not _tracer.ours() and tracemalloc.is_tracing() else _tracer


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
    global _timer
    with _lock:
        if _timer is not timer:
            return  # superseded by a later request, or already stopped
        _timer = None
        _tracer.stop()


def stop_heap_tracing() -> None:
    """Stops tracing started by `heap_snapshot` and joins its timer thread."""
    global _timer
    with _lock:
        timer, _timer = _timer, None
        _tracer.stop()
    if timer is not None:
        timer.cancel()
        if timer is not threading.current_thread():
            timer.join()


# Out of the allocator chain before the interpreter tears down what the sampler's hooks call.
atexit.register(stop_heap_tracing)


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


def _group_traces(snapshot: tracemalloc.Snapshot) -> list[HeapStat]:
    """A tracemalloc snapshot grouped by traceback, largest first, without our own allocations."""
    # Our own caches (source of files, for function names) are no user's memory.
    snapshot = snapshot.filter_traces([
        tracemalloc.Filter(False, tracemalloc.__file__),
        tracemalloc.Filter(False, __file__, all_frames=True),
    ])
    names: dict[tuple[str, int], str] = {}
    return [(s.size, s.count, _traceback(s.traceback, names)) for s in snapshot.statistics("traceback")]


def traced_bytes() -> int | None:
    """Live bytes traced (estimated when sampled), or None when no heap tracing is on."""
    with _lock:
        return _current().live_bytes()


def heap_snapshot(
    frames: int | None = None, *, rate: int | None = None, stop_after: float = STOP_AFTER, limit: int | None = 1000
) -> HeapSnapshot:
    """Live allocations grouped by traceback; starts tracing on first use (see module doc).

    `frames` deep (default `FRAMES`), one sample per `rate` bytes (default `RATE`; ignored by tracemalloc).
    """
    global _since
    old_timer = None
    with _lock:
        tracer = _current()
        started_now = tracer.start(frames or FRAMES, rate or RATE)
        ours = tracer.ours()
        if started_now:
            _since = time.time()
            logger.info("heap tracing started (%s)", type(tracer).__name__)
        if ours:
            old_timer = _arm_timer(stop_after)
        depth, used_rate, group = tracer.capture()
        since = _since if ours else None
    if old_timer is not None:
        old_timer.join()  # so no timer thread outlives its replacement
    grouped = group()  # largest first
    return HeapSnapshot(
        stats=grouped[:limit],
        total_size=sum(s[0] for s in grouped),
        total_count=sum(s[1] for s in grouped),
        frames=depth,
        started_now=started_now,
        notes=[_STARTED_NOTE] if started_now else [],
        since=since,
        stops_after=stop_after if since is not None else None,
        rate=used_rate,
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
        rate=min((s.rate for s in snapshots), default=0),  # 0 if any machine traces every allocation
    )


def _size(n: float) -> str:
    """Bytes in a human unit."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # not reached


def _tracemalloc_cost(frames: int) -> str:
    """The measured slowdown at `frames`, or bounds from the nearest depths measured."""
    deeper = [d for d in SLOWDOWN if d >= frames]
    if not deeper:
        return f"more than {SLOWDOWN[max(SLOWDOWN)]}"
    return SLOWDOWN[frames] if frames in SLOWDOWN else f"up to {SLOWDOWN[min(deeper)]}"


def tracing_note(snapshot: HeapSnapshot) -> str:
    """What tracing costs and how it stops, for the top of a heap page."""
    if snapshot.since is None:
        return "note: tracemalloc was started by someone else on these machines; it stays on"
    since = time.strftime("%H:%M:%S", time.localtime(snapshot.since))
    stops = f"it stops by itself {snapshot.stops_after:g} s after the last heap request"
    if snapshot.rate:
        return (f"note: heap tracing is ON since {since}, sampled: one allocation per {_size(snapshot.rate)} "
                f"allocated on average, {snapshot.frames} frame(s) deep, sizes and counts estimated from the "
                f"samples (?rate=BYTES for finer ones); allocation-heavy code runs about {SAMPLED_COST} slower "
                f"(docs/debug-server.md); {stops}")
    cost = _tracemalloc_cost(snapshot.frames)
    return (f"note: heap tracing is ON since {since} with tracemalloc (the sampled profiler's C extension is not "
            f"built here) at {snapshot.frames} frame(s): allocation-heavy code runs about {cost} slower "
            f"(docs/debug-server.md); {stops}; ?frames=N for deeper tracebacks, at more cost")


def heap_to_text(snapshot: HeapSnapshot, limit: int = 40) -> str:
    """The `limit` largest allocation sites with their tracebacks, largest first."""
    about = "about " if snapshot.rate else ""
    out = [
        f"{about}{_size(snapshot.total_size)} in {about}{snapshot.total_count} live blocks "
        f"(tracebacks of {snapshot.frames} frames)"
    ]
    out += [f"note: {note}" for note in snapshot.notes]
    out.append(tracing_note(snapshot))
    for size, count, tb in snapshot.stats[:limit]:
        pct = 100 * size / snapshot.total_size if snapshot.total_size else 0.0
        out.append("")
        out.append(f"{about}{_size(size)} ({pct:.1f}%) in {about}{count} blocks")
        for filename, line, func in reversed(tb):  # allocating line first
            where = func if filename == _MACHINE_FILE else f"{filename}:{line} {func}"
            out.append(f"    {where}")
    return "\n".join(out) + "\n"
