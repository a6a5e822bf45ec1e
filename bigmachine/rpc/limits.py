"""The default bounds on a session's calls: connections to one machine, and plain methods at once on one.

Kept apart from the pools and slots that enforce them, which need asyncio: ``System`` takes
these as its defaults, and ``bigmachine.start`` reaches ``System`` before the session's
heavier imports (bigmachine/__init__.py).
"""

from __future__ import annotations

__all__ = ["DEFAULT_MAX_CONNECTIONS", "DEFAULT_SERVICE_THREADS"]

DEFAULT_MAX_CONNECTIONS = 64  # to one machine from one session; calls past it wait their turn
DEFAULT_SERVICE_THREADS = 64  # plain service methods running at once on one machine; calls past it queue
