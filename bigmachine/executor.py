"""``bigmachine.Executor``: a ``concurrent.futures.Executor`` running plain functions on a session's machines.

    with bigmachine.Executor(n=4) as executor:          # its own session, 4 Local machines
        squares = list(executor.map(lambda x: x * x, range(10_000), chunksize=100))

Functions and arguments are shipped with cloudpickle to the built-in ``Functions``
service every machine runs (bigmachine/functions.py). Each call goes to the machine with
the fewest calls in flight, at most ``calls_per_machine`` each; the rest wait in the
executor's queue, which ``shutdown(cancel_futures=True)`` empties. A call whose machine
stops (it died, was cancelled, its lease lapsed) is sent again to another machine, so a
function runs at least once, maybe more: make it safe to repeat. It fails with
``MachineStopped`` only when no machine is left. docs/api.md has the details.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import functools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from .errors import MachineStopped, RemoteError
from .functions import SERVICE, Functions
from .params import Services
from .state import STOPPED

if TYPE_CHECKING:
    from .machine import Machine
    from .session import B
    from .systems.base import System

__all__ = ["Executor", "Progress"]

logger = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

_RUN, _RUN_CHUNK = f"{SERVICE}.run", f"{SERVICE}.run_chunk"
_TICK = 1.0  # how often a waiting map wakes to report progress, seconds
_LOG_EVERY = 10.0  # a map running longer than this logs its progress this often


@dataclasses.dataclass(frozen=True)
class Progress:
    """How far a ``map`` is: items done of total, items per second, seconds elapsed and left (None: unknown)."""

    done: int
    total: int
    rate: float
    elapsed: float
    eta: float | None

    def __str__(self) -> str:
        eta = "?" if self.eta is None else f"{self.eta:.0f} s"
        return f"{self.done}/{self.total} done, {self.rate:.1f}/s, ETA {eta}"


class _Work:
    """A queued call: the future the user holds, and what to send."""

    __slots__ = ("future", "method", "args", "started")

    def __init__(self, method: str, args: tuple[Any, ...]) -> None:
        self.future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self.method, self.args = method, args
        self.started = False  # set running once; a resubmitted call stays running


class Executor(concurrent.futures.Executor):
    """Runs plain functions on the machines of a session, least-loaded first, resubmitting calls of machines that die.

    ``Executor(b)`` uses every machine of ``b`` that is not STOPPED (also machines started
    later); ``Executor(b, machines=[...])`` only those; ``Executor(b, n=4)`` starts 4
    machines and stops them at shutdown; ``Executor(n=4)`` also makes the session (on
    ``system``, default ``Local()``) and shuts it down at shutdown.
    """

    def __init__(self, b: B | None = None, *, n: int | None = None, machines: Sequence[Machine] | None = None,
                 system: System | None = None, calls_per_machine: int = 8) -> None:
        if n is not None and machines is not None:
            raise ValueError("Executor takes n (machines to start) or machines (to use), not both")
        if system is not None and b is not None:
            raise ValueError("Executor(system=...) is for an executor that makes its own session; drop b or system")
        if calls_per_machine < 1:
            raise ValueError(f"calls_per_machine must be >= 1, not {calls_per_machine!r}")
        if b is None and machines:
            b = machines[0]._session
        if b is None and n is None:
            raise ValueError("Executor needs a session, machines, or n machines to start: e.g. bigmachine.Executor(n=4)")
        self._owns_session = b is None
        if b is None:
            from .starting import start

            b = start(system, name="executor")
        self.session: B = b
        self._machines = list(machines) if machines is not None else None
        self._owns_machines = n is not None
        try:
            if n is not None:
                self._machines = b.start(n, Services(**{SERVICE: Functions()}))
            if not self._candidates():
                raise ValueError(f"session {b.name} has no running or starting machine for the Executor: start some "
                                 "with b.start(...), or let the Executor start them with n=")
        except BaseException:
            if self._owns_session:
                b.shutdown()
            raise
        self._per_machine = calls_per_machine
        self._lock = threading.Lock()
        self._queue: collections.deque[_Work] = collections.deque()
        self._in_flight: dict[Machine, int] = collections.defaultdict(int)
        self._pending: set[concurrent.futures.Future[Any]] = set()
        self._lost: set[Machine] = set()
        self._shutdown = False

    # ------------------------------------------------------------------ the concurrent.futures API

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> concurrent.futures.Future[T]:
        """Runs ``fn(*args, **kwargs)`` on a machine; returns its future."""
        return self._enqueue([(_RUN, (fn, args, kwargs))])[0]

    def map(self, fn: Callable[..., T], *iterables: Iterable[Any], timeout: float | None = None, chunksize: int = 1,
            progress: Callable[[Progress], None] | None = None) -> Iterator[T]:
        """``fn`` over the items, results in order; ``chunksize`` items travel per call.

        As the results are read, ``progress`` gets a ``Progress`` (in the reading thread), and a
        map running over 10 s logs one at INFO every 10 s.
        """
        if not isinstance(chunksize, int) or chunksize < 1:
            raise ValueError(f"chunksize must be an int >= 1, not {chunksize!r}")
        deadline = None if timeout is None else time.monotonic() + timeout
        items = list(zip(*iterables))
        chunks = [items[i:i + chunksize] for i in range(0, len(items), chunksize)]
        futures = self._enqueue([(_RUN_CHUNK, (fn, chunk)) for chunk in chunks])
        tracker = _Tracker(len(items), getattr(fn, "__name__", repr(fn)), progress)
        for future, chunk in zip(futures, chunks):
            future.add_done_callback(functools.partial(tracker.completed, len(chunk)))
        return _results(futures, deadline, tracker)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No new calls; ``cancel_futures`` drops the queued ones; ``wait`` waits for the rest.

        An executor that started machines (``n=``) stops them, and its session if it made
        one: calls still running then fail with ``MachineStopped``.
        """
        with self._lock:
            self._shutdown = True
            dropped = [work for work in self._queue if not work.started] if cancel_futures else []
            if dropped:
                self._queue = collections.deque(work for work in self._queue if work.started)
        for work in dropped:
            work.future.cancel()
        if wait:
            concurrent.futures.wait(list(self._pending))
        if self._owns_session:
            self.session.shutdown()
        elif self._owns_machines:
            for machine in self._machines or ():
                machine.cancel()

    def __repr__(self) -> str:
        with self._lock:
            queued, running = len(self._queue), sum(self._in_flight.values())
        return (f"<Executor on {self.session.name}: {len(self._candidates())} machines, {running} calls in flight, "
                f"{queued} queued>")

    # ------------------------------------------------------------------ dispatch

    def _candidates(self) -> list[Machine]:
        machines = self._machines if self._machines is not None else self.session.machines()
        return [m for m in machines if m.state != STOPPED]

    def _enqueue(self, calls: list[tuple[str, tuple[Any, ...]]]) -> list[concurrent.futures.Future[Any]]:
        work = [_Work(method, args) for method, args in calls]
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after the Executor's shutdown")
            self._queue.extend(work)
            self._pending.update(w.future for w in work)
        for w in work:
            w.future.add_done_callback(self._pending.discard)
        self._dispatch()
        return [w.future for w in work]

    def _dispatch(self) -> None:
        """Sends queued calls to the machines with the fewest in flight while one has room (any thread)."""
        sends: list[tuple[Machine, _Work]] = []
        orphans: list[_Work] = []
        with self._lock:
            while self._queue:
                live = self._candidates()
                if not live:
                    orphans, self._queue = list(self._queue), collections.deque()
                    break
                machine = min(live, key=self._in_flight.__getitem__)
                if self._in_flight[machine] >= self._per_machine:
                    break
                work = self._queue.popleft()
                if not work.started:
                    if not work.future.set_running_or_notify_cancel():
                        continue
                    work.started = True
                self._in_flight[machine] += 1
                sends.append((machine, work))
        for work in orphans:
            if work.started or work.future.set_running_or_notify_cancel():
                work.future.set_exception(self._none_left(work.method))
        for machine, work in sends:
            call = machine.submit(work.method, *work.args)
            call.add_done_callback(functools.partial(self._finished, machine, work))

    def _finished(self, machine: Machine, work: _Work, call: concurrent.futures.Future[Any]) -> None:
        """A call ended: resubmit it if its machine is gone, else hand over its outcome."""
        with self._lock:
            self._in_flight[machine] -= 1
        try:
            result = call.result()
        except BaseException as exc:
            if not _machine_lost(machine, exc):
                self._dispatch()
                work.future.set_exception(exc)
                return
            with self._lock:
                self._queue.appendleft(work)
                first = machine not in self._lost
                self._lost.add(machine)
            if first:
                logger.warning("executor: machine %s stopped (%s); sending its calls to other machines",
                               machine.addr or machine.name, machine.err)
            self._dispatch()
            return
        self._dispatch()
        work.future.set_result(result)

    def _none_left(self, method: str) -> MachineStopped:
        """The error of a call no machine is left to run; its cause is the error the last machine stopped with."""
        machines = self._machines if self._machines is not None else self.session.machines()
        stopped = sorted((m for m in machines if m.state == STOPPED), key=lambda m: m.stopped or 0.0)
        last = stopped[-1] if stopped else None
        err = MachineStopped(f"no machine is left to run {method}: every machine of the executor is stopped"
                             + (f"; the last, {last.addr or last.name}, by: {last.err}" if last else ""),
                             machine=last.addr if last else "")
        err.__cause__ = last.err if last else None
        return err


