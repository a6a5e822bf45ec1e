"""How many module boundaries one warm sync call crosses in the driver (docs/architecture.md).

    python -m benchmarks.crossings

Runs one ``m.call`` on an in-process ``Testing`` machine under ``sys.setprofile`` and prints
the sequence of bigmachine modules entered by the calling thread (consecutive repeats
folded), the number of crossings, and the crossings between top-level areas (``machine``,
``rpc`` and the rest).
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

import bigmachine
from bigmachine.systems import Testing


class Adder:
    def add(self, a: int, b: int) -> int:
        return a + b


def modules_entered(fn: Callable[[], Any]) -> list[str]:
    """The bigmachine modules whose functions the calling thread enters while ``fn`` runs, in order."""
    seen: list[str] = []
    me = threading.get_ident()

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        if event == "call" and threading.get_ident() == me:
            module = frame.f_globals.get("__name__", "")
            if module.startswith("bigmachine") and (not seen or seen[-1] != module):
                seen.append(module)

    sys.setprofile(profile)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return seen


def area(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def main() -> None:
    with bigmachine.start(Testing()) as b:
        (m,) = b.start(1, bigmachine.Services(Adder=Adder()))
        m.wait(bigmachine.RUNNING, timeout=60)
        m.call("Adder.add", 1, 2)  # warm: the connection is open
        seen = modules_entered(lambda: m.call("Adder.add", 1, 2))
    areas = [a for i, a in enumerate(map(area, seen)) if i == 0 or a != area(seen[i - 1])]
    print(" > ".join(s.removeprefix("bigmachine.") for s in seen))
    print(f"module crossings: {len(seen) - 1} over {len(set(seen))} modules")
    print(f"area crossings: {len(areas) - 1} ({' > '.join(areas)})")


if __name__ == "__main__":
    main()
