"""The scenarios, written once against `backends.Backend`.

Each scenario is a function `(backend_name, config) -> list[Measurement]` that
starts and stops its own cluster. Unless stated, a scenario starts one cluster,
warms it up, measures `config.repeat` repetitions and shuts it down; cold start
and scale start a cluster (or a whole process) per repetition, since that is
what they measure.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from .backends import Backend, Unsupported, load
from .bulk import bulk
from .call_ceiling import call_ceiling
from .cpu_per_call import SIDES, cpu_per_call, process_sides
from .harness import Config, Scenario, cluster, error_row, measurement, temp_path, timed
from .measure import MIB, Measurement, cpu_during, descendants, percentile, rss
from .tls_ceiling import TLS_FLOOR, tls_ceiling
from .workload import sample

__all__ = ["SCENARIOS", "Config", "Scenario"]

# cold start


def cold_start(name: str, cfg: Config) -> list[Measurement]:
    """Process start to 2 workers ready and one call answered, in a fresh interpreter."""
    runs = [_cold_start_once(name) for _ in range(cfg.repeat + 1)][1:]  # first warms OS caches
    return [
        measurement(name, "cold_start", key, "s", values=[r[f"{key}_s"] for r in runs])
        for key in ("ready", "import", "shutdown")
    ]


def _cold_start_once(name: str) -> dict[str, float]:
    cmd = [sys.executable, "-m", "benchmarks.cold_start", name, repr(time.time())]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"cold_start {name} exited {proc.returncode}: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


# call latency


def latency(name: str, cfg: Config) -> list[Measurement]:
    """Sequential round trips of echo(1) on one worker: sync, then each async variant."""
    out = []
    with cluster(name, 1) as backend:
        series: dict[str, Callable[[int], list[float]]] = {"sync": lambda k: sync_latencies(backend, k)}
        for variant in backend.async_variants():
            series[variant] = lambda k, v=variant: async_latencies(backend, v, k)
        for variant, run in series.items():
            with error_row(out, name, "latency", "call latency", variant):
                run(cfg.latency_warmup)
                reps = [run(cfg.latency_calls) for _ in range(cfg.repeat)]
                out.append(_latency_measurement(name, variant, reps))
    return out


def _latency_measurement(name: str, variant: str, reps: list[list[float]],
                         scenario: str = "latency") -> Measurement:
    ms = [[x * 1e3 for x in rep] for rep in reps]
    return measurement(
        name, scenario, "call latency", "ms", variant=variant,
        values=[percentile(rep, 50) for rep in ms],
        extra={"p99": percentile([x for rep in ms for x in rep], 99),
               "calls_per_rep": len(ms[0])},
    )


def sync_latencies(backend: Backend, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        backend.call(0, "echo", 1)
        out.append(time.perf_counter() - t)
    return out


def async_latencies(backend: Backend, variant: str, n: int) -> list[float]:
    async def run() -> list[float]:
        out = []
        for _ in range(n):
            t = time.perf_counter()
            await backend.acall(0, "echo", 1)
            out.append(time.perf_counter() - t)
        return out

    return backend.run_async(variant, run)


# call throughput


def throughput(name: str, cfg: Config) -> list[Measurement]:
    """Calls per second with cfg.inflight echo calls in flight across 2 workers, and what each side spent
    on a call meanwhile (process CPU times, as in cpu_per_call): with every core busy, the sum is what
    bounds the rate."""
    out = []
    with cluster(name, 2) as backend:
        sides = process_sides(backend)
        runs: dict[str, Callable[[int], None]] = {
            backend.submit_label: lambda k: futures_in_flight(backend, k, cfg.inflight)
        }
        for variant in backend.async_variants():
            runs[variant] = lambda k, v=variant: acalls_in_flight(backend, v, k, cfg.inflight)
        for variant, run in runs.items():
            with error_row(out, name, "throughput", "calls/s", variant):
                ncalls = _calibrate(run, cfg)
                reps = [cpu_during(sides, lambda: run(ncalls)) for _ in range(cfg.repeat)]
                extra = {"calls_per_rep": ncalls}
                out.append(measurement(name, "throughput", "calls/s", "calls/s", better="higher",
                              variant=variant, values=[ncalls / wall for _, wall in reps], extra=extra))
                out += [measurement(name, "throughput", f"{SIDES[side]} CPU per call", "µs", variant=variant,
                                    values=[cpu[side] * 1e6 / ncalls for cpu, _ in reps], extra=extra)
                        for side in sides]
                out.append(measurement(name, "throughput", "busy cores", "cores", variant=variant,
                                       values=[sum(cpu.values()) / wall for cpu, wall in reps],
                                       extra={**extra, "versus": False}))
    return out


def _calibrate(run: Callable[[int], None], cfg: Config) -> int:
    """Warms up, then picks a call count that lasts about cfg.throughput_seconds."""
    probe = 10 * cfg.inflight
    rate = probe / timed(run, probe)
    n = int(rate * cfg.throughput_seconds) // cfg.inflight * cfg.inflight
    return min(max(n, probe), 200_000)


def futures_in_flight(backend: Backend, ncalls: int, inflight: int) -> None:
    """Keeps `inflight` submitted calls outstanding, alternating workers, redeeming oldest first."""
    pending: deque[Any] = deque()
    for k in range(ncalls):
        if len(pending) >= inflight:
            backend.result(pending.popleft())
        pending.append(backend.submit(k % backend.n, "echo", k))
    while pending:
        backend.result(pending.popleft())


def acalls_in_flight(backend: Backend, variant: str, ncalls: int, inflight: int) -> None:
    """`inflight` coroutines, each making sequential acalls to one worker."""
    async def lane(j: int) -> None:
        for _ in range(ncalls // inflight):
            await backend.acall(j % backend.n, "echo", j)

    async def run() -> None:
        await asyncio.gather(*(lane(j) for j in range(inflight)))

    backend.run_async(variant, run)


@contextlib.contextmanager
def _temp_bytes(content: bytes) -> Iterator[str]:
    with temp_path() as path:
        with open(path, "wb") as f:
            f.write(content)
        yield path


# bigpi


def bigpi(name: str, cfg: Config) -> list[Measurement]:
    """cfg.bigpi_n samples split over 2 workers vs the same work in this process.

    Each repetition times the single-process run here (the workers idle), then
    the parallel run, so that drift of this noisy machine hits both alike;
    efficiency = t_single / (2 * t_parallel) per repetition. `run.py` adds the
    ratio to multiprocessing's efficiency once every backend has run.
    """
    n = cfg.bigpi_n
    single, parallel = [], []
    with cluster(name, 2) as backend:
        sample(n // 50)  # warm-up, both sides
        for f in [backend.submit(i, "sample", n // 50) for i in range(backend.n)]:
            backend.result(f)
        for _ in range(cfg.repeat):
            single.append(timed(sample, n))
            parallel.append(timed(_parallel_pi, backend, n))
    return [
        measurement(name, "bigpi", "t_single", "s", values=single,
           extra={"note": f"n={n:,} in the driver process", "versus": False}),
        measurement(name, "bigpi", "t_parallel (2 workers)", "s", values=parallel),
        measurement(name, "bigpi", "efficiency", "", better="higher",
           values=[t1 / (2 * t2) for t1, t2 in zip(single, parallel)]),
    ]


def _parallel_pi(backend: Backend, n: int) -> float:
    futures = [backend.submit(i, "sample", n // backend.n) for i in range(backend.n)]
    pi = 4 * sum(backend.result(f) for f in futures) / n
    if not 3.1 < pi < 3.2:
        raise AssertionError(f"pi = {pi}")
    return pi


# scale


def scale(name: str, cfg: Config) -> list[Measurement]:
    """Time to start cfg.scale_n workers from nothing, and their idle RSS per worker."""
    n = cfg.scale_n
    with cluster(name, 2):  # warm-up: OS caches, imports
        pass
    starts, stops, per_worker, per_tree = [], [], [], []
    for _ in range(cfg.scale_repeat):
        backend = load(name)
        try:
            starts.append(timed(backend.start, n))
            time.sleep(cfg.scale_settle)
            pids = backend.worker_pids()
            if len(set(pids)) != n:
                raise AssertionError(f"{len(set(pids))} distinct worker processes, want {n}")
            per_worker.append(sum(rss(p) for p in pids) / n / MIB)
            per_tree.append(sum(rss(p.pid) for p in descendants()) / n / MIB)
        finally:
            t = time.perf_counter()
            backend.shutdown()
            stops.append(time.perf_counter() - t)
    return [
        measurement(name, "scale", f"start {n}", "s", values=starts),
        measurement(name, "scale", "idle RSS per machine", "MiB", values=per_worker,
           extra={"note": "worker processes only"}),
        measurement(name, "scale", "idle RSS per machine, whole tree", "MiB", values=per_tree,
           extra={"note": f"every process below the driver / {n}"}),
        measurement(name, "scale", f"shutdown {n}", "s", values=stops),
    ]


# profiling cost


def profiling(name: str, cfg: Config) -> list[Measurement]:
    """Call latency while the debug server takes a merged CPU profile of all machines."""
    import httpx  # only the profiling scenario needs it

    seconds = cfg.profile_seconds
    with cluster(name, 2) as backend:
        try:
            app = backend.debug_app()
        except Unsupported as exc:
            return [measurement(name, "profiling", "call latency", "ms", error=f"not available yet: {exc}")]
        with _serve(app) as url:
            sync_latencies(backend, cfg.latency_warmup)
            quiet = [_latencies_for(backend, seconds) for _ in range(cfg.repeat)]
            loaded, took, checks = [], [], set()
            for _ in range(cfg.repeat):
                result: dict[str, Any] = {}
                fetch = threading.Thread(target=_fetch_profile, args=(httpx, url, seconds, result))
                t = time.perf_counter()
                fetch.start()
                loaded.append(_latencies_while(backend, fetch.is_alive))
                fetch.join()
                took.append(time.perf_counter() - t)
                if "error" in result:
                    raise RuntimeError(f"profile request failed: {result['error']}")
                checks.add(result["pstats"].split(":")[0])
    return [
        _latency_measurement(name, "no profile", quiet, "profiling"),
        _latency_measurement(name, f"while profiling ({seconds:g} s)", loaded, "profiling"),
        measurement(name, "profiling", "profile request", "s", values=took,
           extra={"note": f"seconds={seconds:g}, both machines; {', '.join(sorted(checks))}"}),
    ]


def _latencies_for(backend: Backend, seconds: float) -> list[float]:
    deadline = time.perf_counter() + seconds
    return _latencies_while(backend, lambda: time.perf_counter() < deadline)


def _latencies_while(backend: Backend, cond: Callable[[], bool]) -> list[float]:
    out = []
    while cond():
        out += sync_latencies(backend, 10)
    return out


def _fetch_profile(httpx: Any, url: str, seconds: float, result: dict[str, Any]) -> None:
    try:
        r = httpx.get(f"{url}/debug/bigmachine/pprof/profile",
                      params={"seconds": seconds}, timeout=seconds + 60)
        r.raise_for_status()
        result["bytes"] = len(r.content)
        result["pstats"] = _pstats_check(r.content)
    except Exception as exc:
        result["error"] = repr(exc)


def _pstats_check(content: bytes) -> str:
    """Whether the profile loads with `pstats.Stats`, as docs/api.md promises."""
    import pstats

    with _temp_bytes(content) as path:
        try:
            stats = pstats.Stats(path)
        except Exception as exc:
            return f"pstats cannot load it: {exc!r}"[:200]
    return f"pstats loads it: {len(stats.stats)} functions"  # type: ignore[attr-defined]


@contextlib.contextmanager
def _serve(app: Any) -> Iterator[str]:
    """Serves an ASGI app on a free port of 127.0.0.1 from a thread; yields its URL."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                                           lifespan="off"))
    thread = threading.Thread(target=server.run, name="debug-server", daemon=True)
    thread.start()
    try:
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("debug server failed to start")
            time.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


