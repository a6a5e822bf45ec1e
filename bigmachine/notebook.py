"""Rich views of a session and its machines in Jupyter: the HTML behind ``B._repr_html_`` and ``Machine._repr_html_``.

Self-contained HTML (inline styles, no script), so it renders in JupyterLab, classic
Notebook, VS Code and nbconvert's HTML alike.
"""

from __future__ import annotations

import html
import time
from typing import TYPE_CHECKING

from .state import RUNNING, STARTING, STOPPED, UNSTARTED

if TYPE_CHECKING:
    from .machine import Machine
    from .session import B

__all__ = ["machine_html", "session_html"]

_COLORS = {UNSTARTED: "#6b7280", STARTING: "#b45309", RUNNING: "#15803d", STOPPED: "#b91c1c"}
_TABLE = "border-collapse:collapse;font-size:13px;margin-top:4px"
_CELL = "padding:2px 10px;text-align:left;border-bottom:1px solid #e5e7eb"


def session_html(b: B) -> str:
    """The session's name and system, a table of its machines and the debug server's link."""
    machines = b.machines()
    running = sum(1 for m in machines if m.state == RUNNING)
    shut_down = b.is_shut_down
    debug = (f' · <a href="{html.escape(b.debug_url)}/debug/bigmachine/status" target="_blank">debug server</a>'
             if b.debug_url and not shut_down else "")
    head = (f"<b>bigmachine</b> session <code>{html.escape(b.name)}</code> on "
            f"<code>{html.escape(repr(b.system))}</code> · {len(machines)} machines, {running} running{debug}")
    if shut_down:
        head += " · <i>shut down</i>"
    return f'<div class="bigmachine-session">{head}{_table(machines)}</div>'


def machine_html(m: Machine) -> str:
    """One machine as a one-row table: state pill, address, uptime, calls."""
    return f'<div class="bigmachine-machine">{_table([m])}</div>'


def _table(machines: list[Machine]) -> str:
    if not machines:
        return "<div><i>no machines yet: b.start(n, bigmachine.Services(...))</i></div>"
    header = "".join(f'<th style="{_CELL}">{name}</th>' for name in ("machine", "state", "address", "uptime", "calls"))
    rows = "".join(_row(m) for m in machines)
    return f'<table style="{_TABLE}"><thead><tr>{header}</tr></thead><tbody>{rows}</tbody></table>'


def _row(m: Machine) -> str:
    state = m.state
    pill = (f'<span style="background:{_COLORS[state]};color:#fff;border-radius:8px;padding:0 7px;'
            f'font-size:11px" title="{html.escape(str(m.err or ""))}">{state}</span>')
    error = f'<br><small style="color:#b91c1c">{html.escape(str(m.err))}</small>' if m.err is not None else ""
    cells = (html.escape(m.name or "dialled"), pill + error, f"<code>{html.escape(m.addr or '(not yet known)')}</code>",
             _uptime(m), _calls(m))
    return "<tr>" + "".join(f'<td style="{_CELL}">{cell}</td>' for cell in cells) + "</tr>"


def _uptime(m: Machine) -> str:
    if m.state < RUNNING:  # not yet up
        return "–"
    seconds = int((m.stopped or time.time()) - m.started)
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {seconds:02d}s"


def _calls(m: Machine) -> str:
    """Calls made to the machine's services (not the supervisor's), and how many failed."""
    rows = [row for method, row in m.rpc_stats.snapshot().items() if not method.startswith("Supervisor.")]
    calls, errors = sum(r["calls"] for r in rows), sum(r["errors"] for r in rows)
    return f"{calls}" + (f' <span style="color:#b91c1c">({errors} failed)</span>' if errors else "")
