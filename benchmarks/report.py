"""Writing results: raw JSON lines (appended) and RESULTS.md (rewritten per run)."""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import math
import os
import platform
import socket
from collections.abc import Mapping, Sequence
from typing import Any

from .measure import Measurement, median
from .targets import Verdict, evaluate, verdicts_for

__all__ = ["add_relative_efficiency", "append_jsonl", "host_info", "write_markdown"]

PACKAGES = ["bigmachine", "ray", "dask", "distributed", "uvicorn", "httptools", "uvloop"]


def host_info() -> dict[str, Any]:
    return {
        "hostname": socket.gethostname(),
        "cpus": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": {name: _version(name) for name in PACKAGES},
        "loadavg": [round(x, 2) for x in os.getloadavg()],
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        pass
    try:  # a source checkout that is not installed
        return str(getattr(__import__(name), "__version__", "source checkout"))
    except Exception:
        return "not installed"


def add_relative_efficiency(ms: list[Measurement]) -> list[Measurement]:
    """For each backend's bigpi efficiency, its ratio to multiprocessing's median in this run."""
    effs = [m for m in ms if m.scenario == "bigpi" and m.metric == "efficiency" and m.values]
    floor = next((median(m.values) for m in effs if m.backend == "multiprocessing"), None)
    if not floor:
        return []
    return [
        Measurement(backend=m.backend, scenario="bigpi", metric="efficiency / multiprocessing's",
                    unit="", better="higher", values=[v / floor for v in m.values])
        for m in effs
    ]


def append_jsonl(path: str, ms: Sequence[Measurement], run: dict[str, Any]) -> None:
    with open(path, "a") as f:
        for m in ms:
            row = {**m.to_json(), **_summary(m), **run}
            f.write(json.dumps(row) + "\n")


def _summary(m: Measurement) -> dict[str, float | None]:
    if not m.values:
        return {"median": None, "min": None, "max": None}
    return {"median": median(m.values), "min": min(m.values), "max": max(m.values)}


def write_markdown(path: str, ms: Sequence[Measurement], run: dict[str, Any],
                   titles: dict[str, str], leftovers: Sequence[str],
                   profiles: Mapping[str, Sequence[str]] | None = None) -> None:
    """RESULTS.md: the header, the targets, a table per scenario (then its profile, if any)."""
    lines = _header(run) + _targets(ms)
    for scenario, title in titles.items():
        rows = [m for m in ms if m.scenario == scenario]
        if rows:
            lines += ["", f"## {title}", "", *_table(rows, ms)]
        lines += (profiles or {}).get(scenario, [])
    if leftovers:
        lines += ["", "## Leftover processes", "", *[f"- `{p}`" for p in leftovers]]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def _header(run: dict[str, Any]) -> list[str]:
    host = run["host"]
    pkgs = ", ".join(f"{k} {v}" for k, v in host["packages"].items())
    return [
        "# Benchmark results",
        "",
        f"- Date: {run['date']}" + (" (quick run: scaled-down sizes)" if run["quick"] else ""),
        f"- Host: {host['cpus']} CPUs, {host['cpu_model']}; {host['platform']}",
        f"- Python {host['python']}",
        f"- Load average (1, 5, 15 min) when the run started: {host['loadavg']}"
        + (" — other work was running; expect skewed figures" if host["loadavg"][0] > 0.5 else ""),
        f"- Packages: {pkgs}",
        f"- Command: `{run['command']}`",
        f"- Repetitions per scenario: {run['repeat']} after a warm-up; median and min–max over them.",
        "- *vs bigmachine*: the backend's cost relative to bigmachine's on the same metric:",
        "  \"4.2x slower\" takes 4.2 times as long (or reaches 1/4.2 of the rate);",
        "  \"0.80x (faster)\" takes 0.8 times as long. Memory: \"more\"/\"less\".",
    ]


def _targets(ms: Sequence[Measurement]) -> list[str]:
    """A summary of bigmachine's targets: each figure, its reference, the ratio, met or not."""
    out = ["", "## bigmachine against its targets", "",
           "Ratios are to figures of this same run.", "",
           "| scenario | metric | variant | figure | reference | ratio | target | |",
           "|---|---|---|---|---|---|---|---|"]
    for target, verdicts in evaluate(ms):
        if not verdicts:
            variant = "" if target.variant == "*" else target.variant
            out.append(f"| {target.scenario} | {target.metric} | {variant} "
                       f"| no figure (failed or not run) | | | {target.describe()} | |")
        out += [_target_row(v) for v in verdicts]
    return out


def _target_row(v: Verdict) -> str:
    m, unit = v.row, f" {v.row.unit}" if v.row.unit else ""
    if v.target.versus is None:
        reference, ratio = "", ""
    elif v.reference is None:
        reference, ratio = "no reference in this run", ""
    else:
        reference, ratio = f"{v.target.versus.label} {_fmt(v.reference)}", f"{v.figure:.3g}x"
    verdict = "" if v.met is None else "met" if v.met else "**not met**"
    return (f"| {m.scenario} | {m.metric} | {m.variant} | {_fmt(m.median)}{unit} | {reference} "
            f"| {ratio} | {v.target.describe(m.unit)} | {verdict} |")


def _table(rows: Sequence[Measurement], run: Sequence[Measurement]) -> list[str]:
    out = [
        "| backend | variant | metric | median | spread (min–max) | p99 | vs bigmachine | target | notes |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for m in rows:
        out.append("| " + " | ".join(_cells(m, rows, run)) + " |")
    return out


def _cells(m: Measurement, rows: Sequence[Measurement], run: Sequence[Measurement]) -> list[str]:
    if m.error is not None:
        return [m.backend, m.variant, m.metric, "error", "", "", "", "", _escape(m.error)]
    unit = f" {m.unit}" if m.unit else ""
    p99 = m.extra.get("p99")
    return [
        m.backend,
        m.variant,
        m.metric,
        f"{_fmt(m.median)}{unit}",
        f"{_fmt(min(m.values))}–{_fmt(max(m.values))}",
        f"{_fmt(p99)}{unit}" if p99 is not None else "",
        _versus(m, rows),
        "; ".join(str(v) for v in verdicts_for(m, run)),
        _escape(str(m.extra.get("note", ""))),
    ]


def _versus(m: Measurement, rows: Sequence[Measurement]) -> str:
    ref = _reference(m, rows)
    if ref is None or m.backend == "bigmachine" or not m.values or m.extra.get("versus") is False:
        return ""
    a, b = m.median, ref.median
    if not (a > 0 and b > 0 and math.isfinite(a) and math.isfinite(b)):
        return ""
    ratio = a / b if m.better == "lower" else b / a
    worse, better = ("more", "less") if m.unit == "MiB" else ("slower", "faster")
    return f"{ratio:.1f}x {worse}" if ratio >= 1 else f"{ratio:.2f}x ({better})"


def _reference(m: Measurement, rows: Sequence[Measurement]) -> Measurement | None:
    """bigmachine's row for the same metric: same variant if it has one, else its first."""
    same = [r for r in rows if r.backend == "bigmachine" and r.metric == m.metric and r.values]
    return next((r for r in same if r.variant == m.variant), same[0] if same else None)


def _fmt(v: float | None) -> str:
    if v is None or not math.isfinite(v):
        return "–"
    a = abs(v)
    if a >= 100:
        return f"{v:,.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.3g}"


def _escape(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
