"""Sampling CPU profiler that sees every thread, and its pstats/text/folded formats.

On Python 3.11 `cProfile` only sees the thread that enabled it, but a machine's work
runs on the event loop thread and on the service thread pool. So a sampler thread
reads `sys._current_frames()` every `interval` seconds and counts each other
thread's stack. Stacks are root-first tuples of frames `(filename, firstlineno,
funcname)`, keyed like `pstats` keys functions, so they convert to pstats exactly.

Threads that are waiting (no CPU time used since the previous sample, or parked in
a known wait such as `selectors.select` or `threading.Condition.wait`) are dropped
unless `drop_idle=False`, so a busy service's hot function dominates the profile.
"""

from __future__ import annotations

import asyncio
import io
import marshal
import os
import pstats
import sys
import threading
import time
from dataclasses import dataclass, field
from types import CodeType, FrameType
from typing import Iterable, Sequence, Union

__all__ = [
    "CpuSamples",
    "Frame",
    "MACHINE_FILE",
    "Stack",
    "merge_cpu",
    "merge_pstats",
    "profile_cpu",
    "sample_cpu",
    "to_collapsed",
    "to_pstats",
    "to_text",
]

Frame = tuple[str, int, str]
"""A function: `(filename, line of its def, name)`, as pstats keys functions."""

Stack = tuple[Frame, ...]
"""A call stack, root first."""

MACHINE_FILE = "<machine>"
"""Filename of the synthetic root frame `merge_cpu(..., labels=...)` adds per machine."""

# Leaf frames of threads parked in a wait: (filename suffix, function name). Waits
# done in C (time.sleep, socket.recv) show their Python caller as the leaf, so
# those are caught by the per-thread CPU clock instead (see _Sampler._idle).
_IDLE_LEAVES = frozenset({
    ("threading.py", "wait"),
    ("threading.py", "Condition.wait"),
    ("threading.py", "Event.wait"),
    ("threading.py", "_wait_for_tstate_lock"),
    ("threading.py", "Thread._wait_for_tstate_lock"),
    ("selectors.py", "select"),
    ("selectors.py", "EpollSelector.select"),
    ("selectors.py", "_PollLikeSelector.select"),
    ("selectors.py", "KqueueSelector.select"),
    ("selectors.py", "SelectSelector.select"),
    ("queue.py", "get"),
    ("queue.py", "Queue.get"),
    ("thread.py", "_worker"),
    ("socket.py", "accept"),
    ("socket.py", "socket.accept"),
    ("socket.py", "readinto"),
    ("socket.py", "SocketIO.readinto"),
    ("connection.py", "_recv"),
    ("connection.py", "Connection._recv"),
    ("connection.py", "wait"),
})

_EMPTY_FUNC: Frame = ("~", 0, "<no samples>")


@dataclass
class CpuSamples:
    """Stack sample counts of one process (or merged); plain data, so it pickles."""

    counts: dict[Stack, int] = field(default_factory=dict)
    interval: float = 0.005  # mean seconds between samples actually taken: one sample's worth
    duration: float = 0.0  # wall-clock seconds sampled

    @property
    def total(self) -> int:
        """Number of samples kept."""
        return sum(self.counts.values())


def _frame_key(code: CodeType, cache: dict[CodeType, Frame]) -> Frame:
    """The pstats-style key of a code object, cached because it is asked ~200×/s."""
    key = cache.get(code)
    if key is None:
        key = cache[code] = (code.co_filename, code.co_firstlineno, code.co_qualname)
    return key


def _stack_of(frame: FrameType | None, cache: dict[CodeType, Frame]) -> Stack:
    """The root-first stack that ends at `frame`."""
    keys = []
    while frame is not None:
        keys.append(_frame_key(frame.f_code, cache))
        frame = frame.f_back
    keys.reverse()
    return tuple(keys)


def _is_idle_leaf(leaf: Frame) -> bool:
    """Whether a leaf frame is a known blocking wait in the stdlib."""
    filename, _, func = leaf
    return (os.path.basename(filename), func) in _IDLE_LEAVES


