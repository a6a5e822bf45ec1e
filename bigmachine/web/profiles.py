"""Profiles of the whole cluster: CPU (pstats, text, folded, pprof, flame graph), heap and threads.

Each is collected on every machine at once (``?machine=`` for one) and merged here; a
machine that does not answer is left out and named in the ``X-Bigmachine-Missing``
header (and at the top of text formats).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

from markupsafe import Markup
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from .. import profile
from ..state import STOPPED
from .context import choice_param, debug_of, float_param, int_param, json_response
from .cluster import fan_out, key_of

__all__ = ["routes"]

CPU_FORMATS = ("pstats", "text", "collapsed", "pprof")
SLICE = 1.0  # seconds a machine samples per call: a client that hangs up stops its samplers within one slice
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


@dataclass
class _Cpu:
    """What a CPU profile request asks for."""

    seconds: float
    mode: str
    threads: str

    @classmethod
    def of(cls, request: Request, default_seconds: float) -> _Cpu:
        seconds = float_param(request, "seconds", default_seconds, 0.05, profile.MAX_SECONDS)
        return cls(seconds, choice_param(request, "mode", profile.MODES), choice_param(request, "threads", profile.THREADS))

    def describe(self) -> str:
        return f"{self.seconds:g} s, mode={self.mode}, threads={self.threads}"


async def _sample(request: Request, ask: _Cpu) -> tuple[list[str], list[profile.CpuSamples], list[str]]:
    """Each selected machine's CPU samples over ``ask.seconds``, taken a slice at a time (see ``SLICE``).

    One profile per machine at a time: a machine already being profiled gets 429 with
    Retry-After. A client that hangs up stops the sampling after the current slice.
    """
    debug = debug_of(request)
    machines = debug.machines(request)
    now = time.monotonic()
    busy = [debug.profiling[key_of(m)] for m in machines if debug.profiling.get(key_of(m), 0) > now]
    if busy:
        wait = math.ceil(max(busy) - now)
        raise HTTPException(429, f"a CPU profile of {len(busy)} of these machines is already being taken; "
                                 f"retry in {wait} s\n", headers={"Retry-After": str(wait)})
    keys = [key_of(m) for m in machines]
    for key in keys:
        debug.profiling[key] = now + ask.seconds + debug.deadline
    parts: dict[str, list[profile.CpuSamples]] = {key: [] for key in keys}
    missing: dict[str, str] = {}
    try:
        left = ask.seconds
        while left > 0 and machines and not await request.is_disconnected():
            piece = min(SLICE, left)
            left -= piece
            replies = await fan_out(machines, "Supervisor.profile_cpu", piece, 0.005, ask.mode, ask.threads,
                                    timeout=piece + debug.deadline)
            for machine, reply in zip(machines, replies):
                if reply.ok:
                    parts[key_of(machine)].append(reply.value)
                else:
                    missing[key_of(machine)] = str(reply.error)
            machines = [m for m in machines if key_of(m) not in missing]
    finally:
        for key in keys:
            debug.profiling.pop(key, None)
    answered = [key for key in keys if parts[key] and key not in missing]
    notes = [f"{key}: {why}" for key, why in missing.items()]
    if not answered:
        raise HTTPException(503, f"no machine answered: {'; '.join(notes) or 'there are no machines'}\n")
    return answered, [profile.join_cpu(parts[key]) for key in answered], notes


async def cpu(request: Request) -> Response:
    """``?seconds=30&format=pstats|text|collapsed|pprof&mode=cpu|wall&threads=service|server|all&machine=&by=machine``."""
    ask = _Cpu.of(request, 30.0)
    fmt = choice_param(request, "format", CPU_FORMATS)
    by_machine = request.query_params.get("by") == "machine"
    keys, samples, missing = await _sample(request, ask)
    headers = _headers(keys, missing)
    combined = profile.merge_cpu(samples, keys if by_machine else None)
    if fmt == "pstats":
        # Merged with pstats' own Stats.add; by=machine: one root function per machine.
        merged = (profile.to_pstats(combined) if by_machine
                  else profile.merge_pstats(profile.to_pstats(s) for s in samples))
        return Response(merged, media_type="application/octet-stream", headers=_headers(keys, missing, "cpu.pstats"))
    if fmt == "text":
        plural = "s" if len(keys) != 1 else ""
        head = (f"CPU profile of {len(keys)} machine{plural} over {ask.describe()}: "
                f"{combined.total} samples of {combined.interval * 1000:g} ms ({', '.join(keys)})\n{_notes(missing)}")
        if not by_machine:
            return PlainTextResponse(head + profile.to_text(profile.to_pstats(combined)), headers=headers)
        sections = [f"\n=== {key}: {one.total} samples\n{profile.to_text(profile.to_pstats(one))}"
                    for key, one in zip(keys, samples)]
        return PlainTextResponse(head + "".join(sections), headers=headers)
    if fmt == "collapsed":
        return PlainTextResponse(profile.to_collapsed(combined), headers=headers)
    return Response(profile.cpu_to_pprof(combined), media_type="application/octet-stream",
                    headers=_headers(keys, missing, "cpu.pb.gz"))


async def flame(request: Request) -> Response:
    """A flame graph page of a CPU profile (``?seconds=10&mode=&threads=&machine=&by=machine``)."""
    debug = debug_of(request)
    ask = _Cpu.of(request, 10.0)
    keys, samples, missing = await _sample(request, ask)
    by_machine = request.query_params.get("by") == "machine"
    combined = profile.merge_cpu(samples, keys if by_machine else None)
    title = f"CPU of {len(keys)} machine{'s' if len(keys) != 1 else ''}, {ask.describe()}"
    svg = profile.render_flamegraph_svg(combined, title, width=1400)
    machines = [key_of(m) for m in debug.session.machines() if m.addr and m.state != STOPPED]
    return debug.render(request, "flame.html", page="pprof", svg=Markup(svg), total=combined.total,
                        seconds=f"{ask.seconds:g}", answered=len(keys), machine=request.query_params.get("machine", ""),
                        keys=machines, by_machine=by_machine, notes=[f"left out {m}" for m in missing],
                        mode=ask.mode, threads=ask.threads)


async def heap(request: Request) -> Response:
    """``?format=text|pprof&frames=N&rate=BYTES&machine=&by=machine``: live allocations merged by traceback.

    Without ``frames`` or ``rate``, each machine uses its tracer's defaults (``profile.heap.FRAMES``, ``RATE``).
    """
    fmt = choice_param(request, "format", ("text", "pprof"))
    frames = int_param(request, "frames", 0, 1, 100) or None
    rate = int_param(request, "rate", 0, 1, 1 << 40) or None
    keys, snapshots, missing = await _collect(request, "Supervisor.heap", frames, 1000, rate, timeout=HEAP_TIMEOUT)
    labels = keys if request.query_params.get("by") == "machine" else None
    merged = profile.merge_heap(snapshots, labels)
    # Tracing slows the machines down: every answer says so (the text also at its top).
    tracing = {"X-Bigmachine-Heap-Tracing": profile.tracing_note(merged).removeprefix("note: ")}
    if fmt == "pprof":
        return Response(profile.heap_to_pprof(merged), media_type="application/octet-stream",
                        headers={**_headers(keys, missing, "heap.pb.gz"), **tracing})
    return PlainTextResponse(_notes(missing) + profile.heap_to_text(merged), headers={**_headers(keys, missing), **tracing})


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
