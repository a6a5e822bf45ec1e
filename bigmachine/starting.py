"""``bigmachine.start``: a session on a system, with the system's early work begun before the session's imports.

``import bigmachine`` and ``Local`` need no asyncio; ``start`` has the system begin what may
overlap the rest of the driver's imports (``System.prepare``: ``Local`` starts its fork
server, whose boot is most of a first start) and only then imports the session.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .session import B
    from .systems.base import System

__all__ = ["start"]


def start(system: System | None = None, *, name: str | None = None) -> B:
    """Starts a bigmachine session on ``system`` (default: ``Local()``)."""
    if system is None:
        from .systems.local import Local

        system = Local()
    system.prepare()  # before the session's imports: Local's fork server boots while they run
    from .session import B

    return B(system, name=name)
