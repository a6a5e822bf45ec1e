"""Tests of bigmachine.profile.cpu: sampling every thread, pstats, merge, text, folded."""

from __future__ import annotations

import asyncio
import concurrent.futures
import io
import marshal
import multiprocessing
import pickle
import pstats
import re
import threading
import time
from pathlib import Path

import pytest

from bigmachine.profile import (
    CpuSamples,
    merge_cpu,
    merge_pstats,
    profile_cpu,
    sample_cpu,
    to_collapsed,
    to_pstats,
    to_text,
)


def burn_cpu_in_profile_test(seconds: float, stop: threading.Event | None = None) -> int:
    """The hot function the profiles must find; it burns for ``seconds``, or until ``stop`` is set."""
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end and not (stop is not None and stop.is_set()):
        for i in range(200):  # inline, so this function is the leaf frame
            n += i * i
    return n


def burn_cpu_in_process_a(seconds: float) -> int:
    """Hot function of the first process in the merge test."""
    return burn_cpu_in_profile_test(seconds)


def burn_cpu_in_process_b(seconds: float) -> int:
    """Hot function of the second process in the merge test."""
    return burn_cpu_in_profile_test(seconds)


def wait_idle_in_profile_test(event: threading.Event) -> None:
    """Blocks without using CPU."""
    event.wait()


def _by_name(stats: dict, name: str) -> tuple:
    """The pstats entry whose function name is `name`."""
    found = [(k, v) for k, v in stats.items() if k[2] == name]
    assert found, f"{name} not in {sorted(k[2] for k in stats)}"
    assert len(found) == 1
    return found[0]


