"""What heap tracing costs: `python -m benchmarks.heap_cost` (about 2 minutes).

(a) Allocation-heavy Python in this process (dicts, lists, strings in a loop; a JSON round
trip): the slowdown against tracing off of the sampled profiler (default rate, 1 and 32
frames; 64 times as many samples; and at a rate so high that it never samples, which is the
hook's own cost) and of
tracemalloc at 1, 3 and 25 frames. Times are the thread's CPU time; rounds interleave the
settings, so all see the same noise; each setting's best is compared with the best untraced.

(b) A service on a Local machine called back to back from the driver for 2 s: the machine
process's CPU time per call with each setting, best of the rounds, for a no-op method
(RPC-bound: the cost is the RPC path's own allocations) and an allocating one. CPU time,
not calls per second, because on a shared machine the latter mostly measures the neighbours.

    --rounds N   rounds (default 15 in-process, 3 on the machine)
    --json       one JSON line instead of the table
"""

from __future__ import annotations

import argparse
import json
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

from bigmachine.profile import heap

SETTINGS: dict[str, tuple[str, int, int]] = {  # name: (tracer, frames, rate)
    "off": ("off", 0, 0),
    "sampled, 1 frame": ("sampled", 1, heap.RATE),
    "sampled, 32 frames": ("sampled", 32, heap.RATE),
    "sampled at 8 KiB, 32 frames": ("sampled", 32, 8 * 1024),
    "sampler hook, never sampling": ("sampled", 1, 1 << 60),
    "tracemalloc, 1 frame": ("tracemalloc", 1, 0),
    "tracemalloc, 3 frames": ("tracemalloc", 3, 0),
    "tracemalloc, 25 frames": ("tracemalloc", 25, 0),
}


def dicts_lists_strings() -> int:
    """A mix of small allocations, as Python code makes them: dicts, lists, strings, tuples."""
    total = 0
    for i in range(20_000):
        row = {"i": i, "s": str(i), "t": (i, i + 1)}
        total += len([row, row["s"]])
    return total


def json_round_trip() -> int:
    """Encoding and decoding a few hundred records."""
    records = [{"id": i, "name": f"user{i}", "tags": ["a", "b", str(i)], "score": i / 7} for i in range(300)]
    return sum(len(json.loads(json.dumps(records))) for _ in range(10))


def set_tracing(name: str) -> None:
    """Turns tracing as `SETTINGS[name]` says, everything else off."""
    heap.stop_heap_tracing()
    if tracemalloc.is_tracing():
        tracemalloc.stop()
    tracer, frames, rate = SETTINGS[name]
    if tracer == "sampled":
        if heap._heapsample is None:
            raise SystemExit("the sampled profiler's C extension is not built: pip install -e . with a C compiler")
        heap.heap_snapshot(frames, rate=rate, limit=0)
    elif tracer == "tracemalloc":
        tracemalloc.start(frames)


def _timed(work: Callable[[], Any]) -> float:
    """CPU seconds of `work`: on a shared machine, waiting for a core would swamp the difference."""
    begun = time.thread_time()
    work()
    return time.thread_time() - begun


def in_process(rounds: int) -> dict[str, dict[str, float]]:
    """{workload: {setting: slowdown against off}}, best of `rounds` interleaved runs."""
    out = {}
    for work in (dicts_lists_strings, json_round_trip):
        best = {name: float("inf") for name in SETTINGS}
        for _ in range(rounds):
            for name in SETTINGS:
                set_tracing(name)
                best[name] = min(best[name], _timed(work))
        set_tracing("off")
        out[work.__name__] = {"off_ms": best["off"] * 1000} | {
            name: best[name] / best["off"] for name in SETTINGS if name != "off"}
    return out


class Bench:
    """The service measured on the machine."""

    def nothing(self) -> None:
        return None

    def allocate(self) -> int:
        return dicts_lists_strings()

    def trace(self, name: str) -> None:
        set_tracing(name)

    def cpu(self) -> float:
        return time.process_time()


def on_a_machine(rounds: int, seconds: float = 2.0) -> dict[str, dict[str, float]]:
    """{method: {setting: machine CPU µs per call}}, best of `rounds` interleaved runs of `seconds`."""
    import bigmachine
    from bigmachine import RUNNING, systems

    def cpu_per_call(machine: Any, method: str) -> float:
        end, n = time.monotonic() + seconds, 0
        cpu = machine.call("Bench.cpu")
        while time.monotonic() < end:
            machine.call(method)
            n += 1
        return (machine.call("Bench.cpu") - cpu) / n * 1e6

    out: dict[str, dict[str, float]] = {}
    with bigmachine.start(systems.Local()) as b:
        (machine,) = b.start(1, bigmachine.Services(Bench=Bench()))
        machine.wait(RUNNING, timeout=60)
        for method in ("Bench.nothing", "Bench.allocate"):
            best = dict.fromkeys(SETTINGS, float("inf"))
            for _ in range(rounds):
                for name in SETTINGS:
                    machine.call("Bench.trace", name)
                    best[name] = min(best[name], cpu_per_call(machine, method))
            machine.call("Bench.trace", "off")
            out[method] = dict(best)
    return out


def _table(local: dict[str, dict[str, float]], remote: dict[str, dict[str, float]]) -> str:
    rows = ["| setting | " + " | ".join(local) + " | " + " | ".join(f"{m} on a machine" for m in remote) + " |"]
    rows.append("|---" * (1 + len(local) + len(remote)) + "|")
    for name in SETTINGS:
        cells = [f"{local[w]['off_ms']:.1f} ms" if name == "off" else f"{local[w][name]:.2f}x" for w in local]
        cells += [f"{remote[m][name]:.0f} µs" if name == "off" else f"{remote[m][name] / remote[m]['off']:.2f}x"
                  for m in remote]
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    local = in_process(args.rounds or 15)
    remote = on_a_machine(args.rounds or 3)
    if args.json:
        print(json.dumps({"in_process": local, "machine": remote}))
    else:
        print(_table(local, remote))


if __name__ == "__main__":
    main()
