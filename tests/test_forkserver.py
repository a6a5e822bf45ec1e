"""Local machines forked from the fork server behave as fresh processes would (bigmachine/runtime/forks.py).

What a fork could get wrong: a stale copy of the user's modules, the environment, process
groups, exit statuses, and what happens when the server itself goes. The rest (output,
PR_SET_PDEATHSIG, the janitor) is tested on Local machines in tests/test_local.py and
tests/reliability/, which are forked too.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

import bigmachine
from bigmachine import RUNNING, STOPPED
from bigmachine.systems import Local
from bigmachine.systems.forkserver import ForkServer

pytestmark = pytest.mark.timeout(120)


class Probe:
    """What a machine process can tell about itself."""

    def pid(self) -> int:
        return os.getpid()

    def ids(self) -> tuple[int, int, int]:
        return os.getppid(), os.getpgid(0), os.getsid(0)

    def hash_of(self, text: str) -> int:
        return hash(text)

    def version_of(self, module: str) -> str:
        return str(__import__(module).VERSION)

    def exit(self, code: int) -> None:
        os._exit(code)


def _fork_server() -> psutil.Process:
    (server,) = [p for p in psutil.Process().children() if "--fork-server" in p.cmdline()]
    return server


def _start(b: bigmachine.B, n: int, *params: bigmachine.Environ) -> list[bigmachine.Machine]:
    machines = b.start(n, bigmachine.Services(Probe=Probe()), *params)
    for m in machines:
        assert m.wait(RUNNING, timeout=60) == RUNNING, m.err
    return machines


def _gone(pid: int, seconds: float) -> bool:
    try:
        psutil.Process(pid).wait(seconds)
    except psutil.NoSuchProcess:
        pass
    except psutil.TimeoutExpired:
        return False
    return True


def test_machines_are_forked_by_one_server_and_lead_their_own_group_and_session() -> None:
    with bigmachine.start(Local()) as b:
        machines = _start(b, 2)
        server = _fork_server()
        assert server.ppid() == os.getpid()
        for m in machines:
            pid = m.call("Probe.pid")
            assert m.call("Probe.ids") == (server.pid, pid, pid)
        _start(b, 1)
        assert [p.pid for p in psutil.Process().children() if "--fork-server" in p.cmdline()] == [server.pid]
    assert _gone(server.pid, 10), "the fork server outlived its session"


def test_a_machine_imports_the_users_modules_as_they_are_when_it_starts(tmp_path: Path) -> None:
    (tmp_path / "forked_user_module.py").write_text("VERSION = 1\n")
    sys.path.insert(0, str(tmp_path))
    try:
        with bigmachine.start(Local()) as b:
            (first,) = _start(b, 1)
            assert first.call("Probe.version_of", "forked_user_module") == "1"
            (tmp_path / "forked_user_module.py").write_text("VERSION = 2  # changed after the server started\n")
            (second,) = _start(b, 1)
            assert second.call("Probe.version_of", "forked_user_module") == "2"
    finally:
        sys.path.remove(str(tmp_path))


def test_a_variable_read_at_interpreter_start_gets_a_fresh_process() -> None:
    """The fork server's interpreter started without it: a fork would not have what it sets."""
    expected = int(subprocess.run([sys.executable, "-c", "print(hash('bigmachine'))"], capture_output=True, text=True,
                                  env={**os.environ, "PYTHONHASHSEED": "1234"}, check=True).stdout)
    with bigmachine.start(Local()) as b:
        (forked,) = _start(b, 1)
        (fresh,) = _start(b, 1, bigmachine.Environ(["PYTHONHASHSEED=1234"]))
        assert forked.call("Probe.ids")[0] == _fork_server().pid
        assert fresh.call("Probe.ids")[0] == os.getpid()
        assert fresh.call("Probe.hash_of", "bigmachine") == expected


def test_a_forked_machine_reports_how_it_ended() -> None:
    with bigmachine.start(Local()) as b:
        exits, killed = _start(b, 2)
        pid = killed.call("Probe.pid")
        with pytest.raises(bigmachine.MachineStopped):
            exits.call("Probe.exit", 3)
        os.kill(pid, signal.SIGKILL)
        for m in (exits, killed):
            assert m.wait(STOPPED, timeout=30) == STOPPED
        assert "exited with status 3" in str(exits.err), exits.err
        assert f"machine process {pid} was killed by SIGKILL" in str(killed.err), killed.err
        assert b.instance(killed).process.returncode == -signal.SIGKILL  # type: ignore[union-attr]


