"""The leak guard itself (tests/conftest.py): a test that leaves a process, thread, fd or temp dir
behind fails, with a message naming what was left; a test that cleans up passes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

CONFTEST = Path(__file__).resolve().parents[1] / "conftest.py"

INNER_TESTS = '''
import os, subprocess, sys, tempfile, threading, time

def test_clean():
    t = threading.Thread(target=time.sleep, args=(0.05,), name="short-lived")
    t.start()
    t.join()

def test_leaves_a_child_process():
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])

def test_leaves_a_thread():
    threading.Thread(target=time.sleep, args=(5,), name="leaky-thread", daemon=True).start()

def test_leaves_a_temp_dir():
    tempfile.mkdtemp(prefix="bigmachine-leak-")

def test_leaves_file_descriptors():
    global KEPT
    KEPT = [open(os.devnull) for _ in range(5)]
'''


def test_leak_guard_fails_tests_that_leak(pytester: pytest.Pytester) -> None:
    guard = CONFTEST.read_text()
    assert "_SETTLE = 10.0" in guard
    pytester.makeconftest(guard.replace("_SETTLE = 10.0", "_SETTLE = 0.5"))  # the same guard, waiting less
    pytester.makepyfile(test_inner=INNER_TESTS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:randomly", timeout=60)
    result.assert_outcomes(passed=5, errors=4)  # each leak fails the test's teardown
    sections = {}  # test name -> its "ERROR at teardown" section
    for section in result.stdout.str().split("ERROR at teardown of ")[1:]:
        name, _, text = section.partition(" ")
        sections[name] = text.split("short test summary info")[0]
    assert sorted(sections) == ["test_leaves_a_child_process", "test_leaves_a_temp_dir", "test_leaves_a_thread",
                                "test_leaves_file_descriptors"], sorted(sections)
    wanted = {
        "test_leaves_a_child_process": r"child processes left running: \[\d+\]",
        "test_leaves_a_thread": r"threads left running: \['leaky-thread'\]",
        "test_leaves_a_temp_dir": r"temp dirs left behind: \['[^']*bigmachine-leak-\w+'\]",
        "test_leaves_file_descriptors": r"file descriptors grew from \d+ to \d+",
    }
    for name, pattern in wanted.items():
        assert re.search(pattern, sections[name]), f"{name}: {sections[name][-1500:]}"
