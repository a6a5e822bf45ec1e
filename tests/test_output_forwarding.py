"""Machines' output reaches the driver's stdout without ever blocking the session loop (issue 9).

Unit tests of the line splitter and the bounded writer, then real Local machines: 64 MiB
without a newline, a ``\\r`` progress bar, and a driver whose stdout nobody reads for 30 s.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from services import Echo, Output
from waiting import wait_for

import bigmachine
from bigmachine import RUNNING
from bigmachine.systems import output
from bigmachine.systems.output import LineSplitter

pytestmark = pytest.mark.timeout(180)

MiB = 1 << 20


# ------------------------------------------------------------------ the splitter


def test_lines_are_split_across_chunks() -> None:
    splitter = LineSplitter()
    assert splitter.feed(b"hel", 0) == []
    assert splitter.feed(b"lo\nwor", 0) == [b"hello"]
    assert splitter.feed(b"ld\n\nlast", 0) == [b"world", b""]
    assert splitter.close() == [b"last"]
    assert splitter.close() == []


def test_a_line_without_newline_is_forwarded_in_pieces_of_the_cap() -> None:
    splitter = LineSplitter(max_line=1000)
    lines = [line for _ in range(2500) for line in splitter.feed(b"x" * 1000 + b"y" * 10, 0)]
    assert len(lines) == 2525 and all(len(line) == 1000 for line in lines)
    assert b"".join(lines) == (b"x" * 1000 + b"y" * 10) * 2500
    assert splitter.close() == []


def test_64_mib_without_newline_keeps_memory_to_one_line() -> None:
    splitter = LineSplitter()
    chunk = b"z" * 65536
    total = 0
    for _ in range(1024):
        total += sum(map(len, splitter.feed(chunk, 0)))
        assert len(splitter._partial) < splitter.max_line
    assert total == 64 * MiB


@pytest.mark.parametrize("chunks, line", [
    ([b"\r 10%\r 50%\r100%\n"], b"100%"),  # tqdm: \r then the state
    ([b" 10%\r", b" 50%\r", b"100%\r", b"\n"], b"100%"),  # print(..., end="\r")
    ([b"windows\r\n"], b"windows"),
    ([b"a long first state\rshort\n"], b"short"),
    ([b"\r", b"\r\n"], b""),
])
def test_carriage_returns_keep_only_the_latest_state(chunks: list[bytes], line: bytes) -> None:
    splitter = LineSplitter()
    lines = [out for chunk in chunks for out in splitter.feed(chunk, 100.0)]
    assert lines[-1] == line
    assert len(lines) <= 2  # at most the first state as progress, then the line


def test_a_progress_bar_forever_uses_bounded_memory_and_shows_its_state_once_a_second() -> None:
    splitter = LineSplitter(progress_every=1.0)
    shown = []
    for i in range(100_000):
        shown += splitter.feed(b"\r%6d" % i, i * 0.0001)  # 10 s of a bar updated every 0.1 ms
        assert len(splitter._partial) < 16
    assert 9 <= len(shown) <= 11
    assert shown[0] == b"     0" and shown[-1].strip().isdigit()
    assert splitter.progress_due(10.0) is not None and splitter.progress(11.0) == [b" 99999"]
    assert splitter.progress_due(11.0) is None  # given out: nothing pending until the next \r
    assert splitter.close() == [b" 99999"]


def test_a_stalled_progress_bar_is_shown_even_where_the_loop_fires_timers_early(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """uvloop counts timers in whole milliseconds: one can fire before the state is due by the clock.
    The forwarder then gave up, and the bar's latest state was never shown."""
    sink = _Sink()
    monkeypatch.setattr(sys, "stdout", sink)

    async def main() -> list[str]:
        loop = asyncio.get_running_loop()
        on_time = loop.call_later
        monkeypatch.setattr(loop, "call_later", lambda delay, *args: on_time(max(0.0, delay - 0.003), *args))
        forwarder = output.Forwarder("m")
        try:
            forwarder.feed("stdout", b"\r 41%")  # the first state goes out at once
            await asyncio.sleep(0.05)
            forwarder.feed("stdout", b"\r 42%")  # then the bar stalls
            deadline = time.monotonic() + 5
            while [text for _, _, text in forwarder.recent][-1] != " 42%" and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            return [text for _, _, text in forwarder.recent]
        finally:
            forwarder.close()
            await output.drained(5)

    assert asyncio.run(main()) == [" 41%", " 42%"]
    assert sink.of("m")[:2] == [" 41%", " 42%"]


