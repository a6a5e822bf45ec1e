"""Tests of bigmachine.profile.pprof: the protobuf read back by hand and by `go tool pprof`."""

from __future__ import annotations

import concurrent.futures
import gzip
import subprocess
import time
from pathlib import Path
from typing import Any

from bigmachine.profile import (
    CpuSamples,
    HeapSnapshot,
    cpu_to_pprof,
    heap_snapshot,
    heap_to_pprof,
    merge_cpu,
    sample_cpu,
    stop_heap_tracing,
)

_HOT = ("/src/service.py", 10, "burn_cpu_in_pprof_test")
_MAIN = ("/src/main.py", 1, "main")
_OTHER = ("/src/service.py", 30, "cooler_function")
_SAMPLES = CpuSamples({(_MAIN, _HOT): 90, (_MAIN, _OTHER): 10}, interval=0.005, duration=1.0)
_HEAP = HeapSnapshot(
    stats=[
        (8_000_000, 160, [("/src/main.py", 3, "main"),
                          ("/src/cache.py", 12, "allocate_in_pprof_test")]),
        (1_000, 4, [("/src/main.py", 3, "main"), ("<frozen x>", 7, "?")]),
    ],
    total_size=8_001_000,
    total_count=164,
    frames=25,
)


def _varint(data: bytes, i: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        byte = data[i]
        i += 1
        n |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return n, i


def _fields(data: bytes) -> list[tuple[int, Any]]:
    """(field number, int or bytes) of one message: enough protobuf to check ours."""
    out, i = [], 0
    while i < len(data):
        key, i = _varint(data, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(data, i)
        else:
            assert wire == 2, f"unexpected wire type {wire}"
            length, i = _varint(data, i)
            value, i = data[i:i + length], i + length
        out.append((number, value))
    return out


def _packed(data: bytes) -> list[int]:
    values, i = [], 0
    while i < len(data):
        value, i = _varint(data, i)
        values.append(value)
    return values


def _decode(encoded: bytes) -> dict[str, Any]:
    """Strings, functions, locations and samples of a gzipped Profile."""
    fields = _fields(gzip.decompress(encoded))
    strings = [v.decode() for n, v in fields if n == 6]
    functions = {}
    for n, v in fields:
        if n == 5:
            f = dict(_fields(v))
            functions[f[1]] = (strings[f[2]], strings[f.get(4, 0)], f.get(5, 0))
    locations = {}
    for n, v in fields:
        if n == 4:
            loc = dict(_fields(v))
            line = dict(_fields(loc[4]))
            locations[loc[1]] = functions[line[1]][0]
    samples = []
    for n, v in fields:
        if n == 2:
            s = dict(_fields(v))
            samples.append(([locations[i] for i in _packed(s[1])], _packed(s[2])))
    types = [tuple(strings[x] for x in dict(_fields(v)).values()) for n, v in fields if n == 1]
    scalars = {n: v for n, v in fields if n in (10, 12)}
    return dict(strings=strings, samples=samples, types=types, scalars=scalars)


def test_cpu_profile_decodes_with_leaf_first_locations() -> None:
    profile = _decode(cpu_to_pprof(_SAMPLES))
    assert profile["strings"][0] == ""
    assert profile["types"] == [("samples", "count"), ("cpu", "nanoseconds")]
    assert sorted(profile["samples"]) == [
        (["burn_cpu_in_pprof_test", "main"], [90, 90 * 5_000_000]),
        (["cooler_function", "main"], [10, 10 * 5_000_000]),
    ]
    assert profile["scalars"] == {10: 1_000_000_000, 12: 5_000_000}


def test_heap_profile_decodes_with_space_and_objects() -> None:
    profile = _decode(heap_to_pprof(_HEAP))
    assert profile["types"] == [("inuse_objects", "count"), ("inuse_space", "bytes")]
    assert (["allocate_in_pprof_test", "main"], [160, 8_000_000]) in profile["samples"]
    assert (["<frozen x>:7", "main"], [4, 1_000]) in profile["samples"]


def _pprof_top(go_pprof: tuple[list[str], dict[str, str]], path: Path) -> str:
    command, env = go_pprof
    done = subprocess.run(
        [*command, "-top", str(path)], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_go_tool_pprof_reads_cpu_profile(go_pprof, tmp_path: Path) -> None:
    path = tmp_path / "cpu.pb.gz"
    path.write_bytes(cpu_to_pprof(_SAMPLES))
    top = _pprof_top(go_pprof, path)
    first_row = next(line for line in top.splitlines() if "%" in line and "ms" in line
                     and "Duration" not in line and "Showing" not in line)
    assert "burn_cpu_in_pprof_test" in first_row
    assert "450ms" in first_row  # 90 samples of 5 ms


def test_go_tool_pprof_reads_heap_profile(go_pprof, tmp_path: Path) -> None:
    path = tmp_path / "heap.pb.gz"
    path.write_bytes(heap_to_pprof(_HEAP))
    top = _pprof_top(go_pprof, path)
    assert "Type: inuse_space" in top
    assert "allocate_in_pprof_test" in top


def burn_cpu_in_real_pprof_test(seconds: float) -> int:
    """Hot function of a real sampled profile."""
    end, n = time.monotonic() + seconds, 0
    while time.monotonic() < end:
        for i in range(200):
            n += i * i
    return n


def allocate_in_real_pprof_test() -> list[bytearray]:
    """A recognisable allocation for a real heap profile."""
    return [bytearray(40_000) for _ in range(100)]


def test_go_tool_pprof_reads_real_profiles(go_pprof, tmp_path: Path) -> None:
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        burning = pool.submit(burn_cpu_in_real_pprof_test, 0.5)
        samples = sample_cpu(0.3)
        burning.result()
    heap_snapshot()
    try:
        buffers = allocate_in_real_pprof_test()
        heap = heap_snapshot()
        del buffers
    finally:
        stop_heap_tracing()
    cpu_path, heap_path = tmp_path / "cpu.pb.gz", tmp_path / "heap.pb.gz"
    cpu_path.write_bytes(cpu_to_pprof(merge_cpu([samples, samples], labels=["m1", "m2"])))
    heap_path.write_bytes(heap_to_pprof(heap))
    assert "burn_cpu_in_real_pprof_test" in _pprof_top(go_pprof, cpu_path)
    assert "allocate_in_real_pprof_test" in _pprof_top(go_pprof, heap_path)