class _Sampler:
    """Counts other threads' stacks; one instance per profile request."""

    def __init__(self, interval: float, drop_idle: bool) -> None:
        self.interval = interval
        self.drop_idle = drop_idle
        self.counts: dict[Stack, int] = {}
        self._codes: dict[CodeType, Frame] = {}
        self._cpu: dict[int, float] = {}  # thread ident -> CPU seconds at last sample

    def _idle(self, ident: int) -> bool:
        """Whether a thread used no CPU since the previous sample (Linux thread clocks)."""
        try:
            now = time.clock_gettime(time.pthread_getcpuclockid(ident))
        except (AttributeError, OSError, OverflowError):
            return False  # no per-thread clock here: rely on the leaf frame alone
        before = self._cpu.get(ident)
        self._cpu[ident] = now
        return before is not None and now == before

    def sample_once(self, own: int) -> None:
        """Takes one sample of every thread but `own`."""
        for ident, frame in sys._current_frames().items():
            if ident == own:
                continue
            idle = self._idle(ident) if self.drop_idle else False
            stack = _stack_of(frame, self._codes)
            del frame  # do not keep other threads' frames (and locals) alive
            if not stack or (self.drop_idle and (idle or _is_idle_leaf(stack[-1]))):
                continue
            self.counts[stack] = self.counts.get(stack, 0) + 1

    def run(self, seconds: float, stop: threading.Event) -> CpuSamples:
        """Samples until `seconds` pass or `stop` is set."""
        own = threading.get_ident()
        if self.drop_idle:
            self.sample_once(own)  # primes the CPU clocks; these samples are dropped
            self.counts.clear()
        start = time.monotonic()
        deadline, ticks = start + seconds, 0
        while not stop.wait(self.interval):
            self.sample_once(own)
            ticks += 1
            if time.monotonic() >= deadline:
                break
        elapsed = time.monotonic() - start
        # A busy thread holding the GIL delays the sampler, so samples come less
        # often than asked; each stands for the mean time between them, which
        # keeps tottime/cumtime close to wall-clock CPU time.
        interval = elapsed / ticks if ticks else self.interval
        return CpuSamples(self.counts, interval, elapsed)


def sample_cpu(
    seconds: float,
    interval: float = 0.005,
    *,
    drop_idle: bool = True,
    stop: threading.Event | None = None,
) -> CpuSamples:
    """Samples every other thread's stack for `seconds`, blocking the calling thread."""
    if interval <= 0:
        raise ValueError(f"interval must be positive, not {interval!r}")
    return _Sampler(interval, drop_idle).run(seconds, stop or threading.Event())


async def profile_cpu(
    seconds: float, interval: float = 0.005, *, drop_idle: bool = True
) -> CpuSamples:
    """Samples every thread for `seconds` from a sampler thread, without blocking the loop."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[CpuSamples] = loop.create_future()
    stop = threading.Event()

    def deliver(result: CpuSamples | BaseException) -> None:
        if done.done():
            return
        if isinstance(result, BaseException):
            done.set_exception(result)
        else:
            done.set_result(result)

    def run() -> None:
        result: CpuSamples | BaseException
        try:
            result = sample_cpu(seconds, interval, drop_idle=drop_idle, stop=stop)
        except BaseException as exc:  # handed to the awaiting task
            result = exc
        try:
            loop.call_soon_threadsafe(deliver, result)
        except RuntimeError:
            pass  # the loop closed while sampling: nobody is waiting any more

    thread = threading.Thread(target=run, name="bigmachine-cpu-sampler", daemon=True)
    thread.start()
    try:
        return await done
    finally:
        # On cancellation the sampler ends within one interval; waiting for it here
        # would block the loop, and it holds nothing that needs cleaning.
        stop.set()


def merge_cpu(
    samples: Sequence[CpuSamples], labels: Sequence[str] | None = None
) -> CpuSamples:
    """Adds several processes' samples; with `labels`, each gets a root frame of its own."""
    if labels is not None and len(labels) != len(samples):
        raise ValueError(f"{len(labels)} labels for {len(samples)} sample sets")
    counts: dict[Stack, int] = {}
    for i, one in enumerate(samples):
        prefix: Stack = ((MACHINE_FILE, 0, labels[i]),) if labels is not None else ()
        for stack, n in one.counts.items():
            key = prefix + stack
            counts[key] = counts.get(key, 0) + n
    total = sum(s.total for s in samples)
    if total:  # weight intervals by samples: they agree unless callers mixed them
        interval = sum(s.interval * s.total for s in samples) / total
    else:
        interval = samples[0].interval if samples else 0.005
    duration = max((s.duration for s in samples), default=0.0)  # machines run at once
    return CpuSamples(counts, interval, duration)