def test_the_agent_relays_long_lines_in_pieces_and_a_progress_bar_as_its_states() -> None:
    """The agent's relay (EC2, Hosts) used StreamReader lines: a 64 KiB line without a newline broke it."""
    from bigmachine.systems.agent import _Bootstrap

    relay = _Bootstrap.__new__(_Bootstrap)
    relay.connected = True
    said: list[tuple[str, str]] = []

    async def say(kind: str, payload: bytes = b"", **fields: str) -> None:
        said.append((fields["stream"], fields["line"]))

    relay._say = say  # type: ignore[method-assign]

    async def main() -> None:
        stream = asyncio.StreamReader()
        stream.feed_data(b"a" * (200 << 10) + b"\n")
        task = asyncio.create_task(relay._relay(stream, "stderr"))
        stream.feed_data(b"\r  5%\r 10%")  # the first state goes out at once
        await asyncio.sleep(0.1)
        stream.feed_data(b"\r 20%")
        await asyncio.sleep(1.5)  # the bar stalls: its latest state goes out within a second or so
        stream.feed_data(b"\r100%\n")
        stream.feed_eof()
        await asyncio.wait_for(task, 10)

    asyncio.run(main())
    pieces = [line for _, line in said if line.startswith("a")]
    assert [len(p) for p in pieces] == [64 << 10] * 3 + [8 << 10]
    assert [line for _, line in said if not line.startswith("a")] == [" 10%", " 20%", "100%"]
    assert {stream for stream, _ in said} == {"stderr"}


# ------------------------------------------------------------------ the writer


class _Blocked:
    """A stdout that blocks every write until released, as a pipe nobody reads does."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.text: list[str] = []

    def write(self, text: str) -> int:
        self.release.wait(30)
        self.text.append(text)
        return len(text)

    def flush(self) -> None:
        pass


def test_writer_drops_lines_beyond_its_bound_and_says_how_many_once_it_can_write(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    blocked = _Blocked()
    monkeypatch.setattr(sys, "stdout", blocked)
    writer = output._Writer(max_lines=10, max_chars=1 << 20)
    writer.acquire()
    try:
        writer.put("stdout", "first\n")
        wait_for(lambda: writer._writing, 10, 'the writer to be stuck in "first"')
        begun = time.monotonic()
        for i in range(1000):
            writer.put("stdout", f"line {i}\n")  # never blocks
        assert time.monotonic() - begun < 5
        assert writer._dropped == 990
        with caplog.at_level(logging.WARNING, logger="bigmachine.systems.output"):
            blocked.release.set()

            async def drain() -> bool:
                return await writer.drained(10)

            assert asyncio.run(drain())
    finally:
        blocked.release.set()
        writer.release()
    assert "".join(blocked.text) == "first\n" + "".join(f"line {i}\n" for i in range(10))
    assert "dropped 990 lines of machine output: the driver's stdout is not being read" in caplog.text
    wait_for(lambda: writer._thread is None, 10, "the writer to end, its last user gone")


def test_writer_bounds_characters_too(monkeypatch: pytest.MonkeyPatch) -> None:
    blocked = _Blocked()
    monkeypatch.setattr(sys, "stdout", blocked)
    writer = output._Writer(max_lines=1000, max_chars=100)
    writer.acquire()
    try:
        writer.put("stdout", "a" * 60)
        # Stuck writing the first: a batch taken meanwhile would reset the count of dropped lines.
        wait_for(lambda: writer._writing, 10, "the writer to be stuck in its first line")
        writer.put("stdout", "b" * 60)
        writer.put("stdout", "c" * 60)  # 120 > 100 characters queued: dropped
        assert writer._dropped == 1
    finally:
        blocked.release.set()
        writer.release()
    wait_for(lambda: writer._thread is None, 10, "the writer to end before stdout is restored")


# ------------------------------------------------------------------ real machines


class _Sink:
    """A stdout that keeps what it is written, counting the ``x`` characters."""

    def __init__(self) -> None:
        self.xs = 0
        self.lines: list[str] = []
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        with self._lock:
            self.xs += text.count("x")
            self.lines += (line for line in text.splitlines() if "x" not in line)
        return len(text)

    def flush(self) -> None:
        pass

    def of(self, prefix: str) -> list[str]:
        with self._lock:
            return [line.removeprefix(prefix + ": ") for line in self.lines if line.startswith(prefix + ": ")]


@pytest.fixture(scope="module")
def machine(local_session: bigmachine.B) -> bigmachine.Machine:
    (m,) = local_session.start(1, bigmachine.Services(Output=Output(), Echo=Echo()))
    assert m.wait(RUNNING, timeout=60) == RUNNING
    return m


@pytest.fixture
def sink(monkeypatch: pytest.MonkeyPatch) -> _Sink:
    """The driver's stdout for the test; set in the test's body (pytest sets its own at each phase)."""
    return _Sink()


def _prefix(m: bigmachine.Machine) -> str:
    return m.addr.removeprefix("https://").rstrip("/")


def test_64_mib_without_newlines_is_forwarded_while_calls_go_on(machine: bigmachine.Machine, sink: _Sink, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 9: 64 MiB without a newline took 54 s of driver CPU, quadratic, on the session loop."""
    monkeypatch.setattr(sys, "stdout", sink)
    spew = machine.submit("Output.spew", 64 * MiB)
    loop = machine._session.loop
    round_trips = 0
    while not spew.done():  # the session loop stays free: calls through it come back meanwhile
        assert asyncio.run_coroutine_threadsafe(machine.acall("Echo.echo", round_trips), loop).result(10) == round_trips
        assert machine.call("Echo.add", round_trips, 1, timeout=10) == round_trips + 1
        round_trips += 1
    assert spew.result(timeout=120) == 64 * MiB
    assert round_trips >= 1
    deadline = time.monotonic() + 60
    while sink.xs < 64 * MiB and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sink.xs == 64 * MiB
    assert len(machine._session._instances[machine].output[-1][2]) <= output.RECENT_CHARS  # debug pages: cut


