"""HTML pages: the cluster's status, one machine's page, and the profile index."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .. import profile
from ..rpc import trace as calltrace
from ..profile import heap
from ..state import RUNNING, STARTING, STOPPED, UNSTARTED
from . import timeline
from .context import REFRESH, Debug, debug_of
from .cluster import ask, fan_out, key_of

__all__ = ["routes"]


def _decorate(debug: Debug, row: dict[str, Any]) -> dict[str, Any]:
    """Adds what the templates chart and total to a machine's row."""
    calls = {k: v for k, v in row["calls"].items() if not k.startswith("Supervisor.")}  # users' calls only
    count = sum(c["calls"] for c in calls.values())
    row["totals"] = {
        "calls": count,
        "errors": sum(c["errors"] for c in calls.values()),
        "mean": sum(c["mean"] * c["calls"] for c in calls.values()) / count if count else None,
    }
    served = (row["status"] or {}).get("rpc") or {}
    busiest = served or calls
    row["top"] = sorted(((k, v) for k, v in busiest.items() if not k.startswith("Supervisor.")),
                        key=lambda kv: -kv[1]["calls"])[:2]
    row["keepalive_ms"] = [t * 1000 for t in debug.history.keepalive(row["key"]) or row["keepalive"]["history"]]
    status = row["status"]
    # A machine younger than one history period has no samples yet: chart what this page just got.
    row["cpu_history"] = debug.history.cpu(row["key"]) or ([status["cpu_percent"]] if status else [])
    row["rss_history"] = debug.history.rss(row["key"]) or ([status["mem"]["process"]["rss"]] if status else [])
    return row


def _totals(rows: list[dict[str, Any]]) -> dict[str, Any]:
    states = {RUNNING: 0, STARTING: 0, STOPPED: 0, UNSTARTED: 0}
    for row in rows:
        states[row["state"]] += 1
    calls = sum(r["totals"]["calls"] for r in rows)
    weighted = sum((r["totals"]["mean"] or 0.0) * r["totals"]["calls"] for r in rows)
    live = [r["status"] for r in rows if r["status"]]
    return {
        "states": states,
        "slow": sum(1 for r in rows if r["slow"]),
        "calls": calls,
        "errors": sum(r["totals"]["errors"] for r in rows),
        "mean": weighted / calls if calls else None,
        "cpu": sum(s["cpu_percent"] for s in live),
        "rss": sum(s["mem"]["process"]["rss"] for s in live),
    }


async def status(request: Request) -> Response:
    debug = debug_of(request)
    machines = debug.session.machines()
    rows = [_decorate(debug, row) for row in await debug.rows(machines)]
    lanes = timeline.lanes_of(request, 60.0)
    return debug.render(request, "status.html", page="status", refresh=REFRESH, machines=rows, totals=_totals(rows),
                        timeline=timeline.render(lanes), legend=timeline.legend(lanes))


async def machine_page(request: Request) -> Response:
    debug = debug_of(request)
    key = request.path_params["key"]
    machine = debug.session.find(key)
    if machine is None:
        raise HTTPException(404, f"no machine {key!r} in session {debug.session.name}\n")
    (row,), variables = await asyncio.gather(debug.rows([machine]),
                                             ask(machine, "Supervisor.expvars", timeout=debug.deadline))
    output = debug.session.recent_output(machine)
    lanes = [(key_of(machine), calltrace.calls(machine, time.time() - 60.0))]
    return debug.render(request, "machine.html", page="machine", refresh=REFRESH, m=_decorate(debug, row),
                        vars=variables.value or {}, vars_error=variables.error, output=output,
                        timeline=timeline.render(lanes), legend=timeline.legend(lanes))


async def pprof_index(request: Request) -> Response:
    debug = debug_of(request)
    machines = debug.machines(request)
    replies = await fan_out(machines, "Supervisor.profile_counts", timeout=debug.deadline)
    rows = [{"key": key_of(m), "counts": r.value if r.ok else None, "error": r.error} for m, r in zip(machines, replies)]
    live = [r.value for r in replies if r.ok]
    counts = {
        "machines": len(machines), "answered": len(live),
        "threads": sum(c["threads"] for c in live), "tasks": sum(c["tasks"] for c in live),
        "tracing": sum(1 for c in live if c["heap_bytes"] is not None),
        "heap_bytes": sum(c["heap_bytes"] or 0 for c in live),
    }
    return debug.render(request, "pprof.html", page="pprof", rows=rows, counts=counts, max_seconds=profile.MAX_SECONDS,
                        stop_after=heap.STOP_AFTER, heap=heap)


def routes(prefix: str) -> list[Route]:
    return [
        Route(prefix + "/status", status),
        Route(prefix + "/machine/{key:path}", machine_page),
        Route(prefix + "/pprof/", pprof_index),
        Route(prefix + "/pprof", pprof_index),
    ]
