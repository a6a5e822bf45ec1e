"""Shared fixtures, and a guard that fails any test leaving processes, threads, fds or temp dirs behind."""

from __future__ import annotations

import glob
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

import bigmachine
from bigmachine.systems import Local, Testing

_SETTLE = 10.0  # seconds a test's leftovers get to go away by themselves (threads winding down)


def pytest_configure(config: pytest.Config) -> None:
    """Gives this run a temp dir of its own, so the leak check sees only what this run made."""
    root = tempfile.mkdtemp(prefix="bigmachine-tests-")
    os.environ["TMPDIR"] = root  # machines and drivers started by the tests inherit it
    tempfile.tempdir = root
    config.add_cleanup(lambda: shutil.rmtree(root, ignore_errors=True))


def _our_temp_dirs() -> set[str]:
    return set(glob.glob(os.path.join(tempfile.gettempdir(), "bigmachine-*")))


def _is_ours(process: psutil.Process) -> bool:
    """Whether a child process is one a test should have ended (not multiprocessing's resource tracker)."""
    try:
        return "resource_tracker" not in " ".join(process.cmdline())
    except psutil.Error:
        return False


def _snapshot() -> tuple[set[int], set[str], int, set[str]]:
    me = psutil.Process()
    children = {p.pid for p in me.children(recursive=True) if _is_ours(p)}
    threads = {t.name for t in threading.enumerate() if t.is_alive()}
    return children, threads, me.num_fds(), _our_temp_dirs()


@pytest.fixture(autouse=True)
def no_leaks(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fails the test if it leaves child processes, threads, file descriptors or temp dirs behind."""
    if _uses_shared_fixtures(request):
        yield  # machines shared by a module's tests outlive each test: checked once per module
        return
    yield from _check_leaks()


@pytest.fixture(autouse=True, scope="module")
def no_leaks_per_module() -> Iterator[None]:
    """The same check around a whole module, which covers its shared sessions."""
    yield from _check_leaks()


def _uses_shared_fixtures(request: pytest.FixtureRequest) -> bool:
    """Whether the test uses a module- or session-scoped fixture (other than the leak checks)."""
    for name, defs in request.node._fixtureinfo.name2fixturedefs.items():
        if name not in ("no_leaks_per_module",) and any(d.scope in ("module", "package", "session") for d in defs):
            return True
    return False


def _check_leaks() -> Iterator[None]:
    children, threads, fds, dirs = _snapshot()
    yield
    deadline = time.monotonic() + _SETTLE
    while True:
        now_children, now_threads, now_fds, now_dirs = _snapshot()
        problems = []
        if extra := now_children - children:
            problems.append(f"child processes left running: {sorted(extra)}")
        if extra := {t for t in now_threads - threads if not t.startswith(("asyncio_", "ThreadPoolExecutor"))}:
            problems.append(f"threads left running: {sorted(extra)}")
        if extra := now_dirs - dirs:
            problems.append(f"temp dirs left behind: {sorted(extra)}")
        if now_fds > fds + 2:  # a little slack for lazily opened files (e.g. /dev/urandom)
            problems.append(f"file descriptors grew from {fds} to {now_fds}")
        if not problems or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    if problems:
        for pid in now_children - children:  # don't let one leak cascade into every later test
            try:
                psutil.Process(pid).kill()
            except psutil.NoSuchProcess:
                pass
        pytest.fail("; ".join(problems), pytrace=False)


@pytest.fixture
def testing_system() -> Testing:
    return Testing(keepalive_period=0.2, keepalive_timeout=1.5, keepalive_rpc_timeout=0.5)


@pytest.fixture
def testing_session(testing_system: Testing) -> Iterator[bigmachine.B]:
    with bigmachine.start(testing_system) as b:
        yield b


@pytest.fixture(scope="module")
def local_session() -> Iterator[bigmachine.B]:
    """One Local session shared by a module's tests (machines are processes: slow to start)."""
    with bigmachine.start(Local()) as b:
        yield b


def _find_go() -> str | None:
    """The `go` binary: on PATH, or where Debian's golang-go puts it."""
    found = shutil.which("go")
    if found:
        return found
    candidates = sorted(glob.glob("/usr/lib/go*/bin/go"))
    return candidates[-1] if candidates else None


@pytest.fixture
def go_pprof(tmp_path: Path) -> tuple[list[str], dict[str, str]]:
    """Command and environment to run `go tool pprof` offline, or a skip."""
    go = _find_go()
    if go is None:
        pytest.skip("`go` is not installed (apt install golang-go); pprof output not checked by go")
    home = tmp_path / "gohome"
    env = dict(os.environ)
    env.update(HOME=str(home), GOPATH=str(home / "go"), GOCACHE=str(home / "cache"), GOFLAGS="-mod=mod",
               GOTOOLCHAIN="local", GOPROXY="off", PPROF_TMPDIR=str(home / "pprof"))
    return [go, "tool", "pprof"], env
