"""The soak test's driver (run as its own process by test_soak.py, its stdout a pipe nobody reads at first).

8 Local machines under everything at once: long calls filling the service threads past the
keepalive timeout, thousands of short calls from threads and tasks, streams both ways,
machine-to-machine dials, a slow done-callback, chatty machines, and machines killed at
random and replaced. Writes a JSON report to ``$SOAK_REPORT``.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import random
import signal
import sys
import threading
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/: services

from services import Busy, Relay, Work  # noqa: E402

import bigmachine  # noqa: E402
from bigmachine.systems import Local  # noqa: E402

LIVENESS = {"keepalive_period": 0.5, "keepalive_timeout": 6.0, "keepalive_rpc_timeout": 3.0}


class Soak:
    """Load from many threads at once; every outcome tallied."""

    def __init__(self, b: bigmachine.B, seed: int, seconds: float) -> None:
        self.b = b
        self.rng = random.Random(seed)
        self.end = time.monotonic() + seconds
        self.machines: list[bigmachine.Machine] = []
        self.killed: set[str] = set()
        self.lock = threading.Lock()
        self.counts: collections.Counter[str] = collections.Counter()
        self.problems: list[str] = []

    def live(self) -> bigmachine.Machine:
        with self.lock:
            return self.rng.choice(self.machines)

    def outcome(self, kind: str, m: bigmachine.Machine, got: Any, want: Any, err: BaseException | None) -> None:
        """Tallies a call: the right answer, an honest MachineStopped from a killed machine, or a problem."""
        with self.lock:
            if err is None and got == want:
                self.counts[kind] += 1
            elif isinstance(err, bigmachine.MachineStopped) and m.addr in self.killed:
                self.counts["stopped_by_kill"] += 1
            else:
                self.problems.append(f"{kind} on {m.addr} ({m.state.name}): got {got!r}, want {want!r}, error {err!r}")

    def call(self, kind: str, m: bigmachine.Machine, want: Any, method: str, *args: Any, **kwargs: Any) -> None:
        try:
            got, err = m.call(method, *args, **kwargs), None
        except Exception as exc:
            got, err = None, exc
        self.outcome(kind, m, got, want, err)

    # --- the workloads, each a thread ---

    def long_calls(self) -> None:
        """Calls longer than the keepalive timeout, enough to fill every machine's service threads."""
        while time.monotonic() < self.end:
            m = self.live()
            futures = [(m, m.submit("Busy.sleep", LIVENESS["keepalive_timeout"] + 1, i)) for i in range(10)]
            for i, (machine, future) in enumerate(futures):
                try:
                    got, err = future.result(timeout=120), None
                except Exception as exc:
                    got, err = None, exc
                self.outcome("long", machine, got, i, err)

    def short_calls(self) -> None:
        while time.monotonic() < self.end:
            a, b = self.rng.randrange(1000), self.rng.randrange(1000)
            self.call("short", self.live(), a + b, "Work.add", a, b, timeout=60)

    def short_tasks(self) -> None:
        async def one(i: int) -> None:
            m = self.live()
            try:
                got, err = await m.acall("Work.add", i, 1, timeout=60), None
            except Exception as exc:
                got, err = None, exc
            self.outcome("task", m, got, i + 1, err)

        async def run() -> None:
            i = 0
            while time.monotonic() < self.end:
                await asyncio.gather(*(one(i + k) for k in range(50)))
                i += 50

        asyncio.run(run())

    def streams(self) -> None:
        while time.monotonic() < self.end:
            m = self.live()
            try:
                got, err = sum(len(c) for c in m.call("Work.chunks", 64, 1 << 16, timeout=60)), None
            except Exception as exc:
                got, err = None, exc
            self.outcome("stream_down", m, got, 64 << 16, err)
            self.call("stream_up", self.live(), 32 << 16, "Work.consume", iter([b"u" * (1 << 16)] * 32), timeout=60)
            m = self.live()
            try:
                got, err = sum(len(c) for c in m.call("Work.pipe", iter([b"p" * (1 << 16)] * 32), timeout=60)), None
            except Exception as exc:
                got, err = None, exc
            self.outcome("stream_both", m, got, 32 << 16, err)

    def dials(self) -> None:
        """Machine-to-machine calls; a peer killed meanwhile may end one with MachineStopped or Unavailable."""
        while time.monotonic() < self.end:
            relay, peer = self.live(), self.live()
            a = self.rng.randrange(1000)
            try:
                got, err = relay.call("Relay.call", peer.addr, "Work.add", a, 2, timeout=60), None
            except Exception as exc:
                got, err = None, exc
            if isinstance(err, (bigmachine.MachineStopped, bigmachine.Unavailable)) and peer.addr in self.killed:
                with self.lock:
                    self.counts["dial_to_killed_peer"] += 1
                continue
            self.outcome("dial", relay, got, a + 2, err)  # the relay's own kill is told apart there

    def slow_callbacks(self) -> None:
        while time.monotonic() < self.end:
            m = self.live()
            done = threading.Event()
            future = m.submit("Work.add", 1, 1, timeout=60)
            future.add_done_callback(lambda f: (time.sleep(5), done.set()))  # runs off the session loop
            done.wait(60)
            try:
                got, err = future.result(), None
            except Exception as exc:
                got, err = None, exc
            self.outcome("callback", m, got, 2, err)

    def chatter(self) -> None:
        while time.monotonic() < self.end:
            m = self.live()
            self.call("chatter", m, 200, "Busy.chatter", 200, timeout=60)

    def kills(self, n: int) -> None:
        for _ in range(n):
            time.sleep(self.rng.uniform(0.2, 0.5) * (self.end - time.monotonic()))
            with self.lock:
                victim = self.rng.choice(self.machines)
                self.killed.add(victim.addr)
                self.machines.remove(victim)
            os.kill(self.b._instances[victim].process.pid, signal.SIGKILL)  # type: ignore[attr-defined]
            (replacement,) = self.b.start(1, services())
            replacement.wait(bigmachine.RUNNING, timeout=60)
            with self.lock:
                self.machines.append(replacement)
                self.counts["kills"] += 1


