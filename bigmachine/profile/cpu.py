"""Sampling CPU profiler that sees every thread, and its pstats/text/folded formats.

On Python 3.11 `cProfile` only sees the thread that enabled it, but a machine's work
runs on the event loop thread and on the service thread pool. So a sampler thread
reads `sys._current_frames()` every `interval` seconds and counts each other
thread's stack. Stacks are root-first tuples of frames `(filename, firstlineno,
funcname)`, keyed like `pstats` keys functions, so they convert to pstats exactly.

Two modes (issue 13):

- `cpu` (default): each thread's stack is weighted by the CPU time that thread used
  since the previous sample (Linux per-thread CPU clocks), in units of `interval`,
  so a loop parked in `epoll` or a pool thread waiting for work counts as nothing
  and the counts add up to CPU time. Where there are no per-thread clocks, a thread
  counts one sample unless its leaf frame is a known wait.
- `wall`: every thread counts one sample each time, waiting or not.

`threads` picks whose stacks count: `server` is the threads running an event loop
(the machine's RPC server, and `async def` service methods with it), `service` every
other thread (the service thread pool, users' own threads), `all` both.
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
    "MAX_SECONDS",
    "MODES",
    "ProfilerBusy",
    "Stack",
    "THREADS",
    "join_cpu",
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

# Leaf frames of threads parked in a wait: (filename suffix, function name), for
# platforms without per-thread CPU clocks (elsewhere the clock tells, see _Sampler._weight).
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
    interval: float = 0.005  # seconds one count stands for: CPU time (mode cpu) or mean time between samples (wall)
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


MODES = ("cpu", "wall")
THREADS = ("service", "server", "all")
MAX_SECONDS = 300.0
"""Longest profile a machine takes: a longer one is refused (and the debug server says so)."""

# Frames that mark a thread as running an event loop: (package directory, file, function).
_LOOP_FRAMES = frozenset({
    ("asyncio", "runners.py", "Runner.run"),
    ("asyncio", "base_events.py", "BaseEventLoop.run_forever"),
    ("asyncio", "base_events.py", "BaseEventLoop.run_until_complete"),
    ("uvloop", "__init__.py", "run"),
    ("bigmachine", "session.py", "B._run_loop"),  # uvloop's run_forever has no Python frame
})


class ProfilerBusy(RuntimeError):
    """Another CPU profile is being taken on this machine; one at a time keeps the cost bounded."""


def _is_loop_frame(frame: Frame) -> bool:
    """Whether a frame runs an event loop (asyncio's, uvloop's, a session's)."""
    folder, name = os.path.split(frame[0])
    return (os.path.basename(folder), name, frame[2]) in _LOOP_FRAMES


class _Sampler:
    """Counts other threads' stacks, weighted by their CPU time (`mode="cpu"`) or not; one per profile."""

    def __init__(self, interval: float, mode: str, threads: str) -> None:
        if mode not in MODES or threads not in THREADS:
            raise ValueError(f"mode must be one of {MODES} and threads one of {THREADS}, not {mode!r}, {threads!r}")
        self.interval = interval
        self.mode = mode
        self.threads = threads
        self.counts: dict[Stack, int] = {}
        self._codes: dict[CodeType, Frame] = {}
        self._cpu: dict[int, float] = {}  # thread ident -> CPU seconds at last sample
        self._carry: dict[int, float] = {}  # thread ident -> CPU not yet counted, in intervals
        self._loop_frames: dict[Frame, bool] = {}

    def _weight(self, ident: int) -> int | None:
        """Samples' worth of CPU the thread used since the previous sample; None without thread clocks."""
        try:
            now = time.clock_gettime(time.pthread_getcpuclockid(ident))
        except (AttributeError, OSError, OverflowError):
            return None
        before = self._cpu.get(ident, now)
        self._cpu[ident] = now
        owed = self._carry.get(ident, 0.0) + (now - before) / self.interval
        whole = int(owed)
        self._carry[ident] = owed - whole
        return whole

    def _wanted(self, stack: Stack) -> bool:
        if self.threads == "all":
            return True
        known = self._loop_frames
        runs_a_loop = False
        for frame in stack:
            loopish = known.get(frame)
            if loopish is None:
                loopish = known[frame] = _is_loop_frame(frame)
            if loopish:
                runs_a_loop = True
                break
        return runs_a_loop == (self.threads == "server")

    def sample_once(self, own: int) -> None:
        """Takes one sample of every thread but `own`."""
        for ident, frame in sys._current_frames().items():
            if ident == own:
                continue
            weight = self._weight(ident) if self.mode == "cpu" else 1
            if weight == 0:
                continue
            stack = _stack_of(frame, self._codes)
            del frame  # do not keep other threads' frames (and locals) alive
            if not stack or not self._wanted(stack):
                continue
            if weight is None:  # no thread clock: a known wait counts as nothing
                weight = 0 if _is_idle_leaf(stack[-1]) else 1
            if weight:
                self.counts[stack] = self.counts.get(stack, 0) + weight

    def run(self, seconds: float, stop: threading.Event) -> CpuSamples:
        """Samples until `seconds` pass or `stop` is set."""
        own = threading.get_ident()
        if self.mode == "cpu":
            self.sample_once(own)  # primes the CPU clocks: nothing is counted yet
        start = time.monotonic()
        deadline, ticks = start + seconds, 0
        while not stop.wait(self.interval):
            self.sample_once(own)
            ticks += 1
            if time.monotonic() >= deadline:
                break
        elapsed = time.monotonic() - start
        if self.mode == "cpu":  # counts are CPU time in units of `interval`
            return CpuSamples(self.counts, self.interval, elapsed)
        # A busy thread holding the GIL delays the sampler, so samples come less
        # often than asked; each stands for the mean time between them.
        interval = elapsed / ticks if ticks else self.interval
        return CpuSamples(self.counts, interval, elapsed)


def sample_cpu(
    seconds: float,
    interval: float = 0.005,
    *,
    mode: str = "cpu",
    threads: str = "all",
    stop: threading.Event | None = None,
) -> CpuSamples:
    """Samples every other thread's stack for `seconds` (at most `MAX_SECONDS`), blocking the calling thread."""
    if interval <= 0:
        raise ValueError(f"interval must be positive, not {interval!r}")
    if not 0 < seconds <= MAX_SECONDS:
        raise ValueError(f"seconds must be more than 0 and at most {MAX_SECONDS:g}, not {seconds!r}")
    return _Sampler(interval, mode, threads).run(seconds, stop or threading.Event())


async def profile_cpu(
    seconds: float, interval: float = 0.005, *, mode: str = "cpu", threads: str = "all"
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
            result = sample_cpu(seconds, interval, mode=mode, threads=threads, stop=stop)
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


def join_cpu(slices: Sequence[CpuSamples]) -> CpuSamples:
    """One process's consecutive profiles as one: counts and durations add."""
    joined = merge_cpu(slices)
    joined.duration = sum(s.duration for s in slices)
    return joined


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
