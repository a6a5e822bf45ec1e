"""Tests of the sampled heap profiler (bigmachine/profile/_heapsample.c) and of its fallback.

The estimates are statistical: at the default rate, 50 MB gives about 100 samples, so the
0.5x-2x bounds below fail with a probability far below one in a million.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import threading
import tracemalloc
import weakref
from collections.abc import Iterator

import pytest

from bigmachine.profile import heap, heap_snapshot, heap_to_text, stop_heap_tracing
from bigmachine.profile.heap import HeapSnapshot

_heapsample = pytest.importorskip("bigmachine.profile._heapsample", reason="the C extension is not built")

BLOCK = 1000  # bytes of each kept object's payload
KEPT = 50_000_000  # bytes kept, in BLOCK-sized objects


@pytest.fixture(autouse=True)
def sampler_off() -> Iterator[None]:
    """Each test starts and ends with no tracing, and the hooks out of the allocator chain."""
    stop_heap_tracing()
    assert not _heapsample.is_installed()
    yield
    stop_heap_tracing()
    assert not _heapsample.is_installed() and not tracemalloc.is_tracing()
    assert gc.isenabled()  # the sampler turns collection off only while it reads a stack


def keep_fifty_megabytes(count: int = KEPT // BLOCK) -> list[bytes]:
    """KEPT bytes (or `count` objects) in BLOCK-byte objects, all allocated here."""
    return [bytes(BLOCK) for _ in range(count)]


def keep_in_thread_a(out: list[list[bytes]]) -> None:
    out.append([bytes(BLOCK) for _ in range(10_000)])


def keep_in_thread_b(out: list[list[bytes]]) -> None:
    out.append([bytes(BLOCK) for _ in range(10_000)])


def _estimated(snapshot: HeapSnapshot, function: str) -> int:
    """Estimated live bytes allocated with `function` on the stack."""
    return sum(size for size, _, tb in snapshot.stats if any(f[2].startswith(function) for f in tb))


def _true_size(objects: list[bytes]) -> int:
    return sum(sys.getsizeof(o) for o in objects)


def test_big_allocation_site_dominates_within_a_factor_of_two() -> None:
    heap_snapshot()
    kept = keep_fifty_megabytes()
    snap = heap_snapshot()
    true = _true_size(kept)
    estimate = _estimated(snap, "keep_fifty_megabytes")
    assert 0.5 * true <= estimate <= 2 * true, (estimate, true)
    assert 0.5 * len(kept) <= sum(c for _, c, tb in snap.stats if "keep_fifty" in str(tb)) <= 2 * len(kept)
    top_size, _, top = snap.stats[0]
    assert any(f[2].startswith("keep_fifty_megabytes") for f in top), top
    assert top_size > snap.total_size / 2  # it dominates the live heap
    assert snap.rate == heap.RATE and snap.frames == heap.FRAMES == 32
    assert any(f[2] == "test_big_allocation_site_dominates_within_a_factor_of_two" for f in top)  # deep stacks
    assert "keep_fifty_megabytes" in heap_to_text(snap, limit=1)


def test_freed_memory_drops_out() -> None:
    heap_snapshot()
    kept = keep_fifty_megabytes()
    assert _estimated(heap_snapshot(), "keep_fifty_megabytes") > KEPT / 2
    del kept
    assert _estimated(heap_snapshot(), "keep_fifty_megabytes") == 0


def test_stop_uninstalls_the_hooks_and_later_allocations_are_not_recorded() -> None:
    heap_snapshot(rate=4096)
    assert _heapsample.is_running() and _heapsample.is_installed()
    stop_heap_tracing()
    assert not _heapsample.is_running() and not _heapsample.is_installed()
    assert _heapsample.samples() == []
    kept = keep_fifty_megabytes()  # while stopped: nobody sees it
    assert _heapsample.samples() == []
    snap = heap_snapshot(rate=4096)  # starts again: the blocks kept before are invisible
    assert snap.started_now and _estimated(snap, "keep_fifty_megabytes") == 0
    del kept


def test_threads_allocating_at_once_are_each_found() -> None:
    heap_snapshot(rate=64 * 1024)
    out_a: list[list[bytes]] = []
    out_b: list[list[bytes]] = []
    threads = [threading.Thread(target=keep_in_thread_a, args=(out_a,)),
               threading.Thread(target=keep_in_thread_b, args=(out_b,))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    snap = heap_snapshot(rate=64 * 1024)
    for name, out in (("keep_in_thread_a", out_a), ("keep_in_thread_b", out_b)):
        true = _true_size(out[0])
        assert 0.5 * true <= _estimated(snap, name) <= 2 * true, (name, _estimated(snap, name), true)


def churn(rounds: int) -> None:
    """Allocation under stress: exceptions in flight, reference cycles, weakref callbacks, collections."""
    for i in range(rounds):
        try:
            raise ValueError(json.loads(json.dumps({"a": [str(j) for j in range(20)]})))
        except ValueError as error:
            repr(error)

        class Cycle:
            pass

        cycle = Cycle()
        cycle.self = cycle
        weakref.ref(cycle, lambda ref: None)
        if i % 50 == 0:
            gc.collect()


def test_sampling_every_allocation_survives_threads_collections_and_exceptions() -> None:
    """The hook reads stacks from inside any allocation: rate=1 makes it do so from all of them."""
    heap_snapshot(rate=1, frames=8)
    threads = [threading.Thread(target=churn, args=(300,)) for _ in range(2)]
    for t in threads:
        t.start()
    churn(300)
    for t in threads:
        t.join(timeout=60)
    snap = heap_snapshot(rate=1, frames=8)
    assert snap.total_count > 0 and gc.isenabled()


def test_tracemalloc_started_while_sampling_is_survived() -> None:
    """tracemalloc stacks its hooks over ours; stopping either first leaves both working."""
    heap_snapshot(rate=4096)
    tracemalloc.start()
    try:
        stop_heap_tracing()  # ours stay in the chain, passing calls through, under tracemalloc's
        assert not _heapsample.is_running() and _heapsample.is_installed()
        kept = keep_fifty_megabytes(1000)
        assert tracemalloc.get_traced_memory()[0] > 1000 * BLOCK
    finally:
        tracemalloc.stop()
    snap = heap_snapshot(rate=4096)
    kept = keep_fifty_megabytes(1000)
    assert _estimated(heap_snapshot(rate=4096), "keep_fifty_megabytes") > 500 * BLOCK
    assert snap.started_now
    del kept
    stop_heap_tracing()


def test_importing_does_not_start_tracing() -> None:
    code = ("import tracemalloc, bigmachine.profile; from bigmachine.profile import _heapsample\n"
            "assert not tracemalloc.is_tracing() and not _heapsample.is_installed()")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=30)


def test_fallback_when_the_extension_is_missing() -> None:
    """Without the C extension (no compiler at install), tracemalloc traces and the answer says so."""
    code = (
        "import sys, tracemalloc; sys.modules['bigmachine.profile._heapsample'] = None\n"
        "from bigmachine.profile import heap\n"
        "snap = heap.heap_snapshot(); text = heap.heap_to_text(heap.heap_snapshot())\n"
        "assert tracemalloc.is_tracing() and heap.FRAMES == 1 and snap.frames == 1 and snap.rate == 0\n"
        "assert 'with tracemalloc (the sampled profiler' in text and 'C extension is not built' in text, text\n"
        "heap.stop_heap_tracing(); assert not tracemalloc.is_tracing()\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=60)
