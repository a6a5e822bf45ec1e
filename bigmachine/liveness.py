"""How liveness is checked: keepalive timings, and what the driver says when a machine stops answering.

One ``Liveness`` per system: the driver renews an owned machine's lease every ``period``
(and pings a dialled one while it is in use), each renewal bounded by ``rpc_timeout``; a
machine that has not answered for ``timeout`` is declared dead, and a machine that has
not been renewed for ``timeout`` ends itself. The defaults and why are in
docs/reliability.md ("Busy is not dead").
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["Liveness", "held_stacks"]


@dataclass(frozen=True)
class Liveness:
    """Keepalive timings, in seconds."""

    period: float
    timeout: float
    rpc_timeout: float

    def __post_init__(self) -> None:
        if not 0 < self.period < self.timeout:
            raise ValueError(
                f"keepalive_period ({self.period}) must be > 0 and below keepalive_timeout ({self.timeout})"
            )
        if self.rpc_timeout <= 0:
            raise ValueError(f"keepalive_rpc_timeout must be > 0 seconds, not {self.rpc_timeout}")

    @property
    def stack_dump_after(self) -> float:
        """How long a machine's loop may be held before it dumps its threads' stacks (faulthandler).

        Half the timeout: the dump reaches the driver well before the driver gives up on the machine.
        """
        return self.timeout / 2


_DUMP_START = "Timeout ("  # faulthandler.dump_traceback_later's first line: "Timeout (0:00:30)!"


def held_stacks(output: Iterable[tuple[float, str, str]], since: float) -> str:
    """The last faulthandler stack dump in a machine's recent output lines ``(time, stream, text)``, or ''.

    Only a dump written after ``since`` (a ``time.time()``) counts: it says what held the machine then.
    """
    lines = [text for when, _, text in output if when >= since]
    for start in range(len(lines) - 1, -1, -1):
        if lines[start].startswith(_DUMP_START):
            dump: list[str] = []
            for text in lines[start:]:
                if dump and not (text.startswith(("Thread ", "Current thread ", "  File ", "  <")) or not text.strip()):
                    break
                dump.append(text)
            return "\n".join(dump).strip()
    return ""

