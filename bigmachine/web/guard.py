"""Who may talk to the debug server: the right ``Host`` (against DNS rebinding), and no cross-site requests.

A web page the user opens elsewhere can aim its browser at ``127.0.0.1:3333``. Two
checks keep it out (tests/web/test_debug_guard.py):

- ``Host`` must be one of the allowed names (the bind address, ``localhost``,
  ``127.0.0.1``, ``::1``, plus ``--bigm.debug-allow-host`` / ``BIGMACHINE_DEBUG_ALLOW_HOST``);
  a rebound name such as ``attacker.example`` gets 400. This is Starlette's
  ``TrustedHostMiddleware``, which cannot parse ``[::1]:port``, hence this one.
- A browser's ``Sec-Fetch-Site: cross-site`` (or ``same-site``) request that is not
  a top-level navigation gets 403, so another site's script or ``<img>`` cannot
  start profiles or read through the port; following a link still works.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["ALLOW_HOST_ENV", "HostGuard", "allowed_hosts"]

ALLOW_HOST_ENV = "BIGMACHINE_DEBUG_ALLOW_HOST"
LOOPBACK = ("localhost", "127.0.0.1", "::1")


def allowed_hosts(bind: str | None = None, extra: Iterable[str] = ()) -> frozenset[str]:
    """Loopback names, the bind address, ``extra`` and the comma-separated ``BIGMACHINE_DEBUG_ALLOW_HOST``."""
    names = {*LOOPBACK, *extra, *os.environ.get(ALLOW_HOST_ENV, "").split(",")}
    if bind:
        names.add(bind)
    return frozenset(n.strip().strip("[]").lower() for n in names if n.strip())


def host_name(header: str) -> str:
    """The name of a ``Host`` header without its port: ``h:1`` -> ``h``, ``[::1]:1`` -> ``::1``."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].partition("]")[0]
    return header.rpartition(":")[0] if header.count(":") == 1 else header


class HostGuard:
    """ASGI middleware: 400 for a ``Host`` not in ``hosts``, 403 for a cross-site sub-request."""

    def __init__(self, app: ASGIApp, hosts: Iterable[str]) -> None:
        self.app = app
        self.hosts = frozenset(hosts)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        host = host_name(headers.get("host", ""))
        if host not in self.hosts:
            allow = "--bigm.debug-allow-host NAME (or " + ALLOW_HOST_ENV + ")"
            await PlainTextResponse(f"invalid Host {host!r}: the debug server answers only to "
                                    f"{', '.join(sorted(self.hosts))}; add a name with {allow}\n", 400)(scope, receive, send)
            return
        site = headers.get("sec-fetch-site", "none")
        if site not in ("none", "same-origin") and headers.get("sec-fetch-mode") != "navigate":
            await PlainTextResponse(f"cross-site request ({site}) refused: open the debug pages directly\n",
                                    403)(scope, receive, send)
            return
        await self.app(scope, receive, send)
