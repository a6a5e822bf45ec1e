"""Tests of bigmachine.profile.flamegraph: well-formed SVG, proportions, escaping, pruning."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from bigmachine.profile import CpuSamples, render_flamegraph_svg, to_collapsed

_NS = {"svg": "http://www.w3.org/2000/svg"}


def _frames(svg: str) -> dict[str, ET.Element]:
    """Frame groups by name."""
    root = ET.fromstring(svg)
    return {g.get("data-name"): g for g in root.iterfind(".//svg:g", _NS)}


def _width(g: ET.Element) -> float:
    return float(g.find("svg:rect", _NS).get("width"))


def test_svg_parses_and_widths_follow_samples() -> None:
    collapsed = "main;burn_cpu_in_flame_test 75\nmain;cooler 25\n"
    svg = render_flamegraph_svg(collapsed, title="CPU of 2 machines")
    frames = _frames(svg)
    assert {"main", "burn_cpu_in_flame_test", "cooler"} <= set(frames)
    assert abs(_width(frames["burn_cpu_in_flame_test"]) / _width(frames["cooler"]) - 3) < 0.05
    tip = frames["burn_cpu_in_flame_test"].find("svg:title", _NS).text
    assert tip == "burn_cpu_in_flame_test (75 samples, 75.00%)"
    assert "CPU of 2 machines" in svg
    assert "http" not in svg.replace('xmlns="http://www.w3.org/2000/svg"', "")  # no CDN


def test_names_are_escaped_and_tiny_frames_dropped() -> None:
    collapsed = "main;<lambda> (a&b.py:1) 99990\nmain;rare_function 5\n"
    svg = render_flamegraph_svg(collapsed, title="<title & more>")
    frames = _frames(svg)  # parses: escaping worked
    assert "<lambda> (a&b.py:1)" in frames
    assert "rare_function" not in frames  # 0.005% of samples, under 0.1%


def test_colours_are_deterministic_per_function() -> None:
    one = _frames(render_flamegraph_svg("a;hot (x.py:1) 5\nb;hot (x.py:1) 5\n"))
    two = _frames(render_flamegraph_svg("hot (x.py:1) 1\n"))
    fill = two["hot (x.py:1)"].find("svg:rect", _NS).get("fill")
    assert one["hot (x.py:1)"].find("svg:rect", _NS).get("fill") == fill


def test_renders_cpu_samples_and_empty_input() -> None:
    hot = ("/src/s.py", 3, "burn_cpu_in_flame_test")
    samples = CpuSamples({(("/src/m.py", 1, "main"), hot): 4})
    svg = render_flamegraph_svg(samples)
    assert svg == render_flamegraph_svg(to_collapsed(samples))
    assert "burn_cpu_in_flame_test (/src/s.py:3)" in _frames(svg)
    ET.fromstring(render_flamegraph_svg(""))
