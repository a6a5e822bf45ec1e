"""How the kernel schedules a machine's threads: batch work unless asked otherwise (runtime/process.py)."""

from __future__ import annotations

import logging
import os
import threading

import pytest

from bigmachine.runtime.process import schedule_as_batch

pytestmark = pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="SCHED_BATCH is Linux's")


def _policy_after(policy: str) -> int:
    """The policy a fresh thread has after ``schedule_as_batch(policy)``: the setting is per thread, so this
    process's other threads keep theirs."""
    seen: list[int] = []

    def run() -> None:
        schedule_as_batch(policy)
        seen.append(os.sched_getscheduler(0))

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    return seen[0]


def test_batch_is_the_default_policy() -> None:
    assert _policy_after("batch") == os.SCHED_BATCH
    assert os.sched_getscheduler(0) == os.SCHED_OTHER  # only the thread that asked


def test_normal_leaves_the_policy_alone() -> None:
    assert _policy_after("normal") == os.SCHED_OTHER


def test_an_unknown_policy_is_named_and_batch_kept(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="bigmachine.machine"):
        assert _policy_after("fifo") == os.SCHED_BATCH
    assert "BIGMACHINE_SCHEDULING='fifo' is neither 'batch' nor 'normal'" in caplog.text
