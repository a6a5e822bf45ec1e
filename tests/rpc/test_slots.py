"""ServiceSlots: at most ``limit`` plain methods at once; a freed slot wakes its waiter at once."""

from __future__ import annotations

import threading

import pytest
from waiting import wait_for

from bigmachine.rpc import slots
from bigmachine.rpc.slots import ServiceSlots


def _queued(s: ServiceSlots, n: int) -> None:
    wait_for(lambda: s.load()["queued"] == n)


def test_a_release_wakes_the_queued_call_not_its_periodic_recheck(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(slots, "_RECHECK", 60.0)  # a waiter left to its recheck would outlast the join below
    s = ServiceSlots(1)
    assert s.acquire(lambda: False)
    got: list[bool] = []
    waiter = threading.Thread(target=lambda: got.append(s.acquire(lambda: False)))
    waiter.start()
    _queued(s, 1)
    s.release()
    waiter.join(10)
    assert got == [True] and s.load() == {"queued": 0, "running": 1, "threads": 1}


def test_free_slots_are_taken_without_waiting_and_counted() -> None:
    s = ServiceSlots(2)
    assert s.acquire(lambda: False) and s.acquire(lambda: False)
    assert s.load() == {"queued": 0, "running": 2, "threads": 2}
    s.release()
    s.release()
    assert s.load() == {"queued": 0, "running": 0, "threads": 2}


def test_a_queued_call_whose_caller_left_gives_up_and_close_ends_the_rest() -> None:
    s = ServiceSlots(1)
    assert s.acquire(lambda: False)
    gone = threading.Event()
    results: dict[str, bool] = {}
    left = threading.Thread(target=lambda: results.update(left=s.acquire(gone.is_set)))
    stays = threading.Thread(target=lambda: results.update(stays=s.acquire(lambda: False)))
    left.start()
    _queued(s, 1)
    stays.start()
    _queued(s, 2)
    gone.set()
    left.join(10)
    s.close()
    stays.join(10)
    assert results == {"left": False, "stays": False} and s.load()["queued"] == 0
    assert not s.acquire(lambda: False)  # closed: nothing starts