def services() -> bigmachine.Services:
    return bigmachine.Services(Busy=Busy(), Relay=Relay(), Work=Work())


def main() -> None:
    seed, seconds = int(os.environ["SOAK_SEED"]), float(os.environ["SOAK_SECONDS"])
    begun = time.monotonic()
    threads_before = {t.name for t in threading.enumerate()}
    with bigmachine.start(Local(**LIVENESS)) as b:
        soak = Soak(b, seed, seconds)
        soak.machines = b.start(8, services())
        for m in soak.machines:
            m.wait(bigmachine.RUNNING, timeout=60)
        work = [soak.long_calls, soak.long_calls, soak.streams, soak.dials, soak.slow_callbacks, soak.chatter,
                soak.short_tasks, *[soak.short_calls] * 6, lambda: soak.kills(2)]
        threads = [threading.Thread(target=w, name=f"soak-{i}") for i, w in enumerate(work)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        stopped = [m for m in b.machines() if m.state == bigmachine.STOPPED]
        false_deaths = [f"{m.addr}: {m.err}" for m in stopped if m.addr not in soak.killed]
        machines = len(b.machines())
    left = {t.name for t in threading.enumerate()} - threads_before
    report = {"seed": seed, "seconds": time.monotonic() - begun, "counts": dict(soak.counts),
              "calls": sum(v for k, v in soak.counts.items() if k != "kills"), "machines": machines,
              "problems": soak.problems[:20], "problem_count": len(soak.problems), "false_deaths": false_deaths,
              "killed": sorted(soak.killed),
              "threads_left": sorted(left)}
    with open(os.environ["SOAK_REPORT"], "w") as f:
        json.dump(report, f)


if __name__ == "__main__":
    main()
