"""Machine states; they only ever increase."""

from __future__ import annotations

import enum

__all__ = ["RUNNING", "STARTING", "STOPPED", "UNSTARTED", "State"]


class State(enum.IntEnum):
    """A machine's lifecycle: ``UNSTARTED < STARTING < RUNNING < STOPPED``."""

    UNSTARTED = 0
    STARTING = 1
    RUNNING = 2
    STOPPED = 3


State.__module__ = "bigmachine"
UNSTARTED, STARTING, RUNNING, STOPPED = State.UNSTARTED, State.STARTING, State.RUNNING, State.STOPPED
