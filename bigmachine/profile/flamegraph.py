"""A self-contained SVG flame graph (no JavaScript library, no CDN) from folded stacks.

Widths are proportional to samples, the root is at the bottom, siblings are sorted
by name (as flamegraph.pl does), frames narrower than `min_fraction` of the total are
dropped, and every frame has a `<title>` tooltip. A small inline script zooms into
a frame on click (click the root to reset); without script the graph still reads.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from html import escape
from typing import Union

from .cpu import CpuSamples, to_collapsed

__all__ = ["render_flamegraph_svg"]

_FRAME_HEIGHT = 16
_FONT_SIZE = 11
_CHAR_WIDTH = _FONT_SIZE * 0.59  # average glyph width of a sans-serif font, in px
_PAD_TOP = 32
_PAD_SIDE = 10

# Zooms the graph of the <svg> holding this script: a clicked frame fills the width,
# its ancestors span it, everything else hides. Written for `data-*` below.
_ZOOM_SCRIPT = """
(function () {
  var s = document.currentScript;
  var svg = s && s.closest ? s.closest("svg") : document.documentElement;
  if (!svg) return;
  var W = +svg.getAttribute("data-width"), P = +svg.getAttribute("data-pad");
  var cw = +svg.getAttribute("data-charw");
  function fit(g, x, w) {
    var r = g.querySelector("rect"), t = g.querySelector("text");
    r.setAttribute("x", P + x * W); r.setAttribute("width", Math.max(0, w * W - 0.5));
    var name = g.getAttribute("data-name"), n = Math.floor((w * W - 6) / cw);
    t.setAttribute("x", P + x * W + 3);
    t.textContent = n >= name.length ? name : (n > 2 ? name.slice(0, n - 2) + ".." : "");
  }
  svg.addEventListener("click", function (ev) {
    var g = ev.target.closest ? ev.target.closest("g.f") : null;
    if (!g) return;
    var x0 = +g.getAttribute("data-x"), w0 = +g.getAttribute("data-w");
    var d0 = +g.getAttribute("data-d");
    svg.querySelectorAll("g.f").forEach(function (f) {
      var x = +f.getAttribute("data-x"), w = +f.getAttribute("data-w");
      var d = +f.getAttribute("data-d"), inside = x >= x0 - 1e-9 && x + w <= x0 + w0 + 1e-9;
      var above = d < d0 && x <= x0 + 1e-9 && x + w >= x0 + w0 - 1e-9;
      f.style.display = (inside && d >= d0) || above ? "" : "none";
      if (above) fit(f, 0, 1); else if (inside) fit(f, (x - x0) / w0, w / w0);
    });
  });
})();
"""


@dataclass
class _Node:
    """A frame in the merged call tree; `value` counts samples through it."""

    name: str
    value: int = 0
    children: dict[str, _Node] = field(default_factory=dict)


def _parse_collapsed(text: str) -> _Node:
    """The call tree of folded `a;b;c count` lines; malformed lines are skipped."""
    root = _Node("all")
    for line in text.splitlines():
        stack, _, count = line.rstrip().rpartition(" ")
        try:
            n = int(count)
        except ValueError:
            continue
        if not stack or n <= 0:
            continue
        root.value += n
        node = root
        for name in stack.split(";"):
            node = node.children.setdefault(name, _Node(name))
            node.value += n
    return root


def _colour(name: str) -> str:
    """A warm colour that depends only on the function's name (not on hash seeds)."""
    func = name.split(" (", 1)[0]
    h = zlib.crc32(func.encode("utf-8", "replace"))
    return f"rgb({205 + h % 50},{(h >> 8) % 180 + 20},{(h >> 16) % 55})"


def _label(name: str, width_px: float) -> str:
    """The part of a frame's name that fits its box."""
    fits = int((width_px - 6) / _CHAR_WIDTH)
    if fits >= len(name):
        return name
    return name[: fits - 2] + ".." if fits > 2 else ""


def render_flamegraph_svg(
    collapsed_or_samples: Union[str, CpuSamples],
    title: str = "Flame graph",
    *,
    width: int = 1200,
    min_fraction: float = 0.001,
) -> str:
    """An SVG flame graph of folded stacks (or of `CpuSamples`), root at the bottom."""
    text = (
        to_collapsed(collapsed_or_samples)
        if isinstance(collapsed_or_samples, CpuSamples)
        else collapsed_or_samples
    )
    root = _parse_collapsed(text)
    total = max(root.value, 1)
    inner = width - 2 * _PAD_SIDE
    # (node, depth, x fraction), laid out depth-first; children sorted by name.
    boxes: list[tuple[_Node, int, float]] = []
    todo = [(root, 0, 0.0)]
    while todo:
        node, depth, x = todo.pop()
        boxes.append((node, depth, x))
        child_x = x
        placed = []
        for name in sorted(node.children):
            child = node.children[name]
            if child.value / total >= min_fraction:
                placed.append((child, depth + 1, child_x))
            child_x += child.value / total
        todo.extend(reversed(placed))
    depth_max = max((d for _, d, _ in boxes), default=0)
    height = _PAD_TOP + (depth_max + 1) * _FRAME_HEIGHT + _PAD_SIDE
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="flamegraph" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" data-width="{inner}" '
        f'data-pad="{_PAD_SIDE}" data-charw="{_CHAR_WIDTH:.2f}" '
        f'font-family="Verdana, sans-serif" font-size="{_FONT_SIZE}">',
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="#f8f8f8"/>',
        f'<text x="{width / 2:.1f}" y="20" text-anchor="middle" font-size="{_FONT_SIZE + 4}">'
        f"{escape(title)}</text>",
    ]
    for node, depth, x in boxes:
        w = node.value / total
        px_x, px_w = _PAD_SIDE + x * inner, w * inner
        y = height - _PAD_SIDE - (depth + 1) * _FRAME_HEIGHT
        name = node.name if depth else f"all ({root.value} samples)"
        tip = f"{name} ({node.value} samples, {100 * w:.2f}%)"
        out.append(
            f'<g class="f" style="cursor:pointer" data-x="{x:.6f}" data-w="{w:.6f}" '
            f'data-d="{depth}" data-name="{escape(name)}">'
            f"<title>{escape(tip)}</title>"
            f'<rect x="{px_x:.2f}" y="{y}" width="{max(px_w - 0.5, 0):.2f}" '
            f'height="{_FRAME_HEIGHT - 1}" rx="2" '
            f'fill="{_colour(node.name) if depth else "rgb(200,200,200)"}"/>'
            f'<text x="{px_x + 3:.2f}" y="{y + _FRAME_HEIGHT - 4}">'
            f"{escape(_label(name, px_w))}</text></g>"
        )
    out.append(f"<script><![CDATA[{_ZOOM_SCRIPT}]]></script>")
    out.append("</svg>")
    return "\n".join(out)
