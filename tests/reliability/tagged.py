"""Finding the processes a test's driver started, by a tag in their environment (machines inherit it)."""

from __future__ import annotations

import psutil

TAG = "BIGMACHINE_TEST_TAG"


def tagged_processes(tag: str) -> list[psutil.Process]:
    """Every process whose environment has ``BIGMACHINE_TEST_TAG=tag``."""
    found = []
    for process in psutil.process_iter():
        try:
            if process.environ().get(TAG) == tag:
                found.append(process)
        except psutil.Error:
            pass
    return found