def _machine_lost(machine: Machine, exc: BaseException) -> bool:
    """Whether a call failed because its machine stopped (not because the function raised MachineStopped)."""
    return (isinstance(exc, MachineStopped) and not isinstance(exc.__cause__, RemoteError)
            and machine.state == STOPPED)


class _Tracker:
    """Counts a map's finished items (any thread) and reports them in the reading thread."""

    def __init__(self, total: int, name: str, callback: Callable[[Progress], None] | None) -> None:
        self.total, self.name, self.callback = total, name, callback
        self.done = 0
        self.begun = self.logged = time.monotonic()
        self.reported = -1
        self.long = False
        self._lock = threading.Lock()

    def completed(self, items: int, future: concurrent.futures.Future[Any]) -> None:
        with self._lock:
            self.done += items

    def progress(self) -> Progress:
        done, elapsed = self.done, time.monotonic() - self.begun
        rate = done / elapsed if elapsed > 0 else 0.0
        return Progress(done, self.total, rate, elapsed, (self.total - done) / rate if rate else None)

    def report(self) -> None:
        """Calls the callback when more is done, and logs every ``_LOG_EVERY`` s of a long map."""
        now = time.monotonic()
        if self.done != self.reported and self.callback is not None:
            self.reported = self.done
            self.callback(self.progress())
        if now - self.logged >= _LOG_EVERY:
            self.logged, self.long = now, True
            logger.info("map of %s: %s", self.name, self.progress())

    def finish(self) -> None:
        self.report()
        if self.long:
            progress = self.progress()
            logger.info("map of %s: %d items done in %.1f s (%.1f/s)", self.name, progress.done, progress.elapsed,
                        progress.rate)


def _results(futures: list[concurrent.futures.Future[Any]], deadline: float | None,
             tracker: _Tracker) -> Iterator[Any]:
    """The items of each chunk's result in order, reporting progress while waiting; cancels the rest on exit."""
    try:
        futures.reverse()  # popped from the end, so finished chunks are let go
        while futures:
            future = futures[-1]
            while not future.done():
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError(f"Executor.map: results not ready within the timeout ({tracker.progress()})")
                with contextlib.suppress(concurrent.futures.TimeoutError):  # not the chunk's own: that is returned
                    future.exception(_TICK if left is None else min(left, _TICK))  # cheaper than wait() per item
                tracker.report()
            futures.pop()
            tracker.report()
            yield from future.result()
        tracker.finish()
    finally:
        for future in futures:
            future.cancel()


Executor.__module__ = "bigmachine"
