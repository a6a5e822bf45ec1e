"""Profiles of the whole cluster: CPU (pstats, text, folded, pprof, flame graph), heap and threads.

Each is collected on every machine at once (``?machine=`` for one) and merged here; a
machine that does not answer is left out and named in the ``X-Bigmachine-Missing``
header (and at the top of text formats).
"""

from __future__ import annotations

from typing import Any

from markupsafe import Markup
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from .. import profile
from .app import choice_param, debug_of, float_param, json_response
from .cluster import fan_out, key_of

__all__ = ["routes"]

CPU_FORMATS = ("pstats", "text", "collapsed", "pprof")
MAX_SECONDS = 600.0
HEAP_TIMEOUT = 15.0  # a big heap takes a while to group by traceback


async def _collect(request: Request, method: str, *args: Any, timeout: float) -> tuple[list[str], list[Any], list[str]]:
    """Asks the selected machines; (keys, values) of those that answered, and notes on those that did not."""
    debug = debug_of(request)
    machines = debug.machines(request)
    replies = await fan_out(machines, method, *args, timeout=timeout)
    keys = [key_of(m) for m, r in zip(machines, replies) if r.ok]
    values = [r.value for r in replies if r.ok]
    missing = [f"{key_of(m)}: {r.error}" for m, r in zip(machines, replies) if not r.ok]
    if not values:
        why = "; ".join(missing) or "there are no machines"
        raise HTTPException(503, f"no machine answered: {why}\n")
    return keys, values, missing


def _headers(keys: list[str], missing: list[str], filename: str | None = None) -> dict[str, str]:
    headers = {"X-Bigmachine-Machines": str(len(keys))}
    if missing:
        headers["X-Bigmachine-Missing"] = "; ".join(missing).encode("ascii", "replace").decode()[:2000]
    if filename:
        headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    return headers


def _notes(missing: list[str]) -> str:
    return "".join(f"# left out {note}\n" for note in missing)


async def cpu(request: Request) -> Response:
    """``?seconds=30&format=pstats|text|collapsed|pprof&machine=&by=machine``."""
    seconds = float_param(request, "seconds", 30.0, 0.05, MAX_SECONDS)
    fmt = choice_param(request, "format", CPU_FORMATS)
    keys, samples, missing = await _collect(request, "Supervisor.profile_cpu", seconds,
                                            timeout=seconds + debug_of(request).deadline)
    headers = _headers(keys, missing)
    if fmt in ("pstats", "text"):
        merged = profile.merge_pstats(profile.to_pstats(s) for s in samples)
        if fmt == "pstats":
            headers = _headers(keys, missing, "cpu.pstats")
            return Response(merged, media_type="application/octet-stream", headers=headers)
        total = sum(s.total for s in samples)
        head = (f"CPU profile of {len(keys)} machine{'s' if len(keys) != 1 else ''} over {seconds:g} s: "
                f"{total} samples ({', '.join(keys)})\n{_notes(missing)}")
        return PlainTextResponse(head + profile.to_text(merged), headers=headers)
    labels = keys if request.query_params.get("by") == "machine" else None
    combined = profile.merge_cpu(samples, labels)
    if fmt == "collapsed":
        return PlainTextResponse(profile.to_collapsed(combined), headers=headers)
    return Response(profile.cpu_to_pprof(combined), media_type="application/octet-stream",
                    headers=_headers(keys, missing, "cpu.pb.gz"))


async def flame(request: Request) -> Response:
    """A flame graph page of a CPU profile (``?seconds=10&machine=&by=machine``)."""
    debug = debug_of(request)
    seconds = float_param(request, "seconds", 10.0, 0.05, MAX_SECONDS)
    keys, samples, missing = await _collect(request, "Supervisor.profile_cpu", seconds, timeout=seconds + debug.deadline)
    by_machine = request.query_params.get("by") == "machine"
    combined = profile.merge_cpu(samples, keys if by_machine else None)
    title = f"CPU of {len(keys)} machine{'s' if len(keys) != 1 else ''}, {seconds:g} s"
    svg = profile.render_flamegraph_svg(combined, title, width=1400)
    machines = [key_of(m) for m in debug.b.machines() if m.addr and m.state.name != "STOPPED"]
    return debug.render(request, "flame.html", page="pprof", svg=Markup(svg), total=combined.total,
                        seconds=f"{seconds:g}", answered=len(keys), machine=request.query_params.get("machine", ""),
                        keys=machines, by_machine=by_machine, notes=[f"left out {m}" for m in missing])


async def heap(request: Request) -> Response:
    """``?format=text|pprof&machine=&by=machine``: live allocations merged by traceback."""
    fmt = choice_param(request, "format", ("text", "pprof"))
    keys, snapshots, missing = await _collect(request, "Supervisor.heap", timeout=HEAP_TIMEOUT)
    labels = keys if request.query_params.get("by") == "machine" else None
    merged = profile.merge_heap(snapshots, labels)
    if fmt == "pprof":
        return Response(profile.heap_to_pprof(merged), media_type="application/octet-stream",
                        headers=_headers(keys, missing, "heap.pb.gz"))
    return PlainTextResponse(_notes(missing) + profile.heap_to_text(merged), headers=_headers(keys, missing))


async def threads(request: Request) -> Response:
    """``?format=text|json&machine=``: every thread and task of every machine, grouped by machine."""
    debug = debug_of(request)
    fmt = choice_param(request, "format", ("text", "json"))
    machines = debug.machines(request)
    replies = await fan_out(machines, "Supervisor.threads", timeout=debug.deadline)
    dumps = {key_of(m): r.value if r.ok else str(r.error) for m, r in zip(machines, replies)}
    if fmt == "json":
        return json_response(dumps)
    return PlainTextResponse(profile.threads_to_text(dumps) if dumps else "no machines\n")


def routes(prefix: str) -> list[Route]:
    return [
        Route(prefix + "/pprof/profile", cpu),
        Route(prefix + "/pprof/flame", flame),
        Route(prefix + "/pprof/heap", heap),
        Route(prefix + "/pprof/threads", threads),
    ]
