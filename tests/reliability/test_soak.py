"""The soak test (issue 9): 8 Local machines under every kind of load at once, two of them killed.

The driver (tests/reliability/soak_driver.py) runs as its own process whose stdout is a pipe
nobody reads for the first 20 s, as with ``prog | less`` left paused. It asserts that no
machine died that was not killed, that every call on a live machine got its own right
answer, and that nothing is left behind. It runs 30 s in the default suite (about 37 s in all;
every load, the unread stdout and both kills fit in it, and a 30 s run makes ~25,000 calls).
For a long run set ``BIGMACHINE_SOAK_SECONDS`` (e.g. ``BIGMACHINE_SOAK_SECONDS=600 pytest
tests/reliability/test_soak.py``); ``BIGMACHINE_SOAK_SEED`` replays a run (the seed is printed).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tagged import tagged_processes

SECONDS = float(os.environ.get("BIGMACHINE_SOAK_SECONDS", "30"))
UNREAD = 20.0  # seconds the driver's stdout goes unread

pytestmark = pytest.mark.timeout(SECONDS + 300)


def test_soak(tmp_path: Path) -> None:
    seed = int(os.environ.get("BIGMACHINE_SOAK_SEED") or random.randrange(2**32))
    print(f"soak seed {seed} (replay with BIGMACHINE_SOAK_SEED={seed}), {SECONDS:g} s")
    report = tmp_path / "report.json"
    tag = f"soak-{seed}-{time.monotonic_ns()}"
    env = {**os.environ, "SOAK_SEED": str(seed), "SOAK_SECONDS": str(SECONDS), "SOAK_REPORT": str(report),
           "BIGMACHINE_TEST_TAG": tag}
    errors = (tmp_path / "stderr.txt").open("wb")
    driver = subprocess.Popen([sys.executable, str(Path(__file__).parent / "soak_driver.py")], env=env,
                              stdout=subprocess.PIPE, stderr=errors)  # as `prog | less`: stdout piped, stderr not
    try:
        time.sleep(UNREAD)  # nobody reads the pipe: the driver must not stall (its machines print all along)
        assert driver.poll() is None, "the driver ended early"
        output, _ = driver.communicate(timeout=SECONDS + 240)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.communicate()
        leftovers = [p for p in tagged_processes(tag) if p.pid != driver.pid]
        for process in leftovers:
            process.kill()
        errors.close()
    text = (tmp_path / "stderr.txt").read_text(errors="replace")
    assert driver.returncode == 0, text[-3000:]
    result = json.loads(report.read_text())
    print(json.dumps(result, indent=1))
    counts = result["counts"]
    assert not result["false_deaths"], f"seed {seed}: machines declared dead that were not killed: {result['false_deaths']}"
    assert not result["problem_count"], f"seed {seed}: wrong answers or errors: {result['problems']}"
    assert counts.get("kills") == 2, counts
    assert counts.get("short", 0) + counts.get("task", 0) >= 5000, counts
    for kind in ("long", "stream_down", "stream_up", "stream_both", "dial", "callback", "chatter"):
        assert counts.get(kind, 0) > 0, (kind, counts)
    assert not result["threads_left"], result["threads_left"]
    assert not leftovers, f"processes left behind: {leftovers}"
    assert output, "nothing was forwarded to the driver's stdout"
    assert "dropped" in text, "the driver never said it dropped output lines while its stdout was not read"
