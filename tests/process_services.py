"""Services for the process-level tests: output in awkward shapes, subprocesses, a held GIL."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time


class Output:
    """Writes to the machine's stdout the ways real programs do."""

    def pid(self) -> int:
        return os.getpid()

    def add(self, a: int, b: int) -> int:
        return a + b

    def spew(self, total: int, chunk: int = 1 << 16) -> int:
        """``total`` bytes of ``x`` without a newline, then one."""
        piece = "x" * chunk
        for _ in range(total // chunk):
            sys.stdout.write(piece)
        sys.stdout.write("\n")
        sys.stdout.flush()
        return total

    def progress(self, steps: int, end: str = " done\n") -> None:
        """A progress bar rewriting its line with ``\\r``, as tqdm does."""
        for i in range(steps + 1):
            sys.stdout.write(f"\r{100 * i // steps:3d}%")
            sys.stdout.flush()
        sys.stdout.write(end)
        sys.stdout.flush()

    def stall(self, *states: str) -> None:
        """Rewrites its line with each state in turn (a little apart), then stops with no newline."""
        for state in states:
            sys.stdout.write("\r" + state)
            sys.stdout.flush()
            time.sleep(0.05)

    def chatter(self, seconds: float, per_second: int = 2000) -> None:
        """Prints numbered 100-character lines from a thread for ``seconds``, returning at once."""
        def run() -> None:
            end, n = time.monotonic() + seconds, 0
            while time.monotonic() < end:
                for _ in range(per_second // 100):
                    print(f"{n:08d} " + "y" * 91)
                    n += 1
                time.sleep(0.01)

        threading.Thread(target=run, daemon=True).start()


class Spawner:
    """Starts subprocesses that would outlive the machine if nothing ended them."""

    def __init__(self) -> None:
        self.children: list[subprocess.Popen[bytes]] = []

    def pid(self) -> int:
        return os.getpid()

    def spawn(self, setsid: bool = False) -> int:
        """Starts ``sleep 1000`` (in a session of its own if ``setsid``: out of the machine's process group)."""
        child = subprocess.Popen(["sleep", "1000"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL, start_new_session=setsid)
        self.children.append(child)
        return child.pid


class Gil:
    """Holds the interpreter lock for a long time in one C call, as a huge regex or C extension does."""

    def pid(self) -> int:
        return os.getpid()

    def hold(self, n: int = 40) -> bool:
        """Catastrophic backtracking: 2**n steps inside ``re``, which never releases the GIL."""
        return re.match(r"(a+)+$", "a" * n + "b") is not None
