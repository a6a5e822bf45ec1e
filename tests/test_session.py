"""session.py: what B promises beyond starting machines: dialling, its instances, shutdown hooks."""

from __future__ import annotations

import os
import tempfile
import threading
from typing import Any

import psutil
import pytest

import bigmachine
from bigmachine import RUNNING, STOPPED
from bigmachine import tls
from bigmachine.errors import Error
from bigmachine.systems import Local, System


class Echo:
    def echo(self, value: object) -> object:
        return value


class SystemProbe:
    """Tells what ``b.system`` is in the machine's own session."""

    def init(self, b: bigmachine.B) -> None:
        self.b = b

    def describe(self) -> dict[str, Any]:
        system = self.b.system
        return {"is_system": isinstance(system, System), "name": system.name, "str": str(system),
                "repr": repr(system), "keepalive_timeout": system.keepalive_timeout}

    async def launch(self) -> str:
        try:
            await self.b.system.launch(self.b, [], {})
        except Error as exc:
            return str(exc)
        return "launched"


def test_dialling_an_owned_machine_gives_that_machine(testing_session: bigmachine.B) -> None:
    (m,) = testing_session.start(1, bigmachine.Services(E=Echo()))
    assert m.wait(RUNNING, timeout=30) == RUNNING
    assert testing_session.dial(m.addr) is m
    assert testing_session.instance(m) is not None  # the system's view of it (here, a thread)


def test_a_dialled_address_gives_the_same_object_until_it_stops_then_a_fresh_one(testing_session: bigmachine.B) -> None:
    unreachable = "https://127.0.0.1:9/"  # nothing listens: the probe stops it
    first = testing_session.dial(unreachable)
    assert testing_session.dial(unreachable) is first or first.state == STOPPED
    assert first.wait(STOPPED, timeout=30) == STOPPED
    second = testing_session.dial(unreachable)
    assert second is not first and not second.owned
    assert testing_session.instance(second) is None  # dialled: no instance of this session's


def test_shutdown_runs_its_hooks_first_newest_first_and_once() -> None:
    ran: list[str] = []
    b = bigmachine.start(bigmachine.systems.Testing())
    b.on_shutdown(lambda: ran.append("first registered"))
    b.on_shutdown(lambda: ran.append("last registered"))
    assert not b.is_shut_down
    b.shutdown()
    b.shutdown()
    assert ran == ["last registered", "first registered"] and b.is_shut_down


def test_a_machine_sees_the_drivers_system_as_a_system_of_that_name(testing_session: bigmachine.B) -> None:
    (m,) = testing_session.start(1, bigmachine.Services(Probe=SystemProbe()))
    assert m.wait(RUNNING, timeout=30) == RUNNING
    driver = testing_session.system
    assert m.call("Probe.describe") == {"is_system": True, "name": driver.name, "str": driver.name,
                                        "repr": driver.name, "keepalive_timeout": driver.keepalive_timeout}
    assert "machines cannot start machines on the driver's testing system" in m.call("Probe.launch")




def test_a_session_that_fails_after_its_system_started_leaves_nothing(monkeypatch: Any, tmp_path: Any) -> None:
    """Local starts its fork server before the session makes its certificates; a failure there ends it too."""
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("no certificates today")

    threads = set(threading.enumerate())
    monkeypatch.setattr(tls, "Authority", refuse)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with pytest.raises(RuntimeError, match="no certificates today"):
        bigmachine.start(Local())
    assert not [p for p in psutil.Process().children() if "--fork-server" in p.cmdline()], "the fork server is left"
    assert [t for t in threading.enumerate() if t not in threads] == []  # the session's loop thread ended
    assert os.listdir(tmp_path) == []  # and its temporary directory is gone