SCENARIOS = {
    s.name: s
    for s in [
        Scenario("cold_start", "1. Cold start: fresh process to 2 workers ready and one call answered", cold_start),
        Scenario("latency", "2. Call latency: sequential echo(1) round trips, one worker", latency),
        Scenario("cpu_per_call", "3. CPU per small sync call, driver and machine, from process CPU times",
                 cpu_per_call),
        Scenario("throughput", "4. Call throughput: 64 calls in flight across 2 workers", throughput),
        Scenario("call_ceiling", "5. Call ceiling: echo(1)'s bytes over TLS on Unix sockets, 64 in flight on 2 servers, "
                 "a thread per connection, no parsing", call_ceiling, once_as=TLS_FLOOR),
        Scenario("tls_ceiling", "6. TLS ceiling: one way over TLS 1.3 on a Unix socket, recv_into a preallocated buffer",
                 tls_ceiling, once_as=TLS_FLOOR),
        Scenario("bulk", "7. Bulk transfer: an argument up and a reply down, 64 and 256 MiB, one worker", bulk),
        Scenario("bigpi", "8. bigpi: parallel efficiency on 2 workers", bigpi),
        Scenario("scale", "9. Scale: start 16 workers on 2 cores; idle RSS", scale),
        Scenario("profiling", "10. Profiling cost: call latency during a merged CPU profile",
                 profiling, only=("bigmachine",)),
    ]
}
