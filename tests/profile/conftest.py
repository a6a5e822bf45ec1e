"""Fixtures of the profile tests: no thread may outlive a test; a `go` toolchain if any."""

from __future__ import annotations

import glob
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    """Fails a test that leaves a thread running (sampler, heap timer, pool, loop)."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 2.0
    while True:
        leaked = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        if not leaked or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    assert not leaked, f"threads left running: {[t.name for t in leaked]}"


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
        pytest.skip("`go` is not installed (apt install golang-go); pprof not checked by go")
    home = tmp_path / "gohome"
    env = dict(os.environ)
    env.update(
        HOME=str(home),
        GOPATH=str(home / "go"),
        GOCACHE=str(home / "cache"),
        GOFLAGS="-mod=mod",
        GOTOOLCHAIN="local",
        GOPROXY="off",
        PPROF_TMPDIR=str(home / "pprof"),
    )
    return [go, "tool", "pprof"], env
