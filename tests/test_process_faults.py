"""Processes dying: a SIGKILLed machine, a SIGKILLed driver. Nothing waits forever, nothing is left."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from services import Echo

import bigmachine
from bigmachine import RUNNING, STOPPED
from bigmachine.systems import Local


def test_killed_machine_fails_pending_calls_at_once() -> None:
    with bigmachine.start(Local()) as b:
        (m,) = b.start(1, bigmachine.Services(Echo=Echo()))
        m.wait(RUNNING, timeout=60)
        pid = m.call("Echo.pid")
        errors: list[BaseException] = []

        def pending() -> None:
            try:
                m.call("Echo.sleep", 60)
            except BaseException as exc:
                errors.append(exc)

        waiter = threading.Thread(target=pending)
        waiter.start()
        future = m.submit("Echo.sleep", 60)
        time.sleep(0.3)
        begun = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        waiter.join(10)
        with pytest.raises(bigmachine.MachineStopped) as info:
            future.result(10)
        detected = time.monotonic() - begun
        assert detected < 10, "a dead machine is detected within 10 s"
        assert m.state == STOPPED and "SIGKILL" in str(m.err)
        assert isinstance(errors[0], bigmachine.MachineStopped) and "SIGKILL" in str(errors[0].__cause__)
        assert info.value.machine == m.addr


def test_shutdown_leaves_no_machine_process() -> None:
    b = bigmachine.start(Local())
    machines = b.start(3, bigmachine.Services(Echo=Echo()))
    pids = [m.call("Echo.pid", timeout=60) for m in machines]
    tmpdir = b.tmpdir
    b.shutdown()
    assert all(m.state == STOPPED for m in machines)
    assert not any(psutil.pid_exists(pid) for pid in pids)
    assert not tmpdir.exists()


DRIVER = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {tests!r})
    import bigmachine
    from services import Echo
    b = bigmachine.start()
    machines = b.start(2, bigmachine.Services(Echo=Echo()))
    print(*[m.call("Echo.pid", timeout=60) for m in machines], b.tmpdir, flush=True)
    time.sleep(600)
    """
)


@contextlib.contextmanager
def _driver(script: Path) -> Iterator[tuple[subprocess.Popen[str], list[str]]]:
    """Runs a driver script; yields it and the words of its first line, the last its session's temp dir.
    Kills it at the end and removes the temp dir, in case the test failed before the janitor did."""
    driver = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    words = driver.stdout.readline().split()  # type: ignore[union-attr]
    try:
        yield driver, words
    finally:
        driver.kill()
        driver.wait()
        driver.stdout.close()  # type: ignore[union-attr]
        if words:
            shutil.rmtree(words[-1], ignore_errors=True)


@pytest.mark.parametrize("sig", [signal.SIGKILL])
def test_killed_driver_leaves_no_machine_behind(tmp_path: Path, sig: signal.Signals) -> None:
    script = tmp_path / "driver.py"
    script.write_text(DRIVER.format(tests=str(Path(__file__).parent)))
    with _driver(script) as (driver, (*pids, tmpdir)):
        machine_pids = [int(p) for p in pids]
        assert all(psutil.pid_exists(p) for p in machine_pids)
        driver.send_signal(sig)
        driver.wait(10)
        begun = time.monotonic()
        gone, alive = psutil.wait_procs([psutil.Process(p) for p in machine_pids if psutil.pid_exists(p)], timeout=30)
        assert not alive, f"machines still running 30 s after the driver was killed: {alive}"
        assert time.monotonic() - begun < 30
        while Path(tmpdir).exists() and time.monotonic() - begun < 30:
            time.sleep(0.01)
        assert not Path(tmpdir).exists(), "the killed driver's temp dir (its keys) was left behind"


BARE_DRIVER = textwrap.dedent(
    """
    import time
    import bigmachine
    from bigmachine.systems import {system}
    b = bigmachine.start({system}())
    print(b.tmpdir, flush=True)
    time.sleep(600)
    """
)


@pytest.mark.parametrize("system", ["Local", "Testing"])
def test_a_driver_killed_before_its_first_machine_leaves_no_temp_dir(tmp_path: Path, system: str) -> None:
    """The session's keys are written as it begins; its janitor removes them when the driver is killed, whether
    or not a machine was ever started, on any system (was: only once ``Local`` had started one)."""
    script = tmp_path / "driver.py"
    script.write_text(BARE_DRIVER.format(system=system))
    with _driver(script) as (driver, (tmpdir,)):
        assert Path(tmpdir, "driver").is_dir()
        children = psutil.Process(driver.pid).children(recursive=True)  # the janitor, and Local's fork server
        driver.kill()
        driver.wait(10)
        _, alive = psutil.wait_procs(children, timeout=10)
        assert not alive, f"processes left 10 s after the driver was killed: {alive}"
        assert not Path(tmpdir).exists(), "the killed driver's temp dir (its keys) was left behind"
