"""The shape of the commands that find what bigmachine sessions left on a system, and end it.

``python -m bigmachine.systems.ec2 list|terminate`` and ``python -m bigmachine.systems.slurm
list|cancel`` take the same arguments (``--session`` or ``--all-mine``), print the same
table, and turn the system's errors into one ``error:`` line and exit status 1.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

__all__ = ["LeftoversCommand", "none_of", "print_table"]


@dataclass(frozen=True)
class LeftoversCommand:
    """``list`` what sessions left (``things``: instances, jobs), or ``end`` it (terminate, cancel)."""

    prog: str
    description: str
    end: str
    things: str
    session_metavar: str
    mine: str  # what --all-mine selects

    def parser(self) -> argparse.ArgumentParser:
        """The command's arguments; a system adds its own to it."""
        parser = argparse.ArgumentParser(prog=self.prog, description=self.description)
        parser.add_argument("command", choices=["list", self.end])
        which = parser.add_mutually_exclusive_group()
        which.add_argument("--session", metavar=self.session_metavar,
                           help=f"one session's {self.things} (its name, b.name)")
        which.add_argument("--all-mine", action="store_true", help=self.mine)
        return parser

    def run(self, parser: argparse.ArgumentParser, argv: Sequence[str] | None,
            act: Callable[[argparse.Namespace], int], errors: type[Exception]) -> int:
        """Parses ``argv`` and runs ``act``; ending needs ``--session`` or ``--all-mine``; ``errors`` print as one line."""
        args = parser.parse_args(argv)
        if args.command == self.end and not (args.session or args.all_mine):
            parser.error(f"{self.end} needs --session {self.session_metavar} or --all-mine")
        try:
            return act(args)
        except errors as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1


def print_table(rows: Sequence[Sequence[object]]) -> None:
    """Prints ``rows`` (the first is the header) in columns as wide as their widest value."""
    widths = [max(len(str(row[column])) for row in rows) for column in range(len(rows[0]))]
    for row in rows:
        print("  ".join(str(value).ljust(width) for value, width in zip(row, widths)).rstrip())


def none_of(things: str, session: str | None, mine: bool) -> str:
    """``no <things>`` of the session, or of yours, as the command selected them."""
    return f"no {things}" + (f" of session {session}" if session else " of yours" if mine else "")
