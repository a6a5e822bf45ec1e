"""Deadlines as ``time.monotonic()`` instants; ``math.inf`` is no deadline."""

from __future__ import annotations

import math
import time

__all__ = ["deadline_after", "remaining"]


def deadline_after(timeout: float | None) -> float:
    """The ``time.monotonic()`` instant a call with this timeout must end by."""
    if timeout is None:
        return math.inf
    if timeout < 0:
        raise ValueError(f"timeout must be >= 0 seconds, not {timeout}")
    return time.monotonic() + timeout


def remaining(deadline: float) -> float | None:
    """Seconds left before ``deadline`` (None for no deadline); raises TimeoutError past it."""
    if deadline == math.inf:
        return None
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("deadline exceeded")
    return left
