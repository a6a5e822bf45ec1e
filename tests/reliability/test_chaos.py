"""Chaos: thousands of calls from threads and tasks while machines are killed at random moments.

Every call either returns the right answer or raises MachineStopped/TimeoutError within its
deadline; every thread joins, every future and task is done; the leak guard (tests/conftest.py)
then checks that no process, thread, fd or temp dir is left. Each test runs with a fixed seed and
with a random one, printed; ``BIGMACHINE_CHAOS_SEED=N`` replays a random run's kill schedule and
call mix (thread interleavings are the OS's).
"""

from __future__ import annotations

import asyncio
import collections
import os
import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from services import Work

import bigmachine
from bigmachine import RUNNING, STOPPED
from bigmachine.systems import Local, Testing

pytestmark = pytest.mark.timeout(120)

SEED_ENV = "BIGMACHINE_CHAOS_SEED"
FIXED_SEED = 20240611
SLACK = 1.5  # seconds past a call's deadline it may take to return on a busy 2-core host


@pytest.fixture(params=["fixed-seed", "random-seed"])
def seed(request: pytest.FixtureRequest) -> int:
    if request.param == "fixed-seed":
        value = FIXED_SEED
    else:
        value = int(os.environ.get(SEED_ENV) or random.SystemRandom().randrange(2**32))
    print(f"chaos seed: {value} (replay with {SEED_ENV}={value})")
    return value


@dataclass
class Plan:
    machines: int
    sync_threads: int
    submit_threads: int
    foreign_tasks: int  # acall from an event loop of the test's own
    session_tasks: int  # acall on the session's event loop
    calls_each: int
    kills: int
    kill_gap: tuple[float, float]  # seconds between kills, uniformly drawn
    timeout: float  # each call's deadline
    budget: float  # seconds after which workers stop starting calls


