"""A blocking call from arguments to result, in the calling thread: encode, send, read, decode, count.

``Machine.call`` checks the machine's state and hands the rest to ``call``, which comes back
only with the result, or with an error the machine maps (``Target.error``): a sync call goes
machine -> rpc -> machine, with no hop to the event loop.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from typing import Any

from . import calls, stats
from .calls import Request
from .client import SyncPool
from .deadlines import deadline_after

__all__ = ["Target", "call"]


@dataclass(slots=True, frozen=True)
class Target:
    """What a blocking call needs of the machine it calls, made once its address is known."""

    machine: Any  # whose stats and trace ring count the call (rpc.stats)
    addr: str
    host_header: bytes
    error: Callable[[BaseException, str, float | None], BaseException]  # maps a failure to send or read
    streaming: Callable[[Request, float, float | None], Any]  # a call whose argument streams: via the loop


def call(pool: SyncPool, target: Target, method: str, args: tuple[Any, ...], kwargs: dict[str, Any],
         timeout: float | None) -> Any:
    """Calls ``method`` on ``pool``'s machine and returns its result (an iterator of bytes if streamed)."""
    deadline = deadline_after(timeout)
    request = calls.encode_call(target.host_header, method, args, kwargs)
    if request.stream is not None:
        return target.streaming(request, deadline, timeout)
    started = stats.begin(target.machine, method)
    failed = True
    try:
        try:
            response, conn = pool.call(request, deadline)
        except BaseException as exc:
            raise target.error(exc, method, timeout)
        if conn is not None:
            result = _chunks(target, pool.reply_frames(conn, deadline), method, timeout)
        else:
            result = calls.decode_reply(response, method, target.addr)
        failed = False
        return result
    finally:
        stats.end(target.machine, request, started, failed)


def _chunks(target: Target, frames: Generator[tuple[bytes, bytes], None, None], method: str,
            timeout: float | None) -> Iterator[bytes]:
    """The chunks of a streamed reply, read as iterated; a failure to read is mapped as the call's would be."""
    try:
        while True:
            try:
                kind, payload = next(frames)
            except StopIteration:
                return
            except BaseException as exc:
                raise target.error(exc, method, timeout)
            chunk = calls.decode_frame(kind, payload, target.addr)
            if chunk is None:
                return
            yield chunk
    finally:
        frames.close()
