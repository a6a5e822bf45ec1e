"""CPU, memory and keepalive of every machine over the last 10 minutes, sampled from the session's start.

A task on the debug server's loop asks every running machine's supervisor for its
status every ``PERIOD`` seconds, whether or not a page is open, so the status page's
sparklines have a history on their first load. CPU percent is computed here from
the machine's cumulative CPU seconds, so page views in between do not skew it. One
sample costs one cheap supervisor call per machine (measured in docs/debug-server.md).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ..state import RUNNING
from .cluster import fan_out, key_of

if TYPE_CHECKING:
    from .cluster import SessionView

__all__ = ["PERIOD", "WINDOW", "History"]

logger = logging.getLogger(__name__)

PERIOD = 5.0  # seconds between samples
WINDOW = 600.0  # seconds kept


class History:
    """Per machine key: ``(time, cpu percent, rss bytes, keepalive seconds or None)``, oldest first."""

    def __init__(self, period: float = PERIOD, window: float = WINDOW) -> None:
        self.period = period
        self._points = int(window / period) + 1
        self._series: dict[str, collections.deque[tuple[float, float, float, float | None]]] = {}
        self._cpu_seen: dict[str, tuple[float, float]] = {}  # key -> (machine time, cumulative CPU seconds)
        self._task: asyncio.Task[None] | None = None

    def add(self, key: str, status: dict[str, Any], keepalive: float | None) -> None:
        """Records one supervisor status of machine ``key``."""
        when, rss = float(status["time"]), float(status["mem"]["process"]["rss"])
        cpu = float(status["cpu_percent"])
        used = status.get("cpu_seconds")
        if used is not None:
            last = self._cpu_seen.get(key)
            self._cpu_seen[key] = (when, float(used))
            if last is not None and when > last[0]:
                cpu = 100.0 * (float(used) - last[1]) / (when - last[0])
        series = self._series.setdefault(key, collections.deque(maxlen=self._points))
        if series and when - series[-1][0] < self.period / 2:
            series.pop()  # a page view just after a sample: keep the newest
        series.append((when, cpu, rss, keepalive))

    def cpu(self, key: str) -> list[float]:
        return [p[1] for p in self._series.get(key, ())]

    def rss(self, key: str) -> list[float]:
        return [p[2] for p in self._series.get(key, ())]

    def keepalive(self, key: str) -> list[float]:
        return [p[3] for p in self._series.get(key, ()) if p[3] is not None]

    def forget(self, keys: Iterable[str]) -> None:
        """Drops the series of machines not in ``keys`` (the session forgot them)."""
        keep = set(keys)
        for key in [k for k in self._series if k not in keep]:
            del self._series[key]
            self._cpu_seen.pop(key, None)

    async def sample(self, session: SessionView, deadline: float) -> None:
        """Asks every running machine for its status once and records the answers."""
        machines = [m for m in session.machines() if m.state == RUNNING]
        replies = await fan_out(machines, "Supervisor.status", timeout=deadline)
        for machine, reply in zip(machines, replies):
            if reply.ok:
                times = machine.keepalive_reply_times()
                self.add(key_of(machine), reply.value, times[0] if times else None)
        self.forget(key_of(m) for m in session.machines())

    def start(self, session: SessionView, deadline: float) -> None:
        """Starts sampling on the running loop, once (later calls do nothing)."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(session, deadline))

    async def _run(self, session: SessionView, deadline: float) -> None:
        while True:
            begun = time.monotonic()
            try:
                await self.sample(session, deadline)
            except Exception:  # a broken sample must not end the history
                logger.exception("resource history: sample failed")
            await asyncio.sleep(max(0.0, self.period - (time.monotonic() - begun)))
