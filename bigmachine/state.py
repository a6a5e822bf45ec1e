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

    def __str__(self) -> str:
        return self.name

    def __format__(self, spec: str) -> str:
        """Formats as the name (``f"{m.state}"`` is ``RUNNING``, as Go's ``State.String``), not the number."""
        return format(self.name, spec)


State.__module__ = "bigmachine"
UNSTARTED, STARTING, RUNNING, STOPPED = State.UNSTARTED, State.STARTING, State.RUNNING, State.STOPPED
