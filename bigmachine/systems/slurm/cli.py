"""``python -m bigmachine.systems.slurm list|cancel``: the jobs bigmachine sessions left, by their name.

    python -m bigmachine.systems.slurm list                       # every bigmachine job in the queue
    python -m bigmachine.systems.slurm list --all-mine            # those of this user
    python -m bigmachine.systems.slurm cancel --session bigmachine-1a2b3c4d
    python -m bigmachine.systems.slurm cancel --all-mine

Every job of a session is named ``bigmachine:<session>``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from ..leftovers import LeftoversCommand, none_of, print_table
from . import commands
from .commands import Job, SlurmError

__all__ = ["find", "main"]


def find(*, session: str | None = None, mine: bool = False) -> list[Job]:
    """Live bigmachine jobs: of one session, or this user's, or everyone's."""
    name = commands.job_name(session) if session else None
    jobs = commands.queue(name=name, user=commands.current_user() if mine else None, ended=False)
    return sorted((j for j in jobs if j.name.startswith(commands.JOB_PREFIX)), key=lambda j: (j.name, j.id))


_COMMAND = LeftoversCommand(prog="python -m bigmachine.systems.slurm",
                            description="List or cancel the Slurm jobs of bigmachine sessions.",
                            end="cancel", things="jobs", session_metavar="NAME", mine="the jobs of this user")


def main(argv: Sequence[str] | None = None) -> int:
    return _COMMAND.run(_COMMAND.parser(), argv, _act, SlurmError)


def _act(args: argparse.Namespace) -> int:
    jobs = find(session=args.session, mine=args.all_mine)
    if args.command == "list":
        _list(jobs, args.session, args.all_mine)
    elif jobs:
        commands.cancel([j.id for j in jobs])
        print(f"cancelled {len(jobs)} jobs: {' '.join(j.id for j in jobs)}")
    else:
        print(_none(args.session, args.all_mine))
    return 0


def _list(jobs: list[Job], session: str | None, mine: bool) -> None:
    if not jobs:
        print(_none(session, mine))
        return
    rows = [("JOB", "STATE", "NODE", "PARTITION", "CPUS", "TIME", "USER", "SESSION", "REASON")]
    rows += [(j.id, j.state, j.node, j.partition, str(j.cpus), j.elapsed, j.user,
              j.name.removeprefix(commands.JOB_PREFIX), j.reason if j.reason != "None" else "") for j in jobs]
    print_table(rows)


def _none(session: str | None, mine: bool) -> str:
    return none_of("bigmachine jobs", session, mine) + " in squeue"