def test_progress_bar_shows_its_latest_state_not_every_update(machine: bigmachine.Machine, sink: _Sink, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdout", sink)
    machine.call("Output.progress", 5000)
    prefix = _prefix(machine)
    deadline = time.monotonic() + 10
    while "100% done" not in sink.of(prefix) and time.monotonic() < deadline:
        time.sleep(0.05)
    shown = sink.of(prefix)
    assert shown[-1] == "100% done"
    assert len(shown) <= 10, shown  # not 5,001 lines: the first state, maybe one a second, the last


def test_progress_bar_that_stalls_shows_its_latest_state_within_a_second_or_so(
        machine: bigmachine.Machine, sink: _Sink, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdout", sink)
    machine.call("Output.stall", " 41%", " 42%")
    prefix = _prefix(machine)
    deadline = time.monotonic() + 5
    while " 42%" not in sink.of(prefix) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sink.of(prefix)[-1] == " 42%"
    machine.call("Output.stall", "\n")  # end the line: the next test starts clean


DRIVER = textwrap.dedent(
    """
    import logging, sys, time
    sys.path.insert(0, {tests!r})
    import bigmachine
    from bigmachine.systems import Local
    from services import Output

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # A 3 s keepalive timeout: stdout stays blocked well past it (the default, 60 s, would hide a blocked loop).
    with bigmachine.start(Local(keepalive_period=0.5, keepalive_timeout=3.0, keepalive_rpc_timeout=1.5)) as b:
        (m,) = b.start(1, bigmachine.Services(Output=Output()))
        m.wait(bigmachine.RUNNING, timeout=60)
        m.call("Output.chatter", {seconds}, 5000)  # lines a second: 10,000 queued fill the bound in 2 s of 7.5 blocked
        print("chattering", file=sys.stderr, flush=True)
        ok = 0
        for i in range({seconds}):
            ok += m.call("Output.add", i, 1, timeout=10) == i + 1
            time.sleep(1)
        print("calls ok", ok, "state", m.state.name, file=sys.stderr, flush=True)
    """
)


def test_driver_stdout_nobody_reads_keeps_machines_and_calls(tmp_path: Path) -> None:
    """Issue 9: the session loop blocked writing forwarded output; no keepalive went out; every machine was lost.

    Blocked here for 2.5 keepalive timeouts; the soak test (tests/reliability/test_soak.py) blocks it for 20 s."""
    seconds = 10
    script = tmp_path / "driver.py"
    script.write_text(DRIVER.format(tests=str(Path(__file__).parent), seconds=seconds))
    err_path = tmp_path / "stderr"
    with err_path.open("w") as err:
        driver = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=err)
    try:
        deadline = time.monotonic() + 60
        while "chattering" not in err_path.read_text() and time.monotonic() < deadline and driver.poll() is None:
            time.sleep(0.1)
        assert "chattering" in err_path.read_text(), err_path.read_text()
        time.sleep(7.5)  # nobody reads the driver's stdout: its pipe is full within milliseconds
        assert driver.poll() is None, err_path.read_text()
        out, _ = driver.communicate(timeout=120)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.communicate()
    err_text = err_path.read_text()
    assert driver.returncode == 0, err_text
    assert f"calls ok {seconds} state RUNNING" in err_text, err_text
    assert "dropped" in err_text and "lines of machine output: the driver's stdout is not being read" in err_text
    assert b"y" * 91 in out  # what was not dropped was forwarded