def test_machines_end_with_the_fork_server_and_later_ones_start_fresh() -> None:
    with bigmachine.start(Local()) as b:
        machines = _start(b, 2)
        pids = [m.call("Probe.pid") for m in machines]
        server = _fork_server()
        server.kill()
        for m in machines:
            assert m.wait(STOPPED, timeout=30) == STOPPED
            assert isinstance(m.err, bigmachine.MachineStopped) and "SIGKILL" in str(m.err), m.err
        assert all(_gone(pid, 10) for pid in pids)
        (later,) = _start(b, 1)
        assert later.call("Probe.ids")[0] == os.getpid()
    assert _gone(server.pid, 10)


def test_a_local_shared_by_two_sessions_forks_each_sessions_machines_from_its_own_server() -> None:
    """A fork server dies with the loop thread that started it: one session's end must not end the other's machines."""
    local = Local()
    with bigmachine.start(local) as second:
        with bigmachine.start(local) as first:
            (early,) = _start(first, 1)
            (late,) = _start(second, 1)
            assert early.call("Probe.ids")[0] != late.call("Probe.ids")[0]
        time.sleep(0.5)  # what ended with the first session has ended by now
        assert late.state == RUNNING and late.call("Probe.pid", timeout=10) > 0
        assert second.tmpdir.is_dir()  # the janitor they share removes only a killed driver's temp dirs
        late.cancel()
        (later,) = _start(second, 1)  # a machine of the second session when the first has none left
        assert later.call("Probe.pid", timeout=10) > 0


def test_the_fork_server_starts_with_the_session_before_any_machine() -> None:
    """Started ahead, it boots while the session makes its certificates: a first ``b.start`` only forks."""
    local = Local()
    with bigmachine.start(local) as b:
        server = _started_server(local, b)
        (machine,) = _start(b, 1)
        assert machine.call("Probe.ids")[0] == server.pid
    assert _gone(server.pid, 10), "the fork server outlived its session"


