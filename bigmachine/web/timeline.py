"""The live call timeline: one lane per machine, a bar per call over the last minute, as SVG.

Drawn from the driver's own call records (``bigmachine.rpc.trace``): a bar from a
call's start to its end (to now while it runs, so in-flight calls grow), coloured by
method, failed calls red. Pages embed the SVG, so it reads without JavaScript; a
small script on the page fetches ``/timeline`` again every second to move it on.
The supervisor's own calls (keepalives, status) are left out: they are not work.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Sequence
from html import escape

from markupsafe import Markup
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..rpc import trace as calltrace
from .context import debug_of, float_param
from .cluster import key_of

__all__ = ["FAILED", "Lane", "color", "lanes_of", "legend", "render", "routes"]

FAILED = "#dc2626"
_PALETTE = ("#2563eb", "#16a34a", "#9333ea", "#0891b2", "#d97706", "#db2777", "#4f46e5", "#65a30d",
            "#0d9488", "#a16207")
_LABEL, _LANE, _AXIS, _PAD = 190, 22, 18, 8
_MIN_BAR = 1.5  # px: a call of a few ms still shows

Lane = tuple[str, Sequence[calltrace.Call]]
"""A machine's key and its recorded calls."""


def color(method: str) -> str:
    """A method's colour: stable across pages and refreshes, never the failure red."""
    return _PALETTE[zlib.crc32(method.encode()) % len(_PALETTE)]


def _label(text: str, limit: int = 28) -> str:
    return text if len(text) <= limit else "…" + text[-(limit - 1):]


def render(lanes: Sequence[Lane], *, now: float | None = None, seconds: float = 60.0, width: int = 1200) -> Markup:
    """An SVG of each lane's calls over the last ``seconds``; scales to its container's width."""
    now = time.time() if now is None else now
    begin = now - seconds
    plot = width - _LABEL - _PAD
    height = _AXIS + max(len(lanes), 1) * _LANE + _PAD

    def x(when: float) -> float:
        return _LABEL + (min(max(when, begin), now) - begin) / seconds * plot

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="timeline" viewBox="0 0 {width} {height}" '
           f'width="100%" role="img" aria-label="calls of the last {seconds:g} s" data-now="{now:.3f}" '
           f'data-seconds="{seconds:g}" font-family="system-ui, sans-serif" font-size="11">']
    for tick in range(0, int(seconds) + 1, 10 if seconds >= 30 else 5):
        tx = x(now - seconds + tick)
        last = tick == int(seconds)
        label = "now" if last else f"-{seconds - tick:g} s"
        out.append(f'<line x1="{tx:.1f}" x2="{tx:.1f}" y1="{_AXIS - 4}" y2="{height - _PAD}" stroke="#e2e8f0"/>'
                   f'<text x="{tx:.1f}" y="{_AXIS - 6}" text-anchor="{"end" if last else "middle"}" '
                   f'fill="#64748b">{label}</text>')
    if not lanes:
        out.append(f'<text x="{_LABEL}" y="{_AXIS + 15}" fill="#64748b">no machines</text>')
    for i, (key, calls) in enumerate(lanes):
        top = _AXIS + i * _LANE
        out.append(f'<g class="lane" data-machine="{escape(key)}"><title>{escape(key)}</title>'
                   f'<rect x="{_LABEL}" y="{top + 2}" width="{plot}" height="{_LANE - 4}" fill="#f8fafc"/>'
                   f'<text x="{_LABEL - 6}" y="{top + _LANE / 2 + 4}" text-anchor="end" fill="#334155">'
                   f'{escape(_label(key))}</text>')
        for start, end, method, failed in calls:
            if method.startswith("Supervisor.") or (end is not None and end < begin):
                continue
            running = end is None
            left, right = x(start), x(now if running else end)
            took = (now if running else end) - start
            fill = FAILED if failed else color(method)
            state = "running" if running else "failed" if failed else "done"
            out.append(f'<rect class="call {state}" x="{left:.1f}" y="{top + 4}" width="{max(right - left, _MIN_BAR):.1f}" '
                       f'height="{_LANE - 8}" rx="2" fill="{fill}" fill-opacity="{0.6 if running else 0.9}" '
                       f'data-method="{escape(method)}" data-seconds="{took:.3f}">'
                       f'<title>{escape(method)}: {took * 1000:.0f} ms{" so far" if running else ""}'
                       f'{" (failed)" if failed else ""}</title></rect>')
        out.append("</g>")
    out.append("</svg>")
    return Markup("".join(out))


def legend(lanes: Sequence[Lane]) -> list[tuple[str, str]]:
    """``(method, colour)`` of every method drawn, for the page's key."""
    methods = sorted({c[2] for _, calls in lanes for c in calls if not c[2].startswith("Supervisor.")})
    return [(m, color(m)) for m in methods]


def lanes_of(request: Request, seconds: float) -> list[Lane]:
    """The lanes a page shows: ``?machine=`` alone, else every machine with an address."""
    debug = debug_of(request)
    since = time.time() - seconds
    machines = debug.machines(request, everyone=True)
    return [(key_of(m), calltrace.calls(m, since)) for m in machines if m.addr]


async def timeline(request: Request) -> Response:
    """``?seconds=60&machine=``: the timeline as ``image/svg+xml`` (what pages fetch to refresh it)."""
    seconds = float_param(request, "seconds", 60.0, 5.0, 600.0)
    svg = render(lanes_of(request, seconds), seconds=seconds)
    return Response(str(svg), media_type="image/svg+xml", headers={"Cache-Control": "no-store"})


def routes(prefix: str) -> list[Route]:
    return [Route(prefix + "/timeline", timeline)]
