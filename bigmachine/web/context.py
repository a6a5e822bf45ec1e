"""What every debug route needs: the session's debug state, parameter parsing, JSON replies, templates.

Kept apart from ``app`` (which assembles the routes) so that the route modules import it
and ``app`` imports them, with no circle between them.
"""

from __future__ import annotations

import datetime
import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from ..state import RUNNING, STOPPED
from . import charts
from .cluster import SessionView, fan_out
from .history import History

if TYPE_CHECKING:
    from ..machine import Machine

__all__ = ["DEFAULT_DEADLINE", "PREFIX", "REFRESH", "Debug", "choice_param", "debug_of", "float_param", "int_param",
           "json_response"]

PREFIX = "/debug/bigmachine"
TEMPLATES = Path(__file__).with_name("templates")
DEFAULT_DEADLINE = 2.0
REFRESH = 5  # seconds between reloads of the status pages


class Debug:
    """What the handlers share: the session, the per-machine deadline, templates, resource history, profiles running."""

    def __init__(self, session: SessionView, deadline: float) -> None:
        self.session = session
        self.deadline = deadline
        self.history = History()
        self.templates = _environment()
        self.profiling: dict[str, float] = {}  # machine key -> when its CPU profile ends (time.monotonic)

    def start_history(self) -> None:
        """Starts collecting the resource history on the running loop (once)."""
        self.history.start(self.session, self.deadline)

    def base(self, request: Request) -> str:
        """The URL path of the debug pages, wherever the app is mounted."""
        return str(request.scope.get("root_path", "")) + PREFIX

    def render(self, request: Request, name: str, *, page: str = "", refresh: int | None = None,
               **context: Any) -> HTMLResponse:
        if refresh is not None and request.query_params.get("refresh") is not None:
            refresh = int_param(request, "refresh", refresh, 0, 3600)
        html = self.templates.get_template(name).render(
            base=self.base(request), origin=f"{request.url.scheme}://{request.url.netloc}", page=page,
            refresh=refresh or None, now=time.time(), deadline=self.deadline,
            session={"name": self.session.name, "system": self.session.system, "pid": os.getpid(),
                     "cost": self.session.cost()}, **context)
        return HTMLResponse(html)

    def machines(self, request: Request, *, everyone: bool = False) -> list[Machine]:
        """The machine named by ``?machine=`` (404 if none), else every machine (not stopped, unless ``everyone``)."""
        key = request.query_params.get("machine")
        if key:
            machine = self.session.find(key)
            if machine is None:
                raise HTTPException(404, f"no machine {key!r} in session {self.session.name}; "
                                         f"see {self.base(request)}/machines\n")
            return [machine]
        return [m for m in self.session.machines() if everyone or m.state != STOPPED]

    async def rows(self, machines: list[Machine]) -> list[dict[str, Any]]:
        """Each machine's summary plus its supervisor's status (or why there is none)."""
        replies = await fan_out(machines, "Supervisor.status", timeout=self.deadline)
        now = time.time()
        rows = []
        for machine, reply in zip(machines, replies):
            row = self.session.summary(machine, now)
            row["status"] = reply.value if reply.ok else None
            row["status_error"] = reply.error
            row["slow"] = reply.slow
            key = row["key"]
            row["history"] = {"period": self.history.period, "cpu_percent": self.history.cpu(key),
                              "rss": self.history.rss(key), "keepalive": self.history.keepalive(key)}
            rows.append(row)
        return rows


def debug_of(request: Request) -> Debug:
    """The app's shared state; the first request starts the resource history if the server did not."""
    debug: Debug = request.app.state.debug
    debug.start_history()
    return debug


def float_param(request: Request, name: str, default: float, low: float, high: float) -> float:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise HTTPException(400, f"{name} must be a number, not {raw!r}\n") from None
    if not low <= value <= high:
        raise HTTPException(400, f"{name} must be between {low:g} and {high:g}, not {raw}\n")
    return value


def int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    return int(float_param(request, name, default, low, high))


def choice_param(request: Request, name: str, choices: tuple[str, ...]) -> str:
    value = request.query_params.get(name) or choices[0]
    if value not in choices:
        raise HTTPException(400, f"{name} must be one of {', '.join(choices)}, not {value!r}\n")
    return value


def json_response(value: Any, status: int = 200) -> Response:
    body = json.dumps(value, indent=2, default=str, allow_nan=False) + "\n"
    return Response(body, status, media_type="application/json")


# ------------------------------------------------------------------ templates


def _bytes(n: float | None) -> str:
    if n is None:
        return "—"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""  # not reached


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 0.001:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds:.3g} s"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 60:
        return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d {hours}h"
    return f"{hours}h {minutes}m" if hours else f"{minutes}m {secs}s"


def _clock(when: float | None) -> str:
    if not when:
        return "—"
    moment = datetime.datetime.fromtimestamp(when)
    if moment.date() == datetime.date.today():
        return moment.strftime("%H:%M:%S")
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def _pretty(value: Any) -> str:
    """JSON on one line when short, indented otherwise."""
    flat = json.dumps(value, default=str)
    return flat if len(flat) <= 100 else json.dumps(value, indent=2, default=str)


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(
        bytes=_bytes, ms=_ms, duration=_duration, clock=_clock, count=lambda n: f"{int(n or 0):,}",
        seconds=lambda s: f"{s:g} s", tojson_pretty=_pretty,
    )
    env.globals.update(RUNNING=RUNNING, sparkline=charts.sparkline, bar=charts.bar, fmt_ms=lambda v: f"{v:.3g} ms",
                       fmt_pct=lambda v: f"{v:.0f}%", fmt_bytes=_bytes)
    return env
