"""machine.py: a machine's states only increase, and a stopped machine fails calls at once with its cause."""

from __future__ import annotations

import time

import pytest

import bigmachine
from bigmachine import RUNNING, STOPPED


class Echo:
    def echo(self, value: object) -> object:
        return value


def test_stop_is_final_idempotent_and_names_its_cause(testing_session: bigmachine.B) -> None:
    (m,) = testing_session.start(1, bigmachine.Services(E=Echo()))
    assert m.wait(RUNNING, timeout=30) == RUNNING
    cause = RuntimeError("taken down on purpose")
    m.stop(cause)
    m.stop(RuntimeError("a second stop changes nothing"))
    assert m.state == STOPPED and m.err is cause
    begun = time.monotonic()
    with pytest.raises(bigmachine.MachineStopped, match="taken down on purpose") as info:
        m.call("E.echo", 1)
    assert time.monotonic() - begun < 1.0
    assert info.value.__cause__ is cause and info.value.machine == m.addr
    assert m.wait(RUNNING, timeout=0) == STOPPED  # at least RUNNING: STOPPED is past it


class SlowStart:
    def init(self, b: object) -> None:
        time.sleep(1.0)

    def echo(self, value: object) -> object:
        return value


def test_wait_times_out_naming_the_state_it_waited_for(testing_session: bigmachine.B) -> None:
    (m,) = testing_session.start(1, bigmachine.Services(S=SlowStart()))
    with pytest.raises(TimeoutError, match=r"is still STARTING after 0.05 s \(waited for RUNNING\)"):
        m.wait(RUNNING, timeout=0.05)
    assert m.wait(RUNNING, timeout=30) == RUNNING


def test_a_machine_has_three_kinds_of_connection(testing_session: bigmachine.B) -> None:
    (m,) = testing_session.start(1, bigmachine.Services(E=Echo()))
    assert m.wait(RUNNING, timeout=30) == RUNNING
    assert m.call("E.echo", "data") == "data"
    m.mem_info()
    connections = m.connections()
    assert connections["data"] == 1 and 1 <= connections["control"] <= 1 + 4  # the lifeline, and control calls


def test_a_go_spelling_of_a_method_gets_a_hint(testing_session: bigmachine.B) -> None:
    """Go bigmachine's Supervisor methods were CamelCase: ``Supervisor.MemInfo`` says what to call instead."""
    (m,) = testing_session.start(1, bigmachine.Services(E=Echo()))
    with pytest.raises(bigmachine.NotFound, match=r"no public method 'MemInfo'; did you mean 'mem_info'\?; its methods"):
        m.call("Supervisor.MemInfo", timeout=30)
    with pytest.raises(bigmachine.NotFound, match=r"no public method 'nope'; its methods"):
        m.call("E.nope", timeout=30)
