"""Machines' output, forwarded to the driver's stdout and stderr without ever blocking an event loop.

``LineSplitter`` turns a byte stream into lines in linear time, keeping only the latest
state of a ``\\r`` progress bar and cutting lines at ``MAX_LINE`` bytes. A ``Forwarder``
(one per machine, used by every system that relays output) prefixes each line, keeps the
recent ones for the debug pages and queues it for the one writer thread of the process,
``bigmachine-output``. The queue is bounded: when the driver's stdout is not read (``prog |
less``, a paused terminal) lines beyond the bound are dropped and counted, and the writer
says how many once it can write again. The thread runs while a forwarder is open or lines
are queued, so a process that ends its sessions keeps no thread.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import math
import sys
import threading
import time
from collections.abc import Callable

__all__ = ["MAX_LINE", "PROGRESS_EVERY", "Forwarder", "LineSplitter", "drained"]

logger = logging.getLogger(__name__)

MAX_LINE = 64 << 10  # bytes: a longer line is forwarded in pieces of this size
PROGRESS_EVERY = 1.0  # seconds between forwarded states of a line that keeps being rewritten with \r
QUEUE_LINES = 10_000  # lines waiting for the driver's stdout/stderr, at most ...
QUEUE_CHARS = 16 << 20  # ... and characters
RECENT_LINES = 200  # kept per machine for the debug pages, each cut to ...
RECENT_CHARS = 4096


class LineSplitter:
    """Splits a byte stream into lines (without their ``\\n``) in time linear in its length.

    Within a line only the text after its last ``\\r`` is kept: a progress bar that rewrites
    its line forever uses bounded memory, and ``progress`` gives out its latest state at most
    every ``progress_every`` seconds until the line ends.
    """

    def __init__(self, *, max_line: int = MAX_LINE, progress_every: float = PROGRESS_EVERY) -> None:
        self.max_line, self.progress_every = max_line, progress_every
        self._partial = bytearray()  # the current line, since its last \r
        self._state = b""  # the line's last non-empty text ended by \r: a progress bar's latest state
        self._rewritten = False  # a \r came since the line began or its state was last given out
        self._shown = -math.inf  # when a state was last given out

    def feed(self, data: bytes, now: float) -> list[bytes]:
        """The lines ``data`` completes, and the line's latest progress state if one is due."""
        lines: list[bytes] = []
        *ended, rest = data.split(b"\n")
        for piece in ended:
            self._append(piece, lines)
            lines.append(self._take())
        self._append(rest, lines)
        lines += self.progress(now)
        return lines

    def progress(self, now: float) -> list[bytes]:
        """The current line's latest state, if it was rewritten and none was given out for a while."""
        if self.progress_due(now) != 0.0:
            return []
        self._rewritten, self._shown = False, now
        state = bytes(self._partial) or self._state
        return [state] if state else []

    def progress_due(self, now: float) -> float | None:
        """Seconds until the current line's latest state is due (0: now), None if nothing is pending."""
        if not self._rewritten:
            return None
        return max(0.0, self._shown + self.progress_every - now)

    def close(self) -> list[bytes]:
        """What is left at the end of the stream: a last line without ``\\n``, if any."""
        return [self._take()] if self._partial or self._state else []

    def _append(self, piece: bytes, lines: list[bytes]) -> None:
        if b"\r" in piece:
            head, _, piece = piece.rpartition(b"\r")
            segments = head.split(b"\r")
            segments[0] = bytes(self._partial) + segments[0]
            self._state = next((s for s in reversed(segments) if s), self._state)[-self.max_line:]
            self._partial.clear()
            self._rewritten = True
        partial = self._partial
        partial += piece
        if len(partial) >= self.max_line:  # forwarded in pieces: memory stays bounded
            cut = len(partial) - len(partial) % self.max_line
            lines += (bytes(partial[i:i + self.max_line]) for i in range(0, cut, self.max_line))
            del partial[:cut]
            self._state, self._rewritten = b"", False

    def _take(self) -> bytes:
        """Ends the current line: its text after the last \\r, or the last state a \\r ended."""
        line = bytes(self._partial) or self._state
        self._partial.clear()
        self._state, self._rewritten, self._shown = b"", False, -math.inf
        return line


