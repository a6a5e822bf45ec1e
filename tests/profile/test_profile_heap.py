"""Tests of bigmachine.profile.heap with either tracer: lazy start, allocation sites, stop, merge.

Each runs with the sampled profiler and with tracemalloc, the fallback when the C extension is
not built (forced here by swapping the tracer; `test_fallback_when_the_extension_is_missing`
takes the extension away for real, in tests/profile/test_profile_heap_sampler.py, which also
tests the sampler's estimates).
"""

from __future__ import annotations

import pickle
import threading
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest

from bigmachine.profile import heap, heap_snapshot, heap_to_text, merge_heap, stop_heap_tracing
from bigmachine.profile.heap import STOP_AFTER, HeapSnapshot

EXACT_RATE = 4096  # bytes per sample: a 50 kB block is sampled with probability 1 - e^-12


def allocate_recognisable_buffers() -> list[bytearray]:
    """About 8 MB in 160 blocks, all allocated on one line."""
    return [bytearray(50_000) for _ in range(160)]  # ALLOCATION LINE


_ALLOCATION_LINE = next(
    i
    for i, line in enumerate(Path(__file__).read_text().splitlines(), 1)
    if line.rstrip().endswith("# ALLOCATION LINE")
)


@pytest.fixture(autouse=True, params=["sampled", "tracemalloc"])
def tracer(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Each test runs with each tracer, and starts and ends with tracing off."""
    stop_heap_tracing()
    if request.param == "tracemalloc":
        monkeypatch.setattr(heap, "_tracer", heap._Tracemalloc())
        monkeypatch.setattr(heap, "FRAMES", 1)
    elif heap._heapsample is None:
        pytest.skip("the sampled profiler's C extension is not built")
    assert not tracemalloc.is_tracing() and not _tracing()
    yield request.param
    stop_heap_tracing()
    assert not _tracing()


def _tracing() -> bool:
    """Whether our tracer is on."""
    return heap._tracer.ours()


def _timer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "bigmachine-heap-timer"]


def test_first_request_starts_tracing_and_says_so(tracer: str) -> None:
    first = heap_snapshot()
    assert _tracing()
    assert first.started_now
    assert any("tracing started now" in note for note in first.notes)
    assert "tracing started now" in heap_to_text(first)

    second = heap_snapshot()
    assert not second.started_now and not second.notes
    assert first.frames == heap.FRAMES and second.since == first.since and second.stops_after == STOP_AFTER == 60
    assert "heap tracing is ON since" in heap_to_text(second) and "stops by itself 60 s" in heap_to_text(second)
    if tracer == "sampled":
        assert first.rate == heap.RATE and "sampled: one allocation per 512.0 KiB" in heap_to_text(second)
    else:
        assert first.rate == 0 and "with tracemalloc (the sampled profiler's C extension is not built" in heap_to_text(second)


def test_asking_for_another_depth_restarts_tracing_at_that_depth(tracer: str) -> None:
    heap_snapshot(frames=1)
    deeper = heap_snapshot(frames=3)
    assert deeper.started_now and deeper.frames == 3
    if tracer == "tracemalloc":
        assert tracemalloc.get_traceback_limit() == 3
    assert not heap_snapshot(frames=3).started_now


def test_allocation_site_is_at_the_top() -> None:
    heap_snapshot(frames=10, rate=EXACT_RATE)
    buffers = allocate_recognisable_buffers()
    snap = heap_snapshot(frames=10, rate=EXACT_RATE)
    del buffers

    size, count, traceback = snap.stats[0]
    assert size >= 160 * 50_000 * 0.99  # sampled: estimated, and all but certainly every block
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
    assert not _tracing()
    assert _timer_threads() == []


def test_tracing_stops_by_itself_when_not_asked_for() -> None:
    heap_snapshot(stop_after=0.2)
    assert _tracing()
    deadline = time.monotonic() + 5
    while _tracing() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not _tracing()


def test_tracing_started_by_someone_else_is_left_alone() -> None:
    tracemalloc.start()
    try:
        snap = heap_snapshot(stop_after=0.01)
        assert not snap.started_now and not _tracing() and snap.rate == 0
        assert _timer_threads() == []
        assert "started by someone else" in heap_to_text(snap)
        stop_heap_tracing()
        assert tracemalloc.is_tracing()
    finally:
        tracemalloc.stop()


def test_merge_heap_sums_by_traceback_and_labels_machines() -> None:
    tb = [("a.py", 1, "main"), ("a.py", 9, "alloc")]
    one = HeapSnapshot([(100, 2, tb), (10, 1, [("b.py", 3, "f")])], 110, 3, 25, rate=4096)
    two = HeapSnapshot([(300, 4, tb)], 300, 4, 25, started_now=True, notes=["started"], rate=512)

    merged = merge_heap([one, two])
    assert merged.stats[0] == (400, 6, tb) and merged.rate == 512
    assert merged.total_size == 410 and merged.total_count == 7
    assert merged.started_now and merged.notes == ["started"]

    labelled = merge_heap([one, two], labels=["m1", "m2"])
    assert [s[:2] for s in labelled.stats] == [(300, 4), (100, 2), (10, 1)]
    assert labelled.stats[0][2][0] == ("<machine>", 0, "m2")
    assert labelled.notes == ["m2: started"]
    assert "a.py:9 alloc" in heap_to_text(labelled)