@dataclass
class Chaos:
    b: bigmachine.B
    plan: Plan
    seed: int
    kill: Callable[[bigmachine.Machine], None]
    pool: list[bigmachine.Machine] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    outcomes: collections.Counter[str] = field(default_factory=collections.Counter)
    problems: list[str] = field(default_factory=list)
    killed: list[tuple[bigmachine.Machine, float]] = field(default_factory=list)  # machine, seconds to STOPPED
    done: threading.Event = field(default_factory=threading.Event)

    def start_machine(self) -> bigmachine.Machine:
        (m,) = self.b.start(1, bigmachine.Services(Work=Work()))
        return m

    def pick(self, rng: random.Random) -> bigmachine.Machine:
        with self.lock:
            return rng.choice(self.pool)

    @staticmethod
    def job(rng: random.Random) -> tuple[str, tuple[Any, ...], Any]:
        a, b = rng.randrange(10**6), rng.randrange(10**6)
        roll = rng.random()
        if roll < 0.1:
            pause = rng.choice([0.01, 0.05, 0.2])
            return "Work.sleep", (pause,), pause  # in flight long enough to be cut by a kill
        if roll < 0.4:
            return "Work.aadd", (a, b), a + b
        return "Work.add", (a, b), a + b

    def record(self, where: str, method: str, expected: Any, took: float, result: Any = None,
               error: BaseException | None = None) -> None:
        if error is None:
            kind = "ok" if result == expected else "wrong answer"
        elif isinstance(error, (bigmachine.MachineStopped, TimeoutError)):
            kind = type(error).__name__ if isinstance(error, TimeoutError) else "MachineStopped"
        else:
            kind = "unexpected error"
        with self.lock:
            self.outcomes[kind] += 1
            if kind in ("wrong answer", "unexpected error"):
                self.problems.append(f"{where} {method}: {kind}: {result!r} {error!r}")
            if took > self.plan.timeout + SLACK:
                self.problems.append(f"{where} {method}: took {took:.2f} s, deadline {self.plan.timeout} s ({kind})")

    def out_of_time(self, begun: float) -> bool:
        return time.monotonic() - begun > self.plan.budget

    # ---------------------------------------------------------------- workers

    def sync_worker(self, index: int, begun: float) -> None:
        rng = random.Random(self.seed * 1000 + index)
        for _ in range(self.plan.calls_each):
            if self.out_of_time(begun):
                return
            m = self.pick(rng)
            method, args, expected = self.job(rng)
            t0 = time.monotonic()
            try:
                result = m.call(method, *args, timeout=self.plan.timeout)
            except BaseException as exc:
                self.record("call", method, expected, time.monotonic() - t0, error=exc)
            else:
                self.record("call", method, expected, time.monotonic() - t0, result)

    def submit_worker(self, index: int, begun: float) -> None:
        rng = random.Random(self.seed * 1000 + 100 + index)
        left = self.plan.calls_each
        while left > 0 and not self.out_of_time(begun):
            batch = []
            for _ in range(min(8, left)):
                m = self.pick(rng)
                method, args, expected = self.job(rng)
                t0 = time.monotonic()
                future = m.submit(method, *args, timeout=self.plan.timeout)
                ended: list[float] = []
                future.add_done_callback(lambda f, ended=ended: ended.append(time.monotonic()))
                batch.append((future, method, expected, t0, ended))
            left -= len(batch)
            for future, method, expected, t0, ended in batch:
                try:
                    result = future.result(self.plan.timeout + SLACK)
                except BaseException as exc:
                    if not future.done():
                        self.problems.append(f"submit {method}: future not done {self.plan.timeout + SLACK} s on")
                        continue
                    self.record("submit", method, expected, ended[0] - t0 if ended else 0.0, error=exc)
                else:
                    self.record("submit", method, expected, ended[0] - t0 if ended else 0.0, result)

    async def task_worker(self, index: int, begun: float, where: str) -> None:
        rng = random.Random(self.seed * 1000 + 200 + index)
        for _ in range(self.plan.calls_each):
            if self.out_of_time(begun):
                return
            m = self.pick(rng)
            method, args, expected = self.job(rng)
            t0 = time.monotonic()
            try:
                result = await asyncio.wait_for(m.acall(method, *args, timeout=self.plan.timeout),
                                                self.plan.timeout + SLACK + 5)  # a guard: a hung acall is reported
            except BaseException as exc:
                self.record(where, method, expected, time.monotonic() - t0, error=exc)
            else:
                self.record(where, method, expected, time.monotonic() - t0, result)

    def foreign_loop(self, begun: float) -> None:
        async def main() -> None:
            tasks = [asyncio.create_task(self.task_worker(i, begun, "acall")) for i in range(self.plan.foreign_tasks)]
            await asyncio.gather(*tasks)
            assert all(t.done() for t in tasks)

        asyncio.run(main())

    def killer(self) -> None:
        rng = random.Random(self.seed)
        for _ in range(self.plan.kills):
            if self.done.wait(rng.uniform(*self.plan.kill_gap)):
                return
            with self.lock:
                running = [i for i, m in enumerate(self.pool) if m.state == RUNNING]
            if not running:
                continue
            index = rng.choice(running)
            victim = self.pool[index]
            t0 = time.monotonic()
            self.kill(victim)
            state = victim.wait(STOPPED, timeout=10)
            self.killed.append((victim, time.monotonic() - t0 if state == STOPPED else float("inf")))
            replacement = self.start_machine()  # may still be STARTING: calls wait for it
            with self.lock:
                self.pool[index] = replacement

    # ---------------------------------------------------------------- run

    def run(self) -> None:
        plan = self.plan
        self.pool = [self.start_machine() for _ in range(plan.machines)]
        for m in self.pool:
            assert m.wait(RUNNING, timeout=60) == RUNNING, m.err
        begun = time.monotonic()
        threads = [threading.Thread(target=self.sync_worker, args=(i, begun), name=f"chaos-call-{i}")
                   for i in range(plan.sync_threads)]
        threads += [threading.Thread(target=self.submit_worker, args=(i, begun), name=f"chaos-submit-{i}")
                    for i in range(plan.submit_threads)]
        threads.append(threading.Thread(target=self.foreign_loop, args=(begun,), name="chaos-acall"))
        killer = threading.Thread(target=self.killer, name="chaos-killer")
        session_tasks = [asyncio.run_coroutine_threadsafe(self.task_worker(100 + i, begun, "acall on session loop"),
                                                          self.b.loop) for i in range(plan.session_tasks)]
        for thread in threads:
            thread.start()
        killer.start()
        limit = begun + plan.budget + plan.timeout + SLACK + 10
        for thread in threads:
            thread.join(max(0.0, limit - time.monotonic()))
        for future in session_tasks:
            try:
                future.result(max(0.0, limit - time.monotonic()))
            except TimeoutError:
                pass
        self.done.set()
        killer.join(30)
        waiting = [t.name for t in [*threads, killer] if t.is_alive()]
        waiting += [f"session task {i}" for i, f in enumerate(session_tasks) if not f.done()]
        assert not waiting, f"seed {self.seed}: still waiting: {waiting}"
        for future in session_tasks:
            future.result()  # a task that failed outside a call (a bug in this test) shows here

    def check(self, min_calls: int) -> None:
        seed, outcomes = self.seed, self.outcomes
        summary = f"seed {seed}: {dict(outcomes)}; kills {[round(t, 2) for _, t in self.killed]}"
        print(summary)
        assert not self.problems, f"{summary}\n" + "\n".join(self.problems[:30])
        assert set(outcomes) <= {"ok", "MachineStopped", "TimeoutError"}, summary
        assert sum(outcomes.values()) >= min_calls, summary
        assert outcomes["ok"] >= min_calls // 2, summary
        assert self.killed, f"{summary}: no machine was killed"
        assert all(t < 2.0 for _, t in self.killed), f"{summary}: a killed machine took long to be STOPPED"
        assert all(m.state == STOPPED for m, _ in self.killed)


def test_chaos_on_testing_machines_killed_by_the_system(seed: int) -> None:
    system = Testing(keepalive_period=0.2, keepalive_timeout=1.5, keepalive_rpc_timeout=0.5)
    plan = Plan(machines=3, sync_threads=4, submit_threads=2, foreign_tasks=4, session_tasks=2, calls_each=250,
                kills=8, kill_gap=(0.1, 0.8), timeout=3.0, budget=15.0)
    with bigmachine.start(system) as b:
        chaos = Chaos(b, plan, seed, kill=system.kill)
        chaos.run()
    chaos.check(min_calls=1500)  # of 3000 planned


def _sigkill(m: bigmachine.Machine) -> None:
    os.kill(m.info["pid"], signal.SIGKILL)


def test_chaos_on_local_processes_killed_by_sigkill(seed: int) -> None:
    plan = Plan(machines=2, sync_threads=3, submit_threads=2, foreign_tasks=3, session_tasks=1, calls_each=250,
                kills=4, kill_gap=(0.3, 1.2), timeout=5.0, budget=15.0)
    with bigmachine.start(Local()) as b:
        chaos = Chaos(b, plan, seed, kill=_sigkill)
        chaos.run()
    chaos.check(min_calls=1000)  # of 2250 planned
