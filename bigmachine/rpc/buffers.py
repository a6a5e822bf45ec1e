"""Out-of-band buffers: large ``bytes`` values travel after the pickle that names them, and are
received straight into their final objects.

In a pickle, a large ``bytes`` value is copied twice on the receiving side: read into the
body's buffer, then copied into a new object by the unpickler, each copy into fresh memory
(a page fault per 4 KiB; about 1.2 GB/s on a 2-core host, against about 0.7 GB/s for TLS
itself). Sent out of band (pickle protocol 5), each value is read into a ``bytes`` object of
its own, once (the bulk scenario of benchmarks/RESULTS.md), whose pages are made present in
one system call rather than faulted in one by one (``fresh_bytes``).

A body laid out so starts with ``MAGIC``, the number of buffers (u32), the pickle's length and
each buffer's (u64 each), then the pickle, then the buffers. A pickle starts with its PROTO
opcode (0x80), so the first byte tells the two kinds of body apart.
"""

from __future__ import annotations

import ctypes
import mmap
import struct
import sys
from typing import NamedTuple

from ..errors import ProtocolError

__all__ = ["MAGIC", "Split", "fresh_bytes", "layout", "prefix"]

MAGIC = b"B"
_COUNT = struct.Struct("!cI")
_LENGTH = struct.Struct("!Q")
MAX_BUFFERS = 1 << 16  # more than a call could ever carry whole: a body that says more is malformed


class Split(NamedTuple):
    """A body received as its pickle and its out-of-band buffers (``pickle.loads(stream, buffers=buffers)``)."""

    stream: bytes | bytearray | memoryview
    buffers: list[bytes]


def prefix(stream_length: int, buffer_lengths: list[int]) -> bytes:
    """What goes before the pickle in a body with out-of-band buffers."""
    lengths = (stream_length, *buffer_lengths)
    return _COUNT.pack(MAGIC, len(buffer_lengths)) + struct.pack(f"!{len(lengths)}Q", *lengths)


def layout(head: bytes | bytearray | memoryview) -> tuple[int, list[int]] | int:
    """The lengths of a body's parts from its first bytes: ``(prefix length, [pickle, *buffers])``, or how many
    first bytes it takes to know them. A body that is one pickle is one part after an empty prefix."""
    if not head:
        return 1
    if head[:1] != MAGIC:
        return 0, []  # one pickle: its length is the body's
    if len(head) < _COUNT.size:
        return _COUNT.size
    count: int = _COUNT.unpack_from(head)[1]
    if count > MAX_BUFFERS:
        raise ProtocolError(f"a body announces {count} out-of-band buffers, over the {MAX_BUFFERS} any call carries")
    size = _COUNT.size + _LENGTH.size * (count + 1)
    if len(head) < size:
        return size
    lengths: list[int] = list(struct.unpack_from(f"!{count + 1}Q", head, _COUNT.size))
    return size, lengths


_new_bytes = ctypes.pythonapi.PyBytes_FromStringAndSize
_new_bytes.restype = ctypes.py_object
_new_bytes.argtypes = (ctypes.c_void_p, ctypes.c_ssize_t)
_bytes_data = ctypes.pythonapi.PyBytes_AsString
_bytes_data.restype = ctypes.c_void_p
_bytes_data.argtypes = (ctypes.py_object,)

_madvise = ctypes.CDLL(None, use_errno=True).madvise
_madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
_MADV_POPULATE_WRITE = 23  # Linux 5.14 and later; older kernels refuse it with EINVAL
_MADV_HUGEPAGE = 14
_PAGE = mmap.PAGESIZE
#: From this size on a new buffer's pages are made in one system call rather than a fault each.
PREFAULT_FROM = 1 << 20
_prefaulting = sys.platform == "linux"


def _huge_page_size() -> int:
    """The size of a transparent huge page, or 0 where the kernel gives none on request."""
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            if "[never]" in f.read():
                return 0
        with open("/sys/kernel/mm/transparent_hugepage/hpage_pmd_size") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 0


_HUGE_PAGE = _huge_page_size()


def _prefault(address: int, size: int) -> None:
    """Makes the whole pages of ``[address, address + size)`` present and writable, without writing them.

    One ``madvise(MADV_POPULATE_WRITE)`` makes them faster than a page fault each, as the reads filling
    the buffer would: whole 256 MiB transfers ran 12-15% faster (benchmarks/RESULTS.md, the addendum's A/B table).
    The whole huge pages inside are asked for as such first (``MADV_HUGEPAGE``): a 256 MiB buffer is then
    made in about half the time and freed in a fifteenth.
    """
    global _prefaulting
    if _HUGE_PAGE:
        huge_start = (address + _HUGE_PAGE - 1) & ~(_HUGE_PAGE - 1)
        huge_end = (address + size) & ~(_HUGE_PAGE - 1)
        if huge_end > huge_start:
            _madvise(huge_start, huge_end - huge_start, _MADV_HUGEPAGE)  # a refusal leaves small pages: fine
    start = (address + _PAGE - 1) & ~(_PAGE - 1)
    end = (address + size) & ~(_PAGE - 1)
    if end > start and _madvise(start, end - start, _MADV_POPULATE_WRITE) != 0:
        _prefaulting = False  # a kernel without it: faults it is, from now on


def fresh_bytes(size: int) -> tuple[bytes, memoryview]:
    """A new ``bytes`` object of ``size`` bytes and a writable view of it, to be filled before anything else sees it.

    The view keeps the object alive, so it can be filled even after the object's name is gone.

    The C API allows exactly this: a bytes object made by ``PyBytes_FromStringAndSize(NULL, size)`` may be
    written until it is shared. Its memory is not zeroed; when it is large (``PREFAULT_FROM``) its pages are
    made present here in one go, their contents left to the reads that fill them.
    """
    obj = _new_bytes(None, size)
    address = _bytes_data(obj)
    if _prefaulting and size >= PREFAULT_FROM:
        _prefault(address, size)
    memory = (ctypes.c_char * size).from_address(address)
    setattr(memory, "owner", obj)  # the view holds the array, the array the object: no freeing under the view
    return obj, memoryview(memory).cast("B")
