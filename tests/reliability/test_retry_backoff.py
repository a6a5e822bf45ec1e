"""``retry_call``: capped exponential backoff with jitter, stops at the deadline, never retries a
remote exception. Retrying temporary errors at all, and not retrying a remote TypeError, are in
tests/test_testing_system.py; the schedule itself is checked here on a fake clock.
"""

from __future__ import annotations

import random
import ssl
import time
from types import SimpleNamespace
from typing import Any

import pytest
from services import Flaky

import bigmachine
from bigmachine import RUNNING
from bigmachine.rpc import deadlines
from bigmachine import machine as machine_module

CAP = 2.0  # seconds: the longest pause between two attempts
FIRST = 0.05  # seconds: the first pause, before jitter


class FakeClock:
    """``time.monotonic``/``time.sleep`` for the retry loop: sleeping advances it, instantly."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    fake_time = SimpleNamespace(monotonic=fake.monotonic, sleep=fake.sleep, time=time.time)
    monkeypatch.setattr(machine_module, "time", fake_time)
    monkeypatch.setattr(deadlines, "time", fake_time)  # deadlines and remaining() on the same clock
    monkeypatch.setattr(machine_module, "random", random.Random(20240611))
    return fake


class Attempts:
    """Stands in for ``Machine.call``: raises the given errors in turn (the last one forever)."""

    def __init__(self, clock: FakeClock, *errors: BaseException, result: Any = None) -> None:
        self.clock, self.errors, self.result = clock, list(errors), result
        self.timeouts: list[float | None] = []
        self.at: list[float] = []

    def __call__(self, method: str, *args: Any, timeout: float | None = None, **kwargs: Any) -> Any:
        self.timeouts.append(timeout)
        self.at.append(self.clock.now)
        if not self.errors:
            return self.result
        error = self.errors[0] if len(self.errors) == 1 and self.result is None else self.errors.pop(0)
        raise error


def offline_machine() -> bigmachine.Machine:
    """A machine object whose ``call`` the test replaces: no session, no network."""
    session = SimpleNamespace(client_context=ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), max_connections=64)
    return bigmachine.Machine(session, "https://127.0.0.1:9/", owned=False)  # type: ignore[arg-type]


def test_backoff_is_exponential_jittered_and_capped(clock: FakeClock) -> None:
    m = offline_machine()
    m.call = attempts = Attempts(clock, bigmachine.Unavailable("connection refused"))  # type: ignore[method-assign]
    with pytest.raises(bigmachine.Unavailable):
        m.retry_call("Work.add", 1, 2, timeout=30)
    sleeps = clock.sleeps
    assert len(attempts.at) == len(sleeps) + 1
    nominal = [min(CAP, FIRST * 2**i) for i in range(len(sleeps))]
    ratios = [s / n for s, n in zip(sleeps, nominal)]
    assert all(0.5 <= r <= 1.0 for r in ratios), list(zip(sleeps, nominal))  # jitter: 50-100 % of the nominal
    assert len({round(r, 6) for r in ratios}) > len(ratios) // 2, "no jitter: every pause is the same fraction"
    assert max(sleeps) <= CAP and sum(s > CAP / 2 for s in sleeps) >= 5, sleeps  # reaches the cap, stays under it
    growing = [b / a for a, b in zip(sleeps, sleeps[1:]) if b < CAP / 2]
    assert growing and all(1.0 <= g <= 4.0 for g in growing), growing  # doubling, give or take the jitter


def test_retry_stops_at_the_deadline_and_raises_the_last_error(clock: FakeClock) -> None:
    m = offline_machine()
    errors = [bigmachine.Unavailable(f"refused #{i}") for i in range(1000)]
    m.call = attempts = Attempts(clock, *errors, result="never")  # type: ignore[method-assign]
    begun = clock.now
    with pytest.raises(bigmachine.Unavailable) as info:
        m.retry_call("Work.add", 1, 2, timeout=5)
    n = len(attempts.at)
    assert str(info.value) == f"refused #{n - 1}"  # the last attempt's error
    assert clock.now - begun <= 5, "slept past the deadline"
    assert all(t is not None and 0 < t <= 5 for t in attempts.timeouts)
    assert attempts.timeouts == sorted(attempts.timeouts, reverse=True)  # each attempt gets only the time left
    left = [begun + 5 - at for at in attempts.at]
    gaps = [abs(t - x) for t, x in zip(attempts.timeouts, left)]  # type: ignore[operator]
    assert max(gaps) < 1e-6, (attempts.timeouts, left)
    # It gave up only because the next pause would have crossed the deadline.
    assert begun + 5 - clock.now < CAP


def test_retry_returns_once_an_attempt_succeeds(clock: FakeClock) -> None:
    m = offline_machine()
    attempts = Attempts(clock, bigmachine.Unavailable("a"), bigmachine.Unavailable("b"), result=42)
    m.call = attempts  # type: ignore[method-assign]
    assert m.retry_call("Work.add", 1, 2, timeout=5) == 42
    assert len(attempts.at) == 3 and len(clock.sleeps) == 2


@pytest.mark.parametrize("error", [
    ValueError("raised by the remote method"),
    bigmachine.MachineStopped("machine stopped", machine="https://127.0.0.1:9/"),
    bigmachine.NotFound("no service 'Nope'"),
    bigmachine.SerializationError("argument 0 cannot be pickled"),
    bigmachine.Cancelled("cancelled"),
    bigmachine.RemoteError("boom", machine="https://127.0.0.1:9/", remote_traceback="", exc_type="x.Y"),
    TimeoutError("no reply in time"),
], ids=lambda e: type(e).__name__)
def test_retry_never_retries_a_permanent_error(clock: FakeClock, error: BaseException) -> None:
    m = offline_machine()
    m.call = attempts = Attempts(clock, error)  # type: ignore[method-assign]
    with pytest.raises(type(error)):
        m.retry_call("Work.add", 1, 2, timeout=30)
    assert len(attempts.at) == 1 and clock.sleeps == []


def test_remote_method_raising_a_temporary_error_is_not_retried(testing_session: bigmachine.B) -> None:
    """The remote method itself raises ``Unavailable`` (temporary=True): that is its exception, not
    the transport's, and must reach the caller after one attempt."""
    (m,) = testing_session.start(1, bigmachine.Services(Flaky=Flaky()))
    assert m.wait(RUNNING, timeout=10) == RUNNING
    begun = time.monotonic()
    with pytest.raises(bigmachine.Unavailable) as info:
        m.retry_call("Flaky.raise_temporary", timeout=3)
    took = time.monotonic() - begun
    assert m.call("Flaky.count") == 1, "the remote method was called again"
    assert took < 1
    assert isinstance(info.value.__cause__, bigmachine.RemoteError)  # marked as the service's own exception
