"""Profiles of scenarios that missed a target: `run.py --profile-missed` re-runs each under py-spy.

py-spy samples the scenario's process (the driver) and every process below it (the
machines) while the scenario runs again, counting on-CPU samples only; the top
frames by self time (the innermost frame of each sample) go into RESULTS.md under
the scenario, with the command that produced them. py-spy counts a sample when it
judges the thread active, which on a loaded host includes threads woken but waiting
for a CPU; frames in C (uvloop, the ssl module) show as the Python frame calling them.
"""

from __future__ import annotations

import collections
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence

__all__ = ["profile", "py_spy"]

RATE = 100  # samples per second, py-spy's default
TOP = 12  # frames shown per process group
_PROCESS = re.compile(r'process (\d+):"(.*?)";', re.S)
_RECORD = re.compile(r"(.*) (\d+)", re.S)


def py_spy() -> str | None:
    """The py-spy executable next to this interpreter, else on PATH; None when it is not installed."""
    beside = os.path.join(os.path.dirname(sys.executable), "py-spy")
    return beside if os.access(beside, os.X_OK) else shutil.which("py-spy")


def profile(cmd: Sequence[str], env: dict[str, str], cwd: str, raw_path: str,
            timeout: float) -> tuple[list[str], int | None]:
    """Runs cmd under py-spy; returns the markdown lines for RESULTS.md and the session id it ran in."""
    exe = py_spy()
    heading = ["", "### Profile: the scenario re-run under py-spy, since a target was missed", ""]
    if exe is None:
        return heading + ["py-spy is not installed (`pip install py-spy`): no profile."], None
    spy = [exe, "record", "--format", "raw", "--subprocesses", "--rate", str(RATE), "-o", raw_path, "--"]
    shown = shlex.join(["py-spy", *spy[1:], "python", *cmd[1:]])
    proc = subprocess.Popen([*spy, *cmd], cwd=cwd, env=env, start_new_session=True, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        output = proc.communicate(timeout=timeout)[0] or ""
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output = (proc.communicate()[0] or "") + f"\n(timed out after {timeout:g} s)"
    heading += [f"Command: `{shown}`", ""]
    try:
        with open(raw_path) as f:
            samples = self_time(f.read())
    except OSError:
        samples = {}
    if not samples:
        tail = " ".join(output.strip().splitlines()[-3:]).replace("|", "\\|")
        return heading + [f"py-spy recorded nothing (exit status {proc.returncode}): {tail}"], proc.pid
    return heading + _table(samples), proc.pid


def self_time(raw: str) -> dict[str, collections.Counter[str]]:
    """Samples per innermost frame, for "driver" (the process py-spy started) and "machines" (those below it)."""
    out: dict[str, collections.Counter[str]] = {"driver": collections.Counter(), "machines": collections.Counter()}
    for stack, count in _records(raw):
        pids = []
        while match := _PROCESS.match(stack):
            pids.append(match.group(1))
            stack = stack[match.end():]
        if pids and stack:
            role = "driver" if len(pids) == 1 else "machines"
            out[role][_short(stack.rsplit(";", 1)[-1])] += count
    return {role: counter for role, counter in out.items() if counter}


def _records(raw: str) -> Iterator[tuple[str, int]]:
    """(stack, samples) per record; a command line with newlines spans several lines."""
    pending = ""
    for line in raw.splitlines():
        pending += line
        match = _RECORD.fullmatch(pending)
        if match:
            yield match.group(1), int(match.group(2))
            pending = ""
        else:
            pending += "\n"


def _short(frame: str) -> str:
    """A frame with its file shortened to the part below site-packages (or the Python library)."""
    return re.sub(r"\((?:[^()]*/(?:site-packages|python3\.\d+)/)([^()]*)\)", r"(\1)", frame)


def _table(samples: dict[str, collections.Counter[str]]) -> list[str]:
    counts = ", ".join(f"{sum(c.values()):,} samples of the {role}" for role, c in samples.items())
    out = [f"{counts} ({RATE} Hz, threads py-spy judged active; "
           "the whole scenario, cluster start included; C code shows as its Python caller).", "",
           "| process | function (self time) | share of its samples |", "|---|---|---|"]
    for role, counter in samples.items():
        total = sum(counter.values())
        out += [f"| {role} | `{frame}` | {n / total:.1%} |" for frame, n in counter.most_common(TOP)]
    return out
