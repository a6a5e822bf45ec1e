"""Waiting, in a test, for something to come true: with a deadline, failing with what was awaited."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_for(check: Callable[[], object], timeout: float = 10.0, what: str = "the condition") -> None:
    """Polls ``check`` every 20 ms until it is true; fails the test naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.02)
