"""Slurm's own commands (``sbatch``, ``squeue``, ``scancel``), each with a timeout, failures as ``SlurmError``.

The commands, not a C binding, so any Slurm version works. ``sbatch --parsable``
gives the job id; ``squeue`` prints fields in a ``--format`` of ours, which reads the
same on every version (its ``--json`` output changes shape between releases).
"""

from __future__ import annotations

import getpass
import logging
import shlex
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

from ...errors import Error

__all__ = ["ENDED", "JOB_PREFIX", "Job", "SlurmError", "cancel", "current_user", "job_name", "queue", "run", "submit"]

logger = logging.getLogger(__name__)

JOB_PREFIX = "bigmachine:"
TIMEOUT = 30.0  # seconds any one command may take
# States a job never leaves; the others (PENDING, CONFIGURING, RUNNING, COMPLETING, SUSPENDED, ...) are live.
ENDED = frozenset({"BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY",
                   "PREEMPTED", "REVOKED", "SPECIAL_EXIT", "TIMEOUT"})
_FORMAT = "%i|%T|%N|%P|%C|%u|%M|%j|%r"  # the reason last: it is free text
_GONE = ("Invalid job id", "already completing or completed")  # scancel of a job that has ended: no error


class SlurmError(Error):
    """A Slurm command failed; the message names the command and quotes Slurm."""


@dataclass(frozen=True)
class Job:
    """One line of ``squeue``: a job as Slurm sees it now."""

    id: str
    state: str
    node: str
    partition: str
    cpus: int
    user: str = ""
    elapsed: str = ""
    name: str = ""
    reason: str = ""

    @property
    def ended(self) -> bool:
        return self.state in ENDED


def job_name(session: str) -> str:
    """The name (and comment) of every job of ``session``."""
    return JOB_PREFIX + session


def run(command: Sequence[str], *, input: str | None = None, timeout: float = TIMEOUT) -> str:
    """Runs one Slurm command and returns its output; ``SlurmError`` names the command and Slurm's message."""
    shown = shlex.join(command)
    try:
        done = subprocess.run(list(command), input=input, capture_output=True, text=True, timeout=timeout,
                              stdin=None if input is not None else subprocess.DEVNULL, check=False)
    except FileNotFoundError:
        raise SlurmError(f"`{command[0]}` was not found: the Slurm system runs Slurm's commands, so run the driver "
                         "where `sbatch` and `squeue` work (a login node), or put them on PATH") from None
    except subprocess.TimeoutExpired:
        raise SlurmError(f"`{shown}` did not answer within {timeout:g} s; is slurmctld up? (`scontrol ping`)",
                         temporary=True) from None
    if done.returncode != 0:
        said = (done.stderr.strip() or done.stdout.strip() or "no message").replace("\n", " | ")
        raise SlurmError(f"`{shown}` failed with status {done.returncode}: {said}")
    logger.debug("%s: %s", shown, done.stdout.strip()[:200])
    return done.stdout


def submit(script: str, options: Sequence[str]) -> str:
    """Submits a batch script (read from stdin: no script file) and returns the job id."""
    out = run(["sbatch", "--parsable", *options], input=script).strip()
    job = out.splitlines()[-1].split(";")[0] if out else ""  # "id" or "id;cluster"
    if not job:
        raise SlurmError(f"`sbatch --parsable` printed no job id (it printed {out!r})")
    return job


def queue(*, name: str | None = None, user: str | None = None, ended: bool = True) -> list[Job]:
    """Jobs as ``squeue`` lists them: those named ``name`` and/or of ``user``; ended ones too if ``ended``."""
    command = ["squeue", "--noheader", f"--format={_FORMAT}"]
    if ended:
        command.append("--states=all")
    if name is not None:
        command.append(f"--name={name}")
    if user is not None:
        command.append(f"--user={user}")
    return [_parse(line) for line in run(command).splitlines() if line.strip()]


def cancel(jobs: Sequence[str] = (), *, name: str | None = None, user: str | None = None) -> None:
    """Cancels jobs by id, or by name and user; jobs that already ended are no error."""
    if not jobs and name is None:
        return
    command = ["scancel", *([f"--name={name}"] if name else []), *([f"--user={user}"] if user else []), *jobs]
    try:
        run(command)
    except SlurmError as exc:
        if not any(text in str(exc) for text in _GONE):
            raise


def current_user() -> str:
    """Who Slurm sees submitting: the user running the driver."""
    return getpass.getuser()


def _parse(line: str) -> Job:
    fields = line.rstrip("\n").split("|", 8)
    if len(fields) != 9:
        raise SlurmError(f"`squeue --format={_FORMAT}` printed a line of {len(fields)} fields: {line!r}")
    job, state, node, partition, cpus, user, elapsed, name, reason = fields
    return Job(job.strip(), state.strip().split()[0] if state.strip() else "", node.strip(), partition.strip(),
               int(cpus) if cpus.strip().isdigit() else 0, user.strip(), elapsed.strip(), name.strip(),
               reason.strip())
