"""Tests of bigmachine.profile.heap: lazy tracemalloc, allocation sites, stop, merge."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest

from bigmachine.profile import heap_snapshot, heap_to_text, merge_heap, stop_heap_tracing
from bigmachine.profile.heap import STOP_AFTER, HeapSnapshot


def allocate_recognisable_buffers() -> list[bytearray]:
    """About 8 MB in 160 blocks, all allocated on one line."""
    return [bytearray(50_000) for _ in range(160)]  # ALLOCATION LINE


_ALLOCATION_LINE = next(
    i
    for i, line in enumerate(Path(__file__).read_text().splitlines(), 1)
    if line.rstrip().endswith("# ALLOCATION LINE")
)


@pytest.fixture(autouse=True)
def no_tracing() -> Iterator[None]:
    """Each test starts and ends with tracing off."""
    stop_heap_tracing()
    assert not tracemalloc.is_tracing()
    yield
    stop_heap_tracing()


def _timer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "bigmachine-heap-timer"]


def test_importing_does_not_start_tracing() -> None:
    code = "import tracemalloc, bigmachine.profile; assert not tracemalloc.is_tracing()"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=30)


def test_first_request_starts_tracing_and_says_so() -> None:
    first = heap_snapshot()
    assert tracemalloc.is_tracing()
    assert first.started_now
    assert any("tracing started now" in note for note in first.notes)
    assert "tracing started now" in heap_to_text(first)

    second = heap_snapshot()
    assert not second.started_now and not second.notes
    assert first.frames == 1 and second.since == first.since and second.stops_after == STOP_AFTER == 60
    assert "heap tracing is ON since" in heap_to_text(second) and "stops by itself 60 s" in heap_to_text(second)


def test_asking_for_another_depth_restarts_tracing_at_that_depth() -> None:
    heap_snapshot(frames=1)
    deeper = heap_snapshot(frames=3)
    assert deeper.started_now and deeper.frames == 3 == tracemalloc.get_traceback_limit()
    assert heap_snapshot(frames=3).frames == 3


def test_allocation_site_is_at_the_top() -> None:
    heap_snapshot(frames=10)
    buffers = allocate_recognisable_buffers()
    snap = heap_snapshot(frames=10)
    del buffers

    size, count, traceback = snap.stats[0]
    assert size >= 160 * 50_000
    assert count >= 160
    filename, line, func = traceback[-1]  # root first: the allocating frame is last
    assert (filename, line) == (__file__, _ALLOCATION_LINE)
    assert "allocate_recognisable_buffers" in func
    assert any("test_allocation_site_is_at_the_top" in f[2] for f in traceback[:-1])
    assert snap.total_size >= size
    text = heap_to_text(snap, limit=3)
    assert f"{__file__}:{_ALLOCATION_LINE} allocate_recognisable_buffers" in text
    assert pickle.loads(pickle.dumps(snap)) == snap


def test_stop_heap_tracing_stops_and_joins_the_timer() -> None:
    heap_snapshot(stop_after=60)
    heap_snapshot(stop_after=60)  # replaces (and joins) the first timer
    assert len(_timer_threads()) == 1
    stop_heap_tracing()
    assert not tracemalloc.is_tracing()
    assert _timer_threads() == []


def test_tracing_stops_by_itself_when_not_asked_for() -> None:
    heap_snapshot(stop_after=0.2)
    assert tracemalloc.is_tracing()
    deadline = time.monotonic() + 5
    while tracemalloc.is_tracing() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not tracemalloc.is_tracing()


def test_tracing_started_by_someone_else_is_left_alone() -> None:
    tracemalloc.start()
    try:
        snap = heap_snapshot(stop_after=0.01)
        assert not snap.started_now
        assert _timer_threads() == []
        stop_heap_tracing()
        assert tracemalloc.is_tracing()
    finally:
        tracemalloc.stop()


def test_merge_heap_sums_by_traceback_and_labels_machines() -> None:
    tb = [("a.py", 1, "main"), ("a.py", 9, "alloc")]
    one = HeapSnapshot([(100, 2, tb), (10, 1, [("b.py", 3, "f")])], 110, 3, 25)
    two = HeapSnapshot([(300, 4, tb)], 300, 4, 25, started_now=True, notes=["started"])

    merged = merge_heap([one, two])
    assert merged.stats[0] == (400, 6, tb)
    assert merged.total_size == 410 and merged.total_count == 7
    assert merged.started_now and merged.notes == ["started"]

    labelled = merge_heap([one, two], labels=["m1", "m2"])
    assert [s[:2] for s in labelled.stats] == [(300, 4), (100, 2), (10, 1)]
    assert labelled.stats[0][2][0] == ("<machine>", 0, "m2")
    assert labelled.notes == ["m2: started"]
    assert "a.py:9 alloc" in heap_to_text(labelled)
