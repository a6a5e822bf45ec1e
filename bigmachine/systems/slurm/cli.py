"""``python -m bigmachine.systems.slurm list|cancel``: the jobs bigmachine sessions left, by their name.

    python -m bigmachine.systems.slurm list                       # every bigmachine job in the queue
    python -m bigmachine.systems.slurm list --all-mine            # those of this user
    python -m bigmachine.systems.slurm cancel --session bigmachine-1a2b3c4d
    python -m bigmachine.systems.slurm cancel --all-mine

Every job of a session is named ``bigmachine:<session>``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import commands
from .commands import Job, SlurmError

__all__ = ["find", "main"]


def find(*, session: str | None = None, mine: bool = False) -> list[Job]:
    """Live bigmachine jobs: of one session, or this user's, or everyone's."""
    name = commands.job_name(session) if session else None
    jobs = commands.queue(name=name, user=commands.current_user() if mine else None, ended=False)
    return sorted((j for j in jobs if j.name.startswith(commands.JOB_PREFIX)), key=lambda j: (j.name, j.id))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bigmachine.systems.slurm",
                                     description="List or cancel the Slurm jobs of bigmachine sessions.")
    parser.add_argument("command", choices=["list", "cancel"])
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--session", metavar="NAME", help="one session's jobs (its name, b.name)")
    which.add_argument("--all-mine", action="store_true", help="the jobs of this user")
    args = parser.parse_args(argv)
    if args.command == "cancel" and not (args.session or args.all_mine):
        parser.error("cancel needs --session NAME or --all-mine")
    try:
        jobs = find(session=args.session, mine=args.all_mine)
        if args.command == "list":
            _list(jobs, args.session, args.all_mine)
        elif jobs:
            commands.cancel([j.id for j in jobs])
            print(f"cancelled {len(jobs)} jobs: {' '.join(j.id for j in jobs)}")
        else:
            print(_none(args.session, args.all_mine))
    except SlurmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def _list(jobs: list[Job], session: str | None, mine: bool) -> None:
    if not jobs:
        print(_none(session, mine))
        return
    rows = [("JOB", "STATE", "NODE", "PARTITION", "CPUS", "TIME", "USER", "SESSION", "REASON")]
    rows += [(j.id, j.state, j.node, j.partition, str(j.cpus), j.elapsed, j.user,
              j.name.removeprefix(commands.JOB_PREFIX), j.reason if j.reason != "None" else "") for j in jobs]
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    for row in rows:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())


def _none(session: str | None, mine: bool) -> str:
    return "no bigmachine jobs" + (f" of session {session}" if session else " of yours" if mine else "") + " in squeue"
