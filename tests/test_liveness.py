"""liveness.py: keepalive timings, and the stacks a held machine dumped."""

from __future__ import annotations

import pytest

from bigmachine.liveness import Liveness, held_stacks

DUMP = [
    (100.0, "stderr", "Timeout (0:00:30)!"),
    (100.0, "stderr", "Thread 0x00007f01 (most recent call first):"),
    (100.0, "stderr", '  File "/srv/work.py", line 12 in hold'),
    (100.0, "stderr", ""),
    (100.0, "stderr", "Current thread 0x00007f02 (most recent call first):"),
    (100.0, "stderr", '  File "/usr/lib/python3.11/asyncio/runners.py", line 118 in run'),
]


def test_timings_are_checked() -> None:
    assert Liveness(2, 60, 10).stack_dump_after == 30
    with pytest.raises(ValueError, match="keepalive_period .* below keepalive_timeout"):
        Liveness(10, 5, 1)
    with pytest.raises(ValueError, match="keepalive_rpc_timeout must be > 0"):
        Liveness(1, 5, 0)


def test_the_last_dump_after_the_given_time_is_found_and_ends_with_its_stacks() -> None:
    output = [(90.0, "stdout", "working"), *DUMP, (101.0, "stdout", "after the dump")]
    stacks = held_stacks(output, since=95.0)
    assert stacks.startswith("Timeout (0:00:30)!") and stacks.endswith("line 118 in run")
    assert "hold" in stacks and "after the dump" not in stacks


def test_no_dump_or_an_older_one_says_nothing() -> None:
    assert held_stacks([(1.0, "stdout", "hello")], since=0.0) == ""
    assert held_stacks(DUMP, since=200.0) == ""