def test_import_bigmachine_and_local_need_no_asyncio_so_the_server_boots_while_the_session_imports() -> None:
    """``start`` starts the server before importing the session: the driver's heavy imports overlap its boot."""
    script = """
import json, sys, time
import bigmachine
from bigmachine import driver
local = bigmachine.systems.Local()
local.prepare()
ahead = local._started.process.pid
heavy = [m for m in ("asyncio", "ssl", "cloudpickle", "cryptography", "bigmachine.session") if m in sys.modules]
with bigmachine.start(local) as b:
    while b.loop not in local._launcher._forks:
        time.sleep(0.01)
    print(json.dumps({"heavy": heavy, "ahead": ahead, "server": local._launcher._forks[b.loop].process.pid}))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True).stdout
    seen = json.loads(out.splitlines()[-1])
    assert seen["heavy"] == []
    assert seen["server"] == seen["ahead"]
    assert _gone(seen["ahead"], 10)


def test_a_driver_killed_right_after_starting_the_server_ahead_leaves_no_server() -> None:
    """Killed while the server still boots: it finds its parent gone (die_with_parent) or its socket closed."""
    script = "import os, signal, bigmachine\nbigmachine.systems.Local().prepare()\nos.kill(os.getpid(), signal.SIGKILL)\n"
    driver = subprocess.Popen([sys.executable, "-c", script])
    assert driver.wait(60) == -signal.SIGKILL
    deadline = time.monotonic() + 10
    while servers := [p for p in psutil.process_iter(["cmdline"])
                      if p.info["cmdline"] and p.info["cmdline"][-3:-2] == ["--fork-server"]
                      and p.info["cmdline"][-1] == str(driver.pid)]:
        assert time.monotonic() < deadline, f"the fork server outlived its killed driver: {servers}"
        time.sleep(0.05)


def test_a_server_started_ahead_forks_the_sessions_machines_and_is_the_only_one() -> None:
    local = Local()
    local.prepare()
    assert local._started is not None
    ahead = local._started.process
    with bigmachine.start(local) as b:  # which prepares again: the server ahead is the session's
        assert _started_server(local, b) is ahead
        (machine,) = _start(b, 1)
        assert machine.call("Probe.ids")[0] == ahead.pid
        assert [p.pid for p in psutil.Process().children() if "--fork-server" in p.cmdline()] == [ahead.pid]
    assert _gone(ahead.pid, 10), "the fork server outlived its session"


def test_a_server_started_ahead_of_a_change_to_the_environment_is_ended_and_another_started() -> None:
    """Machines forked from it would not be what a fresh interpreter started now would be."""
    local = Local()
    local.prepare()
    assert local._started is not None
    ahead = local._started.process
    os.environ["PYTHONBIGMACHINETEST"] = "changed"
    try:
        with bigmachine.start(local) as b:
            server = _started_server(local, b)
            assert server.pid != ahead.pid and ahead.returncode == -signal.SIGKILL
            (machine,) = _start(b, 1)
            assert machine.call("Probe.ids")[0] == server.pid
    finally:
        del os.environ["PYTHONBIGMACHINETEST"]


def test_a_session_started_on_a_thread_that_ends_keeps_its_fork_server() -> None:
    """The server dies with the thread that starts it (PR_SET_PDEATHSIG): not the caller's, there, but the loop's."""
    local = Local()
    started: list[tuple[bigmachine.B, bigmachine.Machine]] = []

    def begin() -> None:
        b = bigmachine.start(local)
        (first,) = _start(b, 1)  # the server has booted, and armed its PR_SET_PDEATHSIG, before this thread ends
        started.append((b, first))

    starter = threading.Thread(target=begin)
    starter.start()
    starter.join()
    ((b, first),) = started
    with b:
        server = _started_server(local, b)
        (second,) = _start(b, 1)
        assert first.call("Probe.ids")[0] == second.call("Probe.ids")[0] == server.pid
        assert server.poll() is None


def _started_server(local: Local, b: bigmachine.B) -> subprocess.Popen[bytes]:
    """The fork server ``local`` starts for session ``b`` (queued on its loop when the session starts)."""
    deadline = time.monotonic() + 10
    assert local._launcher is not None
    forks = local._launcher._forks
    while b.loop not in forks:
        assert time.monotonic() < deadline, "no fork server started with the session"
        time.sleep(0.01)
    return forks[b.loop].process


def test_a_local_with_a_memory_limit_starts_no_fork_server() -> None:
    """Its machines start as fresh processes (the limit applies from their start): a server would be wasted."""
    with bigmachine.start(Local(memory_limit="1G")) as b:
        (machine,) = _start(b, 1)  # b.start runs on the loop after whatever the session's start queued there
        assert machine.call("Probe.ids")[0] == os.getpid()
        assert not [p for p in psutil.Process().children() if "--fork-server" in p.cmdline()]


def test_a_fork_server_with_no_machines_is_killed_at_shutdown_not_waited_for() -> None:
    """One still booting would see its socket close only after its imports: nothing of its needs winding down."""
    local = Local()
    b = bigmachine.start(local)
    try:
        server = _started_server(local, b)
    finally:
        b.shutdown()
    assert server.returncode == -signal.SIGKILL


def test_shutdown_after_the_fork_server_was_reaped_elsewhere_ends_cleanly() -> None:
    """``Popen.kill`` and ``poll`` reap a server that has just exited: no pidfd can be opened for it after."""
    local = Local()
    with bigmachine.start(local) as b:
        server = _started_server(local, b)
        server.kill()
        server.wait()  # reaped here, before the session's shutdown closes it
    assert server.returncode == -signal.SIGKILL


def test_a_fork_server_that_fails_to_close_still_lets_the_session_end(monkeypatch: pytest.MonkeyPatch) -> None:
    """The failure is the caller's to see, once the janitor and the session's loop have ended too."""
    async def fail(self: ForkServer) -> None:
        self.process.kill()
        self.process.wait()
        raise RuntimeError("the fork server would not close")

    before = {p.pid for p in psutil.Process().children()}
    b = bigmachine.start(Local())
    _start(b, 1)
    monkeypatch.setattr(ForkServer, "aclose", fail)
    with pytest.raises(RuntimeError, match="would not close"):
        b.shutdown()
    left = [p for p in psutil.Process().children() if p.pid not in before]
    assert not left, f"the janitor (or another child) outlived a failed shutdown: {left}"
    assert not b._thread.is_alive() and not b.tmpdir.exists()
