"""Profiles of one process (CPU, heap, threads), merged across machines, and their formats.

Collectors run in each machine and return plain picklable data; the driver merges
them (`merge_*`) and renders them (pstats, text, folded stacks, pprof, SVG).
"""

from .cpu import (
    MAX_SECONDS,
    MODES,
    THREADS,
    CpuSamples,
    ProfilerBusy,
    join_cpu,
    merge_cpu,
    merge_pstats,
    profile_cpu,
    sample_cpu,
    to_collapsed,
    to_pstats,
    to_text,
)
from .flamegraph import render_flamegraph_svg
from .heap import HeapSnapshot, heap_snapshot, heap_to_text, merge_heap, stop_heap_tracing, tracing_note
from .pprof import cpu_to_pprof, heap_to_pprof
from .threads import athread_dump, thread_dump, threads_to_text

__all__ = [
    "CpuSamples",
    "HeapSnapshot",
    "MAX_SECONDS",
    "MODES",
    "ProfilerBusy",
    "THREADS",
    "athread_dump",
    "cpu_to_pprof",
    "heap_snapshot",
    "heap_to_pprof",
    "heap_to_text",
    "join_cpu",
    "merge_cpu",
    "merge_heap",
    "merge_pstats",
    "profile_cpu",
    "render_flamegraph_svg",
    "sample_cpu",
    "stop_heap_tracing",
    "thread_dump",
    "threads_to_text",
    "to_collapsed",
    "to_pstats",
    "to_text",
    "tracing_note",
]
