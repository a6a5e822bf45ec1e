"""``python -m bigmachine``: the version, the systems machines can run on, and the options a driver gets."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from . import __version__, driver, systems

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bigmachine", description=__doc__)
    parser.add_argument("--version", action="version", version=f"bigmachine {__version__}")
    parser.parse_args(argv)
    print(f"bigmachine {__version__} (Python {sys.version.split()[0]}, {os.path.dirname(__file__)})")
    print("\nSystems (--bigm.system NAME, or BIGMACHINE_SYSTEM=NAME):")
    for name in driver.SYSTEMS:
        print(f"  {name:<9} {_summary(name)}")
    print(f"  (in code only: bigmachine.systems.Hosts(...): {_first_line(systems.Hosts.__doc__)})")
    options = argparse.ArgumentParser(prog="your_driver.py", add_help=False)
    driver.add_arguments(options)
    print("\nOptions driver.add_arguments(parser) adds to a program (each also a BIGMACHINE_* variable; "
          "Go's -bigm.x spellings work too):\n")
    print(options.format_help())
    return 0


def _summary(name: str) -> str:
    """The system class's one-line docstring, or why it can't be used here."""
    try:
        cls = getattr(systems, driver.SYSTEM_OPTIONS.get(name, (name.title(), ""))[0])
    except ImportError as exc:
        return f"unavailable here: {exc}"
    return _first_line(cls.__doc__)


def _first_line(doc: str | None) -> str:
    return (doc or "").strip().splitlines()[0].replace("``", "") if doc else ""


if __name__ == "__main__":
    sys.exit(main())
