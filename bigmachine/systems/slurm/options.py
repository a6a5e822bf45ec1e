"""The Slurm system's ``--bigm.slurm.*`` options, each defaulting to its ``BIGMACHINE_SLURM_*`` variable."""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..options import Option, add_options, keywords

if TYPE_CHECKING:
    from . import Slurm

__all__ = ["add_arguments", "from_arguments"]

# The variable of each is BIGMACHINE_SLURM_<OPTION> with - as _.
_OPTIONS: list[Option] = [
    ("partition", "partition", str, "partition to submit to (default: the cluster's default)"),
    ("account", "account", str, "account to charge (default: yours)"),
    ("time", "time", str, "time limit of each machine's job, as sbatch --time (default: 1:00:00)"),
    ("cores-per-machine", "cores_per_machine", int, "cores per machine: sbatch --cpus-per-task and m.maxprocs "
                                                    "(default: 1)"),
    ("memory", "memory", str, "memory per machine, as sbatch --mem, e.g. 8G (default: the partition's)"),
    ("sbatch-args", "sbatch_args", shlex.split, "more sbatch options, e.g. '--qos=short --constraint=avx2'"),
    ("workdir", "workdir", str, "a directory the nodes share, for the jobs' credentials and output "
                                "(default: ~/.bigmachine/slurm)"),
    ("python", "python", str, "the interpreter the nodes run (default: the driver's, on the shared filesystem)"),
    ("poll-interval", "poll_interval", float, "seconds between squeue calls (default: 3)"),
]


def add_arguments(group: argparse._ArgumentGroup, env: Callable[[str, str], str]) -> None:
    """Adds the Slurm options to the driver's option group."""
    add_options(group, env, "slurm", _OPTIONS)


def from_arguments(args: argparse.Namespace) -> Slurm:
    """The Slurm system the parsed options describe."""
    from . import Slurm

    return Slurm(**keywords(args, "slurm", _OPTIONS))
