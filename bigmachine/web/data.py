"""Machine-readable routes: machines and vars as JSON, Prometheus metrics, and http_sd targets."""

from __future__ import annotations

import asyncio

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .. import expvar
from .context import PREFIX, debug_of, json_response
from .cluster import ask, fan_out
from .promtext import CONTENT_TYPE, aggregate

__all__ = ["metrics", "routes"]


async def machines(request: Request) -> Response:
    """Every machine (``?machine=`` for one): what the driver knows, and its supervisor's status."""
    debug = debug_of(request)
    rows = await debug.rows(debug.machines(request, everyone=True))
    return json_response([{**row, "state": row["state"].name} for row in rows])


async def variables(request: Request) -> Response:
    """``{addr: {name: value}}`` of every machine's expvars, and the driver's own under ``driver``.

    A machine without an answer maps to ``{"error": why}``; ``?machine=driver`` for the driver alone.
    """
    debug = debug_of(request)
    own = await asyncio.to_thread(expvar.snapshot)  # memstats walks the heap: off the loop
    if request.query_params.get("machine") == "driver":
        return json_response({"driver": own})
    targets = [m for m in debug.machines(request, everyone=True) if m.addr]
    replies = await fan_out(targets, "Supervisor.expvars", timeout=debug.deadline)
    values = {m.addr: r.value if r.ok else {"error": r.error} for m, r in zip(targets, replies)}
    return json_response(values if request.query_params.get("machine") else {"driver": own, **values})


async def metrics(request: Request) -> Response:
    """The driver's exposition and every live machine's, labelled ``machine="ADDR"``; or one source."""
    debug = debug_of(request)
    key = request.query_params.get("machine")
    if key == "driver":
        return Response(debug.session.exposition(), media_type=CONTENT_TYPE)
    if key:
        machine = debug.session.find(key)
        if machine is None:
            raise HTTPException(404, f"no machine {key!r}\n")
        reply = await ask(machine, "Supervisor.metrics", timeout=debug.deadline)
        if not reply.ok:
            raise HTTPException(503, f"{machine.addr}: {reply.error}\n")
        return Response(reply.value, media_type=CONTENT_TYPE)
    known = [m for m in debug.session.machines() if m.addr]  # a stopped one shows as bigmachine_scrape_up 0
    replies = await fan_out(known, "Supervisor.metrics", timeout=debug.deadline)
    body = aggregate(debug.session.exposition(), [(m.addr, r.value if r.ok else None) for m, r in zip(known, replies)])
    return Response(body, media_type=CONTENT_TYPE)


async def targets(request: Request) -> Response:
    """Prometheus ``http_sd_configs`` targets: the driver and each machine, scraped through this server.

    Each target carries ``machine`` ("driver" or the address); the driver's own series
    name the machines they are about with ``peer``, so nothing collides. A machine
    that stopped stays a target (its scrape fails: ``up`` is 0) until the session forgets it.
    """
    debug = debug_of(request)
    path = str(request.scope.get("root_path", "")) + PREFIX + "/metrics"
    common = {"__metrics_path__": path, "bigmachine_session": debug.session.name}
    groups = [{"targets": [request.url.netloc], "labels": {**common, "__param_machine": "driver", "machine": "driver"}}]
    for m in debug.session.machines():
        if m.addr:
            groups.append({"targets": [request.url.netloc],
                           "labels": {**common, "__param_machine": m.addr, "machine": m.addr}})
    return json_response(groups)


def routes(prefix: str) -> list[Route]:
    return [
        Route(prefix + "/machines", machines),
        Route(prefix + "/vars", variables),
        Route(prefix + "/metrics", metrics),
        Route(prefix + "/targets", targets),
    ]
