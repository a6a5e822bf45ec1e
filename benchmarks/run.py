"""Runs the benchmark suite: every scenario for every backend on this machine.

    python -m benchmarks.run [--backends bigmachine,ray,dask,multiprocessing]
                             [--scenarios cold_start,latency,...] [--repeat N] [--quick]
                             [--profile-missed]

Each (scenario, backend) pair runs in its own process (`benchmarks.run_one`) in
its own session, so one backend's crash, hang or leaked process cannot kill the
run or skew the next pair. Appends raw measurements to `results.jsonl` and
rewrites `RESULTS.md` in the output directory (default: this package's folder).
With --profile-missed, each scenario where bigmachine missed a target runs once
more under py-spy, and its top frames go into RESULTS.md (`profile_missed`).
"""

from __future__ import annotations

import argparse
import compileall
import dataclasses
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from typing import Any

from .backends import NAMES
from .measure import Measurement, describe, descendants, session_processes, wait_gone
from .profile_missed import profile
from .report import add_relative_efficiency, append_jsonl, host_info, now_iso, write_markdown
from .scenarios import SCENARIOS, Config, Scenario
from .targets import evaluate

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    cfg = Config.quick(args.repeat) if args.quick else Config(**_repeat(args.repeat))
    run = {
        "run_id": uuid.uuid4().hex[:12],
        "date": now_iso(),
        "host": host_info(),
        "command": " ".join(["python -m benchmarks.run", shlex.join(sys.argv[1:] if argv is None else argv)]).strip(),
        "quick": args.quick,
        "repeat": cfg.repeat,
    }
    started = time.perf_counter()
    _compile_bytecode()
    results, leftovers, sessions = [], [], []  # type: list[Measurement], list[str], list[int]
    for scenario in args.scenarios:
        for backend in _backends_of(SCENARIOS[scenario], args.backends):
            ms, left, sid = _run_pair(backend, scenario, cfg, args)
            results += ms
            leftovers += [f"{backend}/{scenario}: {p}" for p in left]
            sessions.append(sid)
    results += add_relative_efficiency(results)
    profiles = _profile_missed(results, cfg, args, sessions) if args.profile_missed else {}
    leftovers += _final_leftovers(sessions)
    _write(args.output_dir, results, run, leftovers, profiles)
    print(f"\n{len(results)} measurements in {time.perf_counter() - started:.0f} s; "
          f"wrote {os.path.join(args.output_dir, 'RESULTS.md')}")
    for p in leftovers:
        print(f"WARNING: leftover process: {p}", file=sys.stderr)


def _compile_bytecode() -> None:
    """Compiles bigmachine's and this package's bytecode first, as pip does when it installs a package.

    Ray and Dask were compiled when pip installed them; an editable install of bigmachine run with
    PYTHONDONTWRITEBYTECODE (or from a read-only tree) would otherwise compile every module from
    source in every process it starts, which adds tens of milliseconds to each cold start.
    """
    import bigmachine

    for package in (os.path.dirname(os.path.abspath(bigmachine.__file__)), HERE):
        compileall.compile_dir(package, quiet=1)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n")[0])
    parser.add_argument("--backends", type=_names(NAMES), default=NAMES,
                        help=f"comma-separated (default: {','.join(NAMES)})")
    parser.add_argument("--scenarios", type=_names(list(SCENARIOS)), default=list(SCENARIOS),
                        help=f"comma-separated (default: {','.join(SCENARIOS)})")
    parser.add_argument("--repeat", type=int, default=None,
                        help="measured repetitions per scenario (default 5; 2 with --quick)")
    parser.add_argument("--quick", action="store_true", help="scaled-down sizes, for a smoke test")
    parser.add_argument("--timeout", type=float, default=1200,
                        help="seconds allowed per (scenario, backend) pair (default 1200)")
    parser.add_argument("--profile-missed", action="store_true",
                        help="re-run each scenario where bigmachine missed a target under py-spy")
    parser.add_argument("--output-dir", default=HERE, help="where results.jsonl and RESULTS.md go")
    parser.add_argument("-v", "--verbose", action="store_true", help="show the pairs' own output")
    return parser.parse_args(argv)


def _names(allowed: list[str]):  # type: ignore[no-untyped-def]
    def parse(value: str) -> list[str]:
        names = [n.strip() for n in value.split(",") if n.strip()]
        bad = [n for n in names if n not in allowed]
        if bad:
            raise argparse.ArgumentTypeError(f"unknown {bad}; choose from {','.join(allowed)}")
        return names

    return parse


def _backends_of(scenario: Scenario, chosen: list[str]) -> list[str]:
    """The backends a scenario runs for: its own label once if it needs none, else those chosen it applies to."""
    if scenario.once_as is not None:
        return [scenario.once_as]
    return [b for b in chosen if scenario.only is None or b in scenario.only]


