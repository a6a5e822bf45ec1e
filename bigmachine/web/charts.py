"""Small inline SVG charts rendered on the server: the pages need no script and no CDN."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from html import escape

from markupsafe import Markup

__all__ = ["bar", "sparkline"]

_BLUE, _GREEN, _AMBER, _RED = "#2563eb", "#16a34a", "#d97706", "#dc2626"


def sparkline(values: Sequence[float], *, width: int = 120, height: int = 28, color: str = _BLUE,
              fmt: Callable[[float], str] = lambda v: f"{v:g}", label: str = "") -> Markup:
    """A line of ``values`` (oldest first) with a shaded area and the newest point marked."""
    if not values:
        return Markup(f'<svg class="spark empty" width="{width}" height="{height}" role="img" '
                      f'aria-label="no data yet"><line x1="2" x2="{width - 2}" y1="{height / 2}" '
                      f'y2="{height / 2}" stroke="#cbd5e1" stroke-dasharray="3 3"/></svg>')
    low, high = min(values), max(values)
    top = high if high > low else (2 * high or 1.0)  # a flat series sits mid-height
    bottom = low if high > low else 0.0
    pad = 3.0
    step = (width - 2 * pad) / max(len(values) - 1, 1)

    def y(v: float) -> float:
        return height - pad - (v - bottom) / (top - bottom) * (height - 2 * pad) if top > bottom else height / 2

    points = [(pad + i * step, y(v)) for i, v in enumerate(values)]
    if len(points) == 1:
        points = [(pad, points[0][1]), (width - pad, points[0][1])]
    line = " ".join(f"{px:.1f},{py:.1f}" for px, py in points)
    area = f"{points[0][0]:.1f},{height - pad:.1f} {line} {points[-1][0]:.1f},{height - pad:.1f}"
    last_x, last_y = points[-1]
    title = escape(f"{label + ': ' if label else ''}now {fmt(values[-1])}, min {fmt(low)}, max {fmt(high)} "
                   f"({len(values)} point{'s' if len(values) != 1 else ''})")
    return Markup(
        f'<svg class="spark" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{title}"><title>{title}</title>'
        f'<polygon points="{area}" fill="{color}" fill-opacity="0.12"/>'
        f'<polyline points="{line}" fill="none" stroke="{color}" stroke-width="1.6" '
        f'stroke-linejoin="round" stroke-linecap="round"/>'
        f'<circle cx="{last_x:.1f}" cy="{last_y:.1f}" r="2.4" fill="{color}"/></svg>'
    )


def bar(fraction: float | None, *, width: int = 90, height: int = 8, label: str = "") -> Markup:
    """A horizontal gauge of ``fraction`` (0..1), green to amber to red as it fills."""
    if fraction is None:
        return Markup("")
    fraction = min(max(fraction, 0.0), 1.0)
    color = _GREEN if fraction < 0.7 else _AMBER if fraction < 0.9 else _RED
    title = escape(label or f"{100 * fraction:.0f}%")
    return Markup(
        f'<svg class="bar" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{title}"><title>{title}</title>'
        f'<rect width="{width}" height="{height}" rx="{height / 2}" fill="#e2e8f0"/>'
        f'<rect width="{max(fraction * width, height if fraction else 0):.1f}" height="{height}" '
        f'rx="{height / 2}" fill="{color}"/></svg>'
    )