def _profile_while_burning(seconds: float = 0.4, **kwargs) -> CpuSamples:
    """Samples (from this thread) while a pool thread burns CPU; `cpu_seconds` is what the process used meanwhile."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        burning = pool.submit(burn_cpu_in_profile_test, seconds + 0.3)
        time.sleep(0.05)
        begun = time.process_time()
        samples = sample_cpu(seconds, **kwargs)
        samples.cpu_seconds = time.process_time() - begun  # type: ignore[attr-defined]
        burning.result()
    return samples


def test_sampler_finds_hot_function_running_on_another_thread(tmp_path: Path) -> None:
    samples = _profile_while_burning()
    used = samples.cpu_seconds  # type: ignore[attr-defined]
    path = tmp_path / "cpu.pstats"
    path.write_bytes(to_pstats(samples))

    stats = pstats.Stats(str(path))
    table = stats.stats  # type: ignore[attr-defined]
    key, (cc, nc, tt, ct, callers) = _by_name(table, "burn_cpu_in_profile_test")
    assert key[0] == __file__
    assert tt == max(v[2] for v in table.values())
    assert nc == max(v[1] for v in table.values())
    assert nc > 5  # CPU time in 5 ms units: ~80 on an idle core over 0.4 s
    # The CPU seconds the hot function used (less than 0.4 on a loaded machine), the sampler's own aside.
    assert 0.4 * used < tt <= ct <= used + 0.01
    assert any(caller[2] == "_WorkItem.run" for caller in callers)
    # The sampler's own thread (this one) is never in the profile.
    assert not any(k[2] == "sample_cpu" for k in table)
    printed = io.StringIO()
    pstats.Stats(str(path), stream=printed).sort_stats("cumulative").print_stats(10)
    assert "burn_cpu_in_profile_test" in printed.getvalue()


def test_idle_threads_are_dropped_unless_asked() -> None:
    release = threading.Event()
    idle = threading.Thread(target=wait_idle_in_profile_test, args=(release,), name="idle")
    idle.start()
    try:
        busy = _profile_while_burning(0.2)
        everything = _profile_while_burning(0.2, mode="wall")
    finally:
        release.set()
        idle.join()

    def has(samples: CpuSamples, name: str) -> bool:
        return any(f[2] == name for stack in samples.counts for f in stack)

    assert has(busy, "burn_cpu_in_profile_test")
    assert not has(busy, "wait_idle_in_profile_test")
    assert has(everything, "wait_idle_in_profile_test")


def test_profile_cpu_samples_without_blocking_the_loop() -> None:
    async def main() -> tuple[CpuSamples, int]:
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        ticker = asyncio.create_task(tick())
        sampled = threading.Event()
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            # It burns until the sampling is over: on a loaded host a fixed burn ended inside the window,
            # and the CPU it had used was counted on the stack the next sample saw (its hand-back).
            burning = asyncio.get_running_loop().run_in_executor(
                pool, burn_cpu_in_profile_test, 30, sampled
            )
            try:
                samples = await profile_cpu(0.3)
            finally:
                sampled.set()
            await burning
        ticker.cancel()
        return samples, ticks

    samples, ticks = asyncio.run(main())
    assert ticks > 5  # the loop kept running while sampling
    hottest = max(samples.counts.items(), key=lambda item: item[1])[0]
    assert hottest[-1][2] == "burn_cpu_in_profile_test"
    assert 0.25 < samples.duration < 1.0


def test_profile_cpu_cancelled_stops_its_sampler() -> None:
    async def main() -> None:
        task = asyncio.create_task(profile_cpu(30))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    started = time.monotonic()
    asyncio.run(main())
    assert time.monotonic() - started < 5  # and no_leaked_threads checks the sampler


def test_pstats_counts_recursion_once_and_records_callers() -> None:
    a, b, c, r = (("m.py", i, n) for i, n in enumerate("abcr", 1))
    samples = CpuSamples({(a, b, c): 3, (a, b): 1, (a, r, r, r): 2}, interval=0.01)
    table = marshal.loads(to_pstats(samples))

    assert table[a][:4] == (6, 6, 0.0, pytest.approx(0.06))
    assert table[b][:4] == (4, 4, pytest.approx(0.01), pytest.approx(0.04))
    assert table[c][:4] == (3, 3, pytest.approx(0.03), pytest.approx(0.03))
    assert table[r][:4] == (2, 2, pytest.approx(0.02), pytest.approx(0.02))
    assert table[a][4] == {}
    assert table[c][4] == {b: (3, 3, pytest.approx(0.03), pytest.approx(0.03))}
    assert table[r][4][a][0] == 2 and table[r][4][r][0] == 2


def _profile_in_child(which: str) -> bytes:
    """Runs in a spawned process: profiles its own hot function, returns pstats."""
    hot = {"a": burn_cpu_in_process_a, "b": burn_cpu_in_process_b}[which]
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        burning = pool.submit(hot, 0.6)
        time.sleep(0.05)
        samples = sample_cpu(0.3)
        burning.result()
    return to_pstats(samples)


def test_merge_pstats_of_two_processes_keeps_both_and_sums(tmp_path: Path) -> None:
    spawn = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(2, mp_context=spawn) as pool:
        profiles = list(pool.map(_profile_in_child, ["a", "b"]))
    merged = merge_pstats(profiles)
    path = tmp_path / "merged.pstats"
    path.write_bytes(merged)
    table = pstats.Stats(str(path)).stats  # type: ignore[attr-defined]
    one = [marshal.loads(data) for data in profiles]

    _, a = _by_name(table, "burn_cpu_in_process_a")
    _, b = _by_name(table, "burn_cpu_in_process_b")
    assert a[1] > 0 and b[1] > 0  # CPU time in 5 ms units: a loaded machine gives each process little
    _, run = _by_name(table, "_WorkItem.run")
    parts = [_by_name(t, "_WorkItem.run")[1] for t in one]
    assert run[1] == parts[0][1] + parts[1][1]
    assert run[3] == pytest.approx(parts[0][3] + parts[1][3])
    assert "burn_cpu_in_process_b" in to_text(merged)


def test_merge_cpu_adds_counts_and_labels_machines() -> None:
    f, g = ("x.py", 1, "f"), ("x.py", 5, "g")
    one = CpuSamples({(f, g): 2, (f,): 1}, 0.01, 1.0)
    two = CpuSamples({(f, g): 3}, 0.01, 2.0)

    merged = merge_cpu([one, two])
    assert merged.counts == {(f, g): 5, (f,): 1}
    assert merged.duration == 2.0 and merged.interval == pytest.approx(0.01)

    labelled = merge_cpu([one, two], labels=["m1:1", "m2:2"])
    assert labelled.total == 6
    roots = {stack[0][2] for stack in labelled.counts}
    assert roots == {"m1:1", "m2:2"}
    assert to_collapsed(labelled).splitlines()[0].startswith("m1:1;f (x.py:1)")
    with pytest.raises(ValueError):
        merge_cpu([one], labels=["a", "b"])


_FOLDED_LINE = re.compile(r"^(?P<stack>[^;]+(;[^;]+)*) (?P<count>\d+)$")
_FOLDED_FRAME = re.compile(r"^\S.* \(.+:\d+\)$")


def test_collapsed_lines_parse_and_sum_to_total() -> None:
    samples = _profile_while_burning(0.2)
    text = to_collapsed(samples)
    total = 0
    for line in text.splitlines():
        match = _FOLDED_LINE.match(line)
        assert match, line
        assert all(_FOLDED_FRAME.match(f) for f in match["stack"].split(";")), line
        total += int(match["count"])
    assert total == samples.total > 0
    assert "burn_cpu_in_profile_test (" in text


def test_text_table_and_empty_profiles_load() -> None:
    samples = _profile_while_burning(0.2)
    text = to_text(samples, limit=5)
    assert "burn_cpu_in_profile_test" in text
    assert "samples every" in text

    empty = to_pstats(CpuSamples())
    assert "function calls" in to_text(empty)
    assert merge_pstats([empty, to_pstats(samples)])
    assert "burn_cpu_in_profile_test" in to_text(merge_pstats([empty, to_pstats(samples)]))


def test_samples_pickle_as_plain_data() -> None:
    samples = _profile_while_burning(0.1)
    again = pickle.loads(pickle.dumps(samples))
    assert again == samples
    for stack in again.counts:
        assert all(type(x) in (str, int) for frame in stack for x in frame)


def test_threads_split_the_event_loop_from_the_other_threads() -> None:
    async def serve_and_burn() -> tuple[CpuSamples, CpuSamples]:
        async def spin() -> None:
            end = time.monotonic() + 0.8
            while time.monotonic() < end:
                burn_cpu_in_profile_test(0.002)  # on the loop thread
                await asyncio.sleep(0)

        spinning = asyncio.create_task(spin())
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            burning = asyncio.get_running_loop().run_in_executor(pool, burn_cpu_in_process_a, 0.8)
            server, service = await asyncio.gather(profile_cpu(0.4, threads="server"),
                                                   asyncio.to_thread(sample_cpu, 0.4, threads="service"))
            await burning
        await spinning
        return server, service

    server, service = asyncio.run(serve_and_burn())

    def names(samples: CpuSamples) -> set[str]:
        return {f[2] for stack in samples.counts for f in stack}

    assert "Runner.run" in names(server) and "burn_cpu_in_process_a" not in names(server)
    assert "burn_cpu_in_process_a" in names(service) and "Runner.run" not in names(service)
