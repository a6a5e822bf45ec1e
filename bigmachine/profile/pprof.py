"""CPU and heap profiles as gzipped `perftools.profiles.Profile` protobufs, for `go tool pprof`.

The message layout is github.com/google/pprof/proto/profile.proto; the few wire
types it needs (varints and length-delimited fields) are encoded by hand here, so
there is no protobuf dependency. Python frames have no addresses, so there are no
mappings; each location is one line of one function.
"""

from __future__ import annotations

import gzip
import os
import time

from .cpu import CpuSamples
from .heap import HeapSnapshot

__all__ = ["cpu_to_pprof", "heap_to_pprof"]

# Field numbers of profile.proto.
_PROFILE_SAMPLE_TYPE = 1
_PROFILE_SAMPLE = 2
_PROFILE_LOCATION = 4
_PROFILE_FUNCTION = 5
_PROFILE_STRING_TABLE = 6
_PROFILE_TIME_NANOS = 9
_PROFILE_DURATION_NANOS = 10
_PROFILE_PERIOD_TYPE = 11
_PROFILE_PERIOD = 12
_PROFILE_DEFAULT_SAMPLE_TYPE = 14
_VALUE_TYPE_TYPE, _VALUE_TYPE_UNIT = 1, 2
_SAMPLE_LOCATION_ID, _SAMPLE_VALUE = 1, 2
_LOCATION_ID, _LOCATION_LINE = 1, 4
_LINE_FUNCTION_ID, _LINE_LINE = 1, 2
_FUNCTION_ID, _FUNCTION_NAME, _FUNCTION_SYSTEM_NAME = 1, 2, 3
_FUNCTION_FILENAME, _FUNCTION_START_LINE = 4, 5

_VARINT, _LEN = 0, 2


def _varint(n: int) -> bytes:
    """Base-128 varint; negative int64s as their 64-bit two's complement."""
    if n < 0:
        n += 1 << 64
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _int_field(number: int, value: int) -> bytes:
    """A varint field; zero is the default, so it is left out."""
    return _varint(number << 3 | _VARINT) + _varint(value) if value else b""


def _bytes_field(number: int, value: bytes) -> bytes:
    """A length-delimited field (string, message or packed repeated)."""
    return _varint(number << 3 | _LEN) + _varint(len(value)) + value


def _packed(number: int, values: list[int]) -> bytes:
    """A packed repeated varint field."""
    return _bytes_field(number, b"".join(_varint(v) for v in values)) if values else b""


class _ProfileBuilder:
    """Interns strings, functions and locations, and encodes the Profile message."""

    def __init__(self) -> None:
        self._strings: dict[str, int] = {"": 0}  # index 0 must be ""
        self._functions: dict[tuple[str, str, int], int] = {}
        self._locations: dict[tuple[int, int], int] = {}
        self._body: list[bytes] = []  # samples, in order

    def string(self, s: str) -> int:
        """Index of `s` in the string table."""
        return self._strings.setdefault(s, len(self._strings))

    def location(self, filename: str, line: int, func: str, start_line: int) -> int:
        """Id (from 1) of the location `filename:line` in `func`, defined at `start_line`."""
        fkey = (func, filename, start_line)
        fid = self._functions.setdefault(fkey, len(self._functions) + 1)
        return self._locations.setdefault((fid, line), len(self._locations) + 1)

    def sample(self, location_ids: list[int], values: list[int]) -> None:
        """Adds a sample; `location_ids` leaf first."""
        self._body.append(_bytes_field(_PROFILE_SAMPLE, (
            _packed(_SAMPLE_LOCATION_ID, location_ids) + _packed(_SAMPLE_VALUE, values)
        )))

    def value_type(self, type_: str, unit: str) -> bytes:
        """An encoded ValueType message."""
        return (_int_field(_VALUE_TYPE_TYPE, self.string(type_))
                + _int_field(_VALUE_TYPE_UNIT, self.string(unit)))

    def encode(
        self,
        sample_types: list[tuple[str, str]],
        period_type: tuple[str, str],
        period: int,
        time_nanos: int,
        duration_nanos: int,
    ) -> bytes:
        """The gzipped Profile message."""
        out = [_bytes_field(_PROFILE_SAMPLE_TYPE, self.value_type(t, u))
               for t, u in sample_types]
        out += self._body
        for (fid, line), lid in self._locations.items():
            line_msg = _int_field(_LINE_FUNCTION_ID, fid) + _int_field(_LINE_LINE, line)
            out.append(_bytes_field(_PROFILE_LOCATION, (
                _int_field(_LOCATION_ID, lid) + _bytes_field(_LOCATION_LINE, line_msg)
            )))
        for (func, filename, start_line), fid in self._functions.items():
            name = self.string(func)
            out.append(_bytes_field(_PROFILE_FUNCTION, (
                _int_field(_FUNCTION_ID, fid)
                + _int_field(_FUNCTION_NAME, name)
                + _int_field(_FUNCTION_SYSTEM_NAME, name)
                + _int_field(_FUNCTION_FILENAME, self.string(filename))
                + _int_field(_FUNCTION_START_LINE, start_line)
            )))
        # Tail fields reference strings too, so they are interned before the table.
        tail = [
            _int_field(_PROFILE_TIME_NANOS, time_nanos),
            _int_field(_PROFILE_DURATION_NANOS, duration_nanos),
            _bytes_field(_PROFILE_PERIOD_TYPE, self.value_type(*period_type)),
            _int_field(_PROFILE_PERIOD, period),
            _int_field(_PROFILE_DEFAULT_SAMPLE_TYPE, self.string(sample_types[-1][0])),
        ]
        out += [_bytes_field(_PROFILE_STRING_TABLE, s.encode("utf-8", "replace"))
                for s in self._strings]  # dicts keep insertion order = index order
        out += tail
        return gzip.compress(b"".join(out), mtime=0)


def cpu_to_pprof(samples: CpuSamples, *, time_nanos: int | None = None) -> bytes:
    """A CPU profile (`samples/count`, `cpu/nanoseconds`) for `go tool pprof`."""
    builder = _ProfileBuilder()
    period = max(1, round(samples.interval * 1e9))
    for stack, n in samples.counts.items():
        if n <= 0 or not stack:
            continue
        # CpuSamples frames carry the def line; each function is one location.
        ids = [builder.location(f, line, func, line) for f, line, func in reversed(stack)]
        builder.sample(ids, [n, n * period])
    duration = round(samples.duration * 1e9)
    start = time.time_ns() - duration if time_nanos is None else time_nanos
    return builder.encode(
        [("samples", "count"), ("cpu", "nanoseconds")],
        ("cpu", "nanoseconds"), period, start, duration,
    )


def heap_to_pprof(heap: HeapSnapshot, *, time_nanos: int | None = None) -> bytes:
    """A heap profile (`inuse_objects/count`, `inuse_space/bytes`) for `go tool pprof`."""
    builder = _ProfileBuilder()
    for size, count, tb in heap.stats:
        # Heap frames carry the allocating line; a function of unknown name is
        # named by that line so that distinct sites do not merge into one "?".
        ids = [
            builder.location(f, line, func if func != "?" else f"{os.path.basename(f)}:{line}", 0)
            for f, line, func in reversed(tb)
        ]
        builder.sample(ids, [count, size])
    return builder.encode(
        [("inuse_objects", "count"), ("inuse_space", "bytes")],
        ("space", "bytes"), 1, time.time_ns() if time_nanos is None else time_nanos, 0,
    )