def _repeat(repeat: int | None) -> dict[str, Any]:
    return {} if repeat is None else {"repeat": repeat, "scale_repeat": min(repeat, 3)}


def _run_pair(backend: str, scenario: str, cfg: Config,
              args: argparse.Namespace) -> tuple[list[Measurement], list[str], int]:
    """Runs one pair in a child process; returns its measurements, leftovers and session id."""
    print(f"[{scenario}] {backend} ...", flush=True)
    out = _temp_file("bench-", ".jsonl")
    cmd, env = _pair_command(backend, scenario, out, cfg)
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True, text=True,
                            stdout=None if args.verbose else subprocess.PIPE,
                            stderr=None if args.verbose else subprocess.STDOUT)
    try:
        output, problem = proc.communicate(timeout=args.timeout)[0] or "", None
        if proc.returncode != 0:
            problem = f"exited with status {proc.returncode}"
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, problem = proc.communicate()[0] or "", f"timed out after {args.timeout:g} s"
    ms, left = _read(out, backend, scenario)
    os.unlink(out)
    if problem and not ms:
        ms = [Measurement(backend=backend, scenario=scenario, metric="(failed)", unit="",
                          error=f"{problem}: {output.strip()[-300:]}")]
    for m in ms:
        _echo(m)
    if problem or any(m.metric == "(failed)" for m in ms):
        print(f"    {problem or 'failed'}; its output ends:\n" + _indent(output[-3000:]), flush=True)
    print(f"    ({time.perf_counter() - t:.1f} s)", flush=True)
    return ms, left, proc.pid


def _pair_command(backend: str, scenario: str, out: str, cfg: Config) -> tuple[list[str], dict[str, str]]:
    """The command line and environment running one pair (`benchmarks.run_one`) from the repository root."""
    cmd = [sys.executable, "-m", "benchmarks.run_one", backend, scenario, out,
           json.dumps(dataclasses.asdict(cfg))]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))}
    return cmd, env


def _temp_file(prefix: str, suffix: str) -> str:
    fd, path = tempfile.mkstemp(prefix=prefix, suffix=suffix)
    os.close(fd)
    return path


def _profile_missed(results: list[Measurement], cfg: Config, args: argparse.Namespace,
                    sessions: list[int]) -> dict[str, list[str]]:
    """Markdown lines per scenario where bigmachine missed a target, from a re-run under py-spy."""
    missed = dict.fromkeys(v.row.scenario for _, verdicts in evaluate(results)
                           for v in verdicts if v.met is False)
    profiles = {}
    for scenario in missed:
        print(f"[{scenario}] bigmachine under py-spy (a target was missed) ...", flush=True)
        out, raw = _temp_file("bench-", ".jsonl"), _temp_file(f"bench-profile-{scenario}-", ".txt")
        cmd, env = _pair_command("bigmachine", scenario, out, cfg)
        profiles[scenario], sid = profile(cmd, env, ROOT, raw, args.timeout)
        os.unlink(out)
        sessions += [sid] if sid is not None else []
        print(f"    raw profile: {raw}", flush=True)
    return profiles


def _read(path: str, backend: str, scenario: str) -> tuple[list[Measurement], list[str]]:
    ms, left = [], []
    with open(path) as f:
        for line in f:
            row = json.loads(line)
            if "leftovers" in row:
                left = row["leftovers"]
            else:
                ms.append(Measurement.from_json(row))
    return ms, left


def _echo(m: Measurement) -> None:
    label = f"{m.metric}" + (f" [{m.variant}]" if m.variant else "")
    if m.error is not None:
        print(f"    {label}: ERROR {m.error}", flush=True)
        return
    p99 = m.extra.get("p99")
    tail = f", p99 {p99:.4g}" if p99 is not None else ""
    print(f"    {label}: median {m.median:.4g} {m.unit} "
          f"(min {min(m.values):.4g}, max {max(m.values):.4g}{tail})", flush=True)


def _indent(text: str) -> str:
    return "\n".join("      " + line for line in text.splitlines())


def _final_leftovers(sessions: list[int]) -> list[str]:
    """Processes still alive from any pair's session or below this process; they are killed."""
    procs = {p.pid: p for p in session_processes(sessions) + descendants()}
    alive = wait_gone(list(procs.values()), timeout=5)
    names = [describe(p) for p in alive]
    for p in alive:
        p.kill()
    return names


def _write(output_dir: str, results: list[Measurement], run: dict, leftovers: list[str],  # type: ignore[type-arg]
           profiles: dict[str, list[str]]) -> None:
    os.makedirs(output_dir, exist_ok=True)
    append_jsonl(os.path.join(output_dir, "results.jsonl"), results, run)
    titles = {name: s.title for name, s in SCENARIOS.items()}
    write_markdown(os.path.join(output_dir, "RESULTS.md"), results, run, titles, leftovers, profiles)


if __name__ == "__main__":
    main()