_CallerStat = tuple[int, int, float, float]  # (cc, nc, tt, ct) of one call edge
_PstatsDict = dict[Frame, tuple[int, int, float, float, dict[Frame, _CallerStat]]]


def _pstats_dict(samples: CpuSamples) -> _PstatsDict:
    """The stats dict `cProfile` would build, with sample counts standing in for calls."""
    dt = samples.interval
    # func -> [samples on stack, leaf samples]; (caller, callee) -> [on stack, leaf]
    funcs: dict[Frame, list[int]] = {}
    edges: dict[tuple[Frame, Frame], list[int]] = {}
    for stack, n in samples.counts.items():
        for func in set(stack):  # once per sample even under recursion
            funcs.setdefault(func, [0, 0])[0] += n
        funcs[stack[-1]][1] += n
        for edge in set(zip(stack, stack[1:])):
            edges.setdefault(edge, [0, 0])[0] += n
        if len(stack) > 1:
            edges[(stack[-2], stack[-1])][1] += n
    stats: _PstatsDict = {}
    for func, (on_stack, leaf) in funcs.items():
        stats[func] = (on_stack, on_stack, leaf * dt, on_stack * dt, {})
    for (caller, callee), (on_stack, leaf) in edges.items():
        stats[callee][4][caller] = (on_stack, on_stack, leaf * dt, on_stack * dt)
    if not stats:  # pstats.Stats refuses an empty dict; keep the output loadable
        stats[_EMPTY_FUNC] = (0, 0, 0.0, 0.0, {})
    return stats


def to_pstats(samples: CpuSamples) -> bytes:
    """Marshalled pstats dict, as `cProfile.Profile.dump_stats` writes; `pstats.Stats` loads it."""
    return marshal.dumps(_pstats_dict(samples))


def _load_pstats(data: bytes) -> pstats.Stats:
    """A `pstats.Stats` from marshalled bytes, without a temporary file."""
    stats = pstats.Stats(stream=io.StringIO())
    stats.stats = marshal.loads(data)  # type: ignore[attr-defined]
    stats.get_top_level_stats()
    return stats


def merge_pstats(profiles: Iterable[bytes]) -> bytes:
    """Merges marshalled pstats of several machines with `pstats.Stats.add`."""
    merged = pstats.Stats(stream=io.StringIO())
    merged.add(*[_load_pstats(data) for data in profiles if data])
    table: _PstatsDict = merged.stats  # type: ignore[attr-defined]
    if len(table) > 1:
        table.pop(_EMPTY_FUNC, None)
    elif not table:
        table[_EMPTY_FUNC] = (0, 0, 0.0, 0.0, {})
    return marshal.dumps(table)


def to_text(
    profile: Union[CpuSamples, bytes], limit: int = 40, *, sort: str = "tottime"
) -> str:
    """A readable table of the top `limit` functions (pstats' `print_stats`)."""
    out = io.StringIO()
    if isinstance(profile, CpuSamples):
        out.write(
            f"{profile.total} samples every {profile.interval * 1000:g} ms "
            f"over {profile.duration:.3f} s\n"
        )
        profile = to_pstats(profile)
    stats = _load_pstats(profile)
    stats.stream = out  # type: ignore[attr-defined]
    stats.sort_stats(sort).print_stats(limit)
    return out.getvalue()


def _folded_frame(frame: Frame) -> str:
    """One frame as `func (file:line)`; `;` would split frames, so it is replaced."""
    filename, line, func = frame
    text = func if filename == MACHINE_FILE else f"{func} ({filename}:{line})"
    return text.replace(";", ",").replace("\n", " ")


def to_collapsed(samples: CpuSamples) -> str:
    """Folded stacks, one `root;...;leaf count` line each (Brendan Gregg's format)."""
    lines = sorted(
        ";".join(_folded_frame(f) for f in stack) + f" {n}"
        for stack, n in samples.counts.items()
        if stack and n > 0
    )
    return "".join(line + "\n" for line in lines)
