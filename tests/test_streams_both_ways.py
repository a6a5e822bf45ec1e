"""A streamed argument and a streamed reply in one call (issue 9).

Before: ``def echo(self, chunks): for c in chunks: yield c`` returned ``b''``: the server
drained the argument before the reply generator read it. Now the reply streams while
the argument still arrives, what the reply leaves unread is drained before its end,
and the client sends and reads at once (else both sides block on full buffers).
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import psutil
import pytest
from services import Calc, Pipe

import bigmachine
from bigmachine import RUNNING
from bigmachine.systems import Local

pytestmark = pytest.mark.timeout(240)

METHODS = ["Pipe.echo", "Pipe.aecho"]
TWINS = ["call", "submit", "acall", "acall on the session loop"]


def chunks(n: int, size: int) -> Iterator[bytes]:
    """``n`` chunks, each different, so a hash tells order and content."""
    for i in range(n):
        yield i.to_bytes(4, "big") * (size // 4)


def expected_digest(n: int, size: int) -> str:
    digest = hashlib.sha256()
    for chunk in chunks(n, size):
        digest.update(chunk)
    return digest.hexdigest()


def pipe(m: bigmachine.Machine, twin: str, method: str, source: Any, *args: Any) -> tuple[str, int]:
    """Calls ``method`` with a streamed argument through ``twin``; reads the streamed reply: (sha256, bytes)."""
    digest = hashlib.sha256()
    total = 0
    if twin in ("call", "submit"):
        reply = m.call(method, source, *args, timeout=120) if twin == "call" else \
            m.submit(method, source, *args, timeout=120).result(120)
        for chunk in reply:
            digest.update(chunk)
            total += len(chunk)
        return digest.hexdigest(), total

    async def main() -> tuple[str, int]:
        nonlocal total
        reply = await m.acall(method, source, *args, timeout=120)
        assert isinstance(reply, AsyncIterator)
        async for chunk in reply:
            digest.update(chunk)
            total += len(chunk)
        return digest.hexdigest(), total

    if twin == "acall":
        return asyncio.run(main())
    return asyncio.run_coroutine_threadsafe(main(), m._session.loop).result(120)


@pytest.fixture
def piped(testing_session: bigmachine.B) -> bigmachine.Machine:
    (m,) = testing_session.start(1, bigmachine.Services(Pipe=Pipe(), Calc=Calc()))
    assert m.wait(RUNNING, timeout=10) == RUNNING
    return m


@pytest.mark.parametrize("twin", TWINS)
@pytest.mark.parametrize("method", METHODS)
def test_reply_streams_the_argument_back(piped: bigmachine.Machine, method: str, twin: str) -> None:
    assert pipe(piped, twin, method, chunks(40, 100_000)) == (expected_digest(40, 100_000), 4_000_000)
    assert pipe(piped, twin, method, iter([])) == (hashlib.sha256().hexdigest(), 0)
    assert piped.call("Calc.add", 1, 2, timeout=5) == 3


@pytest.mark.parametrize("twin", TWINS)
@pytest.mark.parametrize("method", ["Pipe.head", "Pipe.ahead"])
def test_reply_ending_before_the_argument_drains_the_rest(piped: bigmachine.Machine, method: str, twin: str) -> None:
    first_two = b"".join(list(chunks(2, 1 << 16)))
    assert pipe(piped, twin, method, chunks(64, 1 << 16), 2) == (hashlib.sha256(first_two).hexdigest(), 2 << 16)
    for _ in range(3):  # the connection stays in step: later calls get their own answers
        assert piped.call("Calc.add", 2, 3, timeout=5) == 5
        assert asyncio.run(piped.acall("Calc.add", 4, 5, timeout=5)) == 9


def failing_source(before: int) -> Iterator[bytes]:
    for i in range(before):
        yield bytes([i]) * 1000
    raise OSError("the source broke")


@pytest.mark.parametrize("twin", TWINS)
@pytest.mark.parametrize("before", [0, 3, 200])
def test_the_arguments_own_error_reaches_the_caller(piped: bigmachine.Machine, twin: str, before: int) -> None:
    """Before the reply's head (0 chunks) or after it (3, 200): the caller gets the source's OSError, as is."""
    with pytest.raises(OSError, match="the source broke") as info:
        pipe(piped, twin, "Pipe.echo", failing_source(before))
    assert not isinstance(info.value, bigmachine.Error)
    assert piped.call("Calc.add", 1, 1, timeout=5) == 2


def test_streamed_argument_with_a_whole_reply_still_works(piped: bigmachine.Machine) -> None:
    assert piped.call("Pipe.length", chunks(10, 1000), timeout=10) == 10_000
    assert asyncio.run(piped.acall("Pipe.length", chunks(10, 1000), timeout=10)) == 10_000


# ------------------------------------------------------------------ 256 MiB through one machine


@pytest.fixture(scope="module")
def local_pipe() -> Iterator[bigmachine.Machine]:
    with bigmachine.start(Local()) as b:
        (m,) = b.start(1, bigmachine.Services(Pipe=Pipe()))
        assert m.wait(RUNNING, timeout=60) == RUNNING
        yield m


# Each method and each kind of call once at full size; the small cases above cross them all.
@pytest.mark.parametrize("method, twin", [("Pipe.echo", "call"), ("Pipe.aecho", "acall")])
def test_256_mib_piped_through_a_machine_keeps_the_driver_memory_bounded(local_pipe: bigmachine.Machine,
                                                                          method: str, twin: str) -> None:
    n, size = 256, 1 << 20
    me = psutil.Process()
    base = peak = me.memory_info().rss
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.wait(0.02):
            peak = max(peak, me.memory_info().rss)

    sampler = threading.Thread(target=sample, name="rss-sampler")
    sampler.start()
    try:
        assert pipe(local_pipe, twin, method, chunks(n, size)) == (expected_digest(n, size), n * size)
    finally:
        stop.set()
        sampler.join()
    assert peak - base < 64 << 20, f"the driver's RSS grew by {(peak - base) >> 20} MiB piping 256 MiB"


def test_blocking_call_with_a_streamed_argument_on_the_session_loop_says_to_use_acall(
        piped: bigmachine.Machine) -> None:
    """It would need the loop it blocks: refused with the way out, instead of hanging."""
    async def on_the_loop() -> Any:
        return piped.call("Pipe.length", chunks(2, 10), timeout=5)

    with pytest.raises(bigmachine.Error, match=r"cannot block the session's event loop thread; use `await m.acall"):
        asyncio.run_coroutine_threadsafe(on_the_loop(), piped._session.loop).result(10)
    assert piped.call("Pipe.length", chunks(2, 12), timeout=5) == 24
