"""Services the debug server tests install (importable on Local machines: tests/web is on sys.path)."""

from __future__ import annotations

import threading
import time
from typing import Any

from bigmachine import expvar


def hot_loop_for_profile(seconds: float) -> int:
    """Burns CPU in pure Python, so a CPU profile finds this function by name."""
    end, n = time.monotonic() + seconds, 0
    while time.monotonic() < end:
        n += sum(i * i for i in range(500))
    return n


class Busy:
    """Work to observe: CPU, a user Prometheus counter, an expvar, output, failures."""

    def init(self, b: Any) -> None:
        from prometheus_client import Counter

        self.jobs = 0
        self.counter = Counter("debug_test_jobs", "Jobs done by the debug test service.")
        expvar.publish("jobs", lambda: {"done": self.jobs})
        print("debug test service ready", flush=True)

    def burn(self, seconds: float) -> int:
        return hot_loop_for_profile(seconds)

    def work(self, n: int) -> int:
        self.jobs += n
        self.counter.inc(n)
        return self.jobs

    def fail(self) -> None:
        raise ValueError("failed on purpose")

    def sleep(self, seconds: float) -> float:
        """A call of a known duration, for the timeline."""
        time.sleep(seconds)
        return seconds


class LongInitError:
    """Fails its machine's start with one long unbreakable word, as a path or a URL in an error is."""

    def init(self, b: Any) -> None:
        raise RuntimeError("cannot open /" + "/".join(f"directory_number_{i}" for i in range(30)) + "/config.toml")


class LongNames:
    """Method names long enough to overflow a careless table cell."""

    def a_method_name_long_enough_to_push_every_column_of_the_status_table_past_its_card(self) -> int:
        return 1

    def fail_with_a_long_message(self) -> None:
        raise ValueError("failed on purpose, " + "with a message that goes on " * 12)


RELEASE = threading.Event()  # in-process (Testing) machines share it: the test ends a block early


class Hang:
    """Blocks the machine's event loop (an async method that never yields): the machine stops answering."""

    async def block(self, seconds: float) -> float:
        RELEASE.wait(seconds)
        return seconds

    def ping(self) -> int:
        return 1


class Modules:
    """What a machine has imported."""

    def loaded(self, roots: list[str]) -> list[str]:
        import sys

        return sorted(name for name in sys.modules if name.split(".")[0] in roots or name.startswith("bigmachine.web"))


INIT_GATE = threading.Event()  # in-process machines: SlowInit stays STARTING until the test sets it


class SlowInit:
    """Keeps its machine STARTING until INIT_GATE is set (Testing machines only)."""

    def init(self, b: Any) -> None:
        INIT_GATE.wait(30)


class BadInit:
    """Fails its machine's start."""

    def init(self, b: Any) -> None:
        raise RuntimeError("init failed on purpose")