class Forwarder:
    """One machine's output: copied to ours line by line with a prefix, the recent lines kept.

    Feed it raw bytes (``feed``) or lines already split (``line``) on an event loop; it never
    blocks. ``close`` once the machine has ended and its last output was fed.
    """

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix  # looked up per line: the machine's address, once known
        self.recent: collections.deque[tuple[float, str, str]] = collections.deque(maxlen=RECENT_LINES)
        self._splitters: dict[str, LineSplitter] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._open = True
        _WRITER.acquire()

    def feed(self, stream: str, data: bytes | None) -> None:
        """Forwards the lines of a chunk of ``stream`` (``"stdout"``/``"stderr"``); None at its end."""
        splitter = self._splitters.setdefault(stream, LineSplitter())
        lines = splitter.close() if data is None else splitter.feed(data, time.monotonic())
        for line in lines:
            self.line(stream, line.decode(errors="replace"))
        self._schedule(stream, splitter)

    def line(self, stream: str, text: str) -> None:
        """Forwards one line (without its ``\\n``)."""
        self.recent.append((time.time(), stream, text[:RECENT_CHARS]))
        _WRITER.put(stream, f"{self.prefix}: {text}\n")

    def close(self) -> None:
        """The machine has ended: its output is all fed."""
        for stream in list(self._splitters):
            self.feed(stream, None)
        for timer in self._timers.values():
            timer.cancel()
        if self._open:
            self._open = False
            _WRITER.release()

    def _schedule(self, stream: str, splitter: LineSplitter) -> None:
        """Forwards a rewritten line's latest state on time even if no more output comes."""
        timer = self._timers.pop(stream, None)
        if timer is not None:
            timer.cancel()
        due = splitter.progress_due(time.monotonic())
        if due is not None and self._open:
            self._timers[stream] = asyncio.get_running_loop().call_later(due, self._progress, stream)

    def _progress(self, stream: str) -> None:
        self._timers.pop(stream, None)
        splitter = self._splitters[stream]
        for line in splitter.progress(time.monotonic()):
            self.line(stream, line.decode(errors="replace"))
        self._schedule(stream, splitter)  # fired a little early (uvloop's timers count whole ms): again, on time


async def drained(timeout: float) -> bool:
    """Waits until every queued line is written, at most ``timeout`` seconds; whether it was."""
    return await _WRITER.drained(timeout)


class _Writer:
    """The process's one thread writing forwarded lines, fed through a bounded queue."""

    def __init__(self, *, max_lines: int = QUEUE_LINES, max_chars: int = QUEUE_CHARS) -> None:
        self.max_lines, self.max_chars = max_lines, max_chars
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._queue: collections.deque[tuple[str, str]] = collections.deque()
        self._chars = 0
        self._dropped = 0
        self._users = 0
        self._writing = False
        self._thread: threading.Thread | None = None
        self._waiters: list[Callable[[], None]] = []

    def acquire(self) -> None:
        with self._lock:
            self._users += 1
            self._start()

    def release(self) -> None:
        with self._lock:
            self._users -= 1
            self._wake.notify()

    def put(self, stream: str, text: str) -> None:
        """Queues a line, or drops and counts it if the queue is full; never blocks on a write."""
        with self._lock:
            if len(self._queue) >= self.max_lines or self._chars + len(text) > self.max_chars:
                self._dropped += 1
                return
            self._queue.append((stream, text))
            self._chars += len(text)
            self._start()
            self._wake.notify()

    async def drained(self, timeout: float) -> bool:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def wake() -> None:
            loop.call_soon_threadsafe(_resolve, done)

        with self._lock:
            if not self._queue and not self._writing:
                return True
            self._waiters.append(wake)
        try:
            await asyncio.wait_for(done, timeout)
            return True
        except TimeoutError:
            return False
        finally:
            with self._lock:
                if wake in self._waiters:
                    self._waiters.remove(wake)

    def _start(self) -> None:
        """Starts the thread if it is not running (the lock is held)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="bigmachine-output", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            with self._lock:
                self._writing = False
                if not self._queue:
                    for wake in self._waiters:
                        wake()
                    self._waiters.clear()
                while not self._queue and self._users > 0:
                    self._wake.wait()
                if not self._queue:  # nobody forwards anything any more
                    self._thread = None
                    return
                batch, self._queue = self._queue, collections.deque()
                dropped, self._dropped, self._chars = self._dropped, 0, 0
                self._writing = True
            if dropped:  # the last write went through, after a while: say what was lost meanwhile
                logger.warning("dropped %d lines of machine output: the driver's stdout is not being read", dropped)
            _write(batch)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _write(batch: collections.deque[tuple[str, str]]) -> None:
    """Writes lines to ``sys.stdout``/``sys.stderr``, looked up per batch so redirections apply."""
    for stream, lines in itertools.groupby(batch, key=lambda item: item[0]):
        out = getattr(sys, stream, None)
        if out is None:
            continue
        try:
            out.write("".join(text for _, text in lines))
            out.flush()
        except (OSError, ValueError):  # closed, or a broken pipe: the output has nowhere to go
            pass
        except Exception as exc:  # noqa: BLE001 - a replaced sys.stdout that fails must not end the writer
            logger.warning("could not write machine output to sys.%s (%r): %s", stream, out, exc)


_WRITER = _Writer()
