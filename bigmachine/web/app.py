"""The debug application: routes under ``/debug/bigmachine`` (and ``/metrics``), all GET, all read-only.

``create_app(b)`` is what ``b.debug_app()`` returns. Handlers are async and run on
the debug server's loop; they reach machines only through ``cluster`` (fan-out with
a deadline per machine), so no page waits on a dead or slow machine.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from . import data, pages, profiles, timeline
from .cluster import SessionView
from .context import DEFAULT_DEADLINE, PREFIX, Debug, debug_of
from .guard import HostGuard, allowed_hosts

if TYPE_CHECKING:
    from ..session import B

__all__ = ["create_app"]


# ------------------------------------------------------------------ the app


async def _to_status(request: Request) -> Response:
    return RedirectResponse(debug_of(request).base(request) + "/status")


def create_app(b: B, *, deadline: float = DEFAULT_DEADLINE, hosts: Iterable[str] | None = None) -> Starlette:
    """The debug application of session ``b``.

    ``deadline``: seconds each machine gets to answer a page; ``hosts``: the ``Host``
    names served (default: loopback names and ``BIGMACHINE_DEBUG_ALLOW_HOST``, see ``guard``).
    """
    routes = [
        Route("/", _to_status),
        Route(PREFIX, _to_status),
        Route(PREFIX + "/", _to_status),
        *pages.routes(PREFIX),
        *data.routes(PREFIX),
        *profiles.routes(PREFIX),
        *timeline.routes(PREFIX),
        Route("/metrics", data.metrics),
    ]
    guard = Middleware(HostGuard, hosts=allowed_hosts() if hosts is None else hosts)
    app = Starlette(routes=routes, middleware=[guard])
    app.state.debug = Debug(SessionView(b), deadline)
    return app
