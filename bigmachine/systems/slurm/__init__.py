"""The Slurm system: each machine is one Slurm job running the bootstrap agent, cancelled with its session.

    with bigmachine.start(Slurm(partition="short", time="2:00:00", cores_per_machine=4)) as b: ...
    python prog.py --bigm.system=slurm --bigm.slurm.partition=short --bigm.slurm.cores-per-machine=4

``b.start(n)`` submits ``n`` batch jobs (``sbatch``, named and commented
``bigmachine:<session>``) and returns. Each job runs the bootstrap agent
(``bigmachine.systems.agent``) with the driver's interpreter, which must be on the
filesystem the nodes share, as must the session's directory (``workdir``), where
each job finds its short-lived bootstrap credentials (``script.py`` says how they
are removed). The driver reads the job's node and the agent's port from the job's
output file (``squeue`` names the node too), then ships its code and starts the machine over mutual TLS,
as on EC2. ``squeue`` is polled at most every ``poll_interval`` seconds for the
whole session: a job PENDING past ``start_timeout`` is cancelled and its machine
stopped with Slurm's pending reason; a job cancelled, preempted or out of time
stops its machine at once with that reason. ``b.shutdown()`` cancels every job of
the session; ``python -m bigmachine.systems.slurm list|cancel`` finds leftovers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...version import __version__
from ...errors import MachineStopped, OutOfMemory
from ..base import Instance, System
from ..bootstrap import AgentInstance, BootstrapAuthority
from ..shipping import Shipment, collect
from . import commands, script
from .commands import Job, SlurmError

if TYPE_CHECKING:
    from ...machine import Machine
    from ...session import B

__all__ = ["Slurm", "SlurmError", "SlurmInstance"]

logger = logging.getLogger(__name__)

# How Slurm itself ended a job, in words; other ended states (COMPLETED, FAILED) are the machine's own doing.
_ENDED_BY_SLURM = {
    "CANCELLED": "was cancelled from outside the session (scancel, an administrator or a policy)",
    "TIMEOUT": "reached its time limit",
    "PREEMPTED": "was preempted",
    "NODE_FAIL": "lost its node",
    "BOOT_FAIL": "could not boot its node",
    "DEADLINE": "reached its deadline",
    "OUT_OF_MEMORY": "ran out of memory",
    "REVOKED": "was revoked (federation)",
}
_UNSEEN_GRACE = 30.0  # a submitted job missing from squeue this long is taken as gone
_READ_EVERY = 0.25  # seconds between reads of a starting job's output file


class Slurm(System):
    """Machines as Slurm jobs, one job per machine; see the module's docstring."""

    name = "slurm"
    start_timeout = 600.0  # queueing included: past it a PENDING job is cancelled with its reason

    def __init__(self, *, partition: str | None = None, account: str | None = None, time: str = "1:00:00",
                 cores_per_machine: int = 1, memory: str | None = None, sbatch_args: Sequence[str] = (),
                 workdir: str | os.PathLike[str] | None = None, python: str | None = None,
                 poll_interval: float = 3.0, requirements: Sequence[str] = (), keepalive_period: float = 2.0,
                 keepalive_timeout: float = 30.0, keepalive_rpc_timeout: float = 10.0,
                 start_timeout: float | None = None) -> None:
        super().__init__(keepalive_period=keepalive_period, keepalive_timeout=keepalive_timeout,
                         keepalive_rpc_timeout=keepalive_rpc_timeout, start_timeout=start_timeout)
        if cores_per_machine < 1:
            raise ValueError(f"cores_per_machine must be at least 1, not {cores_per_machine}")
        if poll_interval <= 0:
            raise ValueError(f"poll_interval must be > 0 seconds, not {poll_interval}")
        self.partition, self.account, self.time, self.memory = partition, account, time, memory
        self.cores_per_machine = cores_per_machine
        self.sbatch_args = list(sbatch_args)
        self.workdir = Path(workdir).expanduser() if workdir else Path.home() / ".bigmachine" / "slurm"
        self.python = python or sys.executable
        self.poll_interval = poll_interval
        self.requirements = list(requirements)  # the nodes run the driver's interpreter: nothing to install
        self.instances: dict[str, SlurmInstance] = {}
        self._session: B | None = None

    def __repr__(self) -> str:
        return f"Slurm({self.partition or 'default partition'}, {self.cores_per_machine} cores per machine)"

    # ------------------------------------------------------------------ System

    def init(self, session: B) -> None:
        self._session = session
        self.instances = {}
        self.authority = BootstrapAuthority(lifetime=self.start_timeout + 60)
        self.directory = self.workdir / session.name
        self._tasks: set[asyncio.Task[Any]] = set()
        self._round_task: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._last_round = 0.0
        self._doomed: set[str] = set()
        self._cancelled: set[str] = set()
        self._cancelling: asyncio.Task[None] | None = None

    def maxprocs(self) -> int:
        return self.cores_per_machine

    async def launch(self, session: B, machines: list[Machine], environ: dict[str, str]) -> list[Instance | BaseException]:
        try:
            shipment = await asyncio.to_thread(collect, self.requirements)
        except Exception as exc:  # noqa: BLE001 - no machine can start: each gets the reason
            return [exc] * len(machines)
        launched = await asyncio.gather(*(self._submit(m, shipment, environ) for m in machines),
                                        return_exceptions=True)
        if self._watcher is None:
            self._watcher = self._spawn(self._watch())
        return list(launched)

    async def shutdown(self) -> None:
        if self._session is None or self._watcher is None:
            return  # nothing was ever submitted
        name = commands.job_name(self._session.name)
        try:
            await asyncio.to_thread(commands.cancel, name=name, user=commands.current_user())
            await self._until_gone(name)
        except SlurmError as exc:
            logger.error("session %s: could not cancel its jobs: %s; run `python -m bigmachine.systems.slurm cancel "
                         "--session %s`", self._session.name, exc, self._session.name)
        finally:
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await asyncio.to_thread(shutil.rmtree, self.directory, True)
        total = self.cost()
        if total["jobs"]:
            logger.info("session %s: %d Slurm jobs, %.4f core-hours", self._session.name, total["jobs"],
                        total["core_hours"])

    def cost(self) -> dict[str, Any]:
        """The session's jobs: how many, the cores they hold now, the core-hours they have used so far."""
        instances = list(self.instances.values())
        return {"jobs": len(instances), "cores": sum(i.cpus for i in instances if i.running),
                "core_hours": round(sum(i.core_hours() for i in instances), 4)}

    # ------------------------------------------------------------------ submitting

    async def _submit(self, machine: Machine, shipment: Shipment, environ: dict[str, str]) -> Instance:
        assert self._session is not None
        agent = f"{self._session.name}/{machine.name}/{secrets.token_hex(4)}"
        directory = self.directory / machine.name
        credentials = self.authority.credentials(agent)
        await asyncio.to_thread(_write_private, directory / script.CREDENTIALS, json.dumps(credentials))
        batch = script.render(python=self.python, session=self._session.name, machine=machine.name,
                              version=__version__)
        try:
            job = await asyncio.to_thread(commands.submit, batch, self._sbatch_options(directory))
        except BaseException:
            await asyncio.to_thread(shutil.rmtree, directory, True)
            raise
        machine.maxprocs = self.cores_per_machine
        instance = SlurmInstance(self, machine, job, directory, agent, shipment, environ)
        self.instances[job] = instance
        logger.info("%s: submitted Slurm job %s", machine.name, job)
        return instance

    def _sbatch_options(self, directory: Path) -> list[str]:
        assert self._session is not None
        name = commands.job_name(self._session.name)
        options = [f"--job-name={name}", f"--comment={name}", f"--chdir={directory}",
                   f"--output={directory / script.OUTPUT}", "--nodes=1", "--ntasks=1",
                   f"--cpus-per-task={self.cores_per_machine}", f"--time={self.time}", "--no-requeue"]
        options += [f"--partition={self.partition}"] if self.partition else []
        options += [f"--account={self.account}"] if self.account else []
        options += [f"--mem={self.memory}"] if self.memory else []
        return options + self.sbatch_args

    # ------------------------------------------------------------------ watching

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _watch(self) -> None:
        """Polls squeue for the whole session, while any of its jobs may still change."""
        while True:
            if any(not i.finished for i in self.instances.values()):
                await self._round()
            await asyncio.sleep(self.poll_interval)

    async def _round(self) -> None:
        """One squeue of the session's jobs, shared by whoever asks meanwhile; at most one per poll_interval."""
        if self._round_task is None or self._round_task.done():
            self._round_task = self._spawn(self._poll())
        await asyncio.shield(self._round_task)

    async def _poll(self) -> None:
        wait = self._last_round + self.poll_interval - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        self._last_round = time.monotonic()
        assert self._session is not None
        try:
            jobs = await asyncio.to_thread(commands.queue, name=commands.job_name(self._session.name),
                                           user=commands.current_user())
        except SlurmError as exc:
            logger.warning("session %s: could not list its jobs: %s", self._session.name, exc)
            return
        by_id = {j.id: j for j in jobs}
        for job_id, instance in list(self.instances.items()):
            instance._observe(by_id.get(job_id))

    async def _cancel(self, job: str) -> None:
        """Cancels a job, batched with the others cancelled at the same moment."""
        self._doomed.add(job)
        while job not in self._cancelled:
            if self._cancelling is None or self._cancelling.done():
                self._cancelling = self._spawn(self._cancel_batch())
            await asyncio.shield(self._cancelling)

    async def _cancel_batch(self) -> None:
        await asyncio.sleep(0)  # the other kills of this moment join
        jobs = sorted(self._doomed - self._cancelled)
        try:
            await asyncio.to_thread(commands.cancel, jobs)
        except SlurmError as exc:
            logger.error("could not cancel Slurm jobs %s: %s; `python -m bigmachine.systems.slurm cancel --session "
                         "%s` retries", " ".join(jobs), exc, self._session.name if self._session else "?")
        self._cancelled.update(jobs)

    async def _until_gone(self, name: str, patience: float = 15.0) -> None:
        """Waits (briefly) until no job of the session is live, so its directory can go."""
        deadline = time.monotonic() + patience
        while time.monotonic() < deadline:
            live = await asyncio.to_thread(commands.queue, name=name, user=commands.current_user(), ended=False)
            if not live:
                return
            await asyncio.sleep(1.0)
        logger.warning("Slurm jobs of %s still live after %.0f s of cancelling", name, patience)


class SlurmInstance(AgentInstance):
    """A machine's Slurm job: its agent's link, and what squeue says of the job."""

    def __init__(self, system: Slurm, machine: Machine, job: str, directory: Path, agent: str, shipment: Shipment,
                 environ: dict[str, str]) -> None:
        self.system, self.id, self.directory = system, job, directory
        self.state, self.node, self.partition, self.reason = "PENDING", "", system.partition or "", ""
        self.cpus = system.cores_per_machine
        self.submitted = time.monotonic()
        self.started: float | None = None
        self.stopped: float | None = None
        self.verdict: MachineStopped | None = None  # how Slurm ended the job, when it did
        self._seen = False
        self._confirming: asyncio.Task[None] | None = None
        assert system._session is not None
        super().__init__(system._session, machine, system.authority, agent, shipment, environ, system="slurm",
                         ping=system.keepalive_period)

    @property
    def running(self) -> bool:
        return self.started is not None and self.stopped is None

    @property
    def finished(self) -> bool:
        return self.state in commands.ENDED or self.stopped is not None

    def describe(self) -> dict[str, Any]:
        return {"job": self.id, "node": self.node, "partition": self.partition, "state": self.state,
                **({"reason": self.reason} if self.reason and self.reason != "None" else {}),
                "cpus": self.cpus, "core_hours": round(self.core_hours(), 4),
                "session_core_hours": self.system.cost()["core_hours"],
                "output": str(self.directory / script.OUTPUT), **super().describe()}

    def core_hours(self) -> float:
        """The cores the job held times the hours it held them."""
        if self.started is None:
            return 0.0
        return self.cpus * max(0.0, (self.stopped or time.time()) - self.started) / 3600

    def _maxprocs(self, hello: dict[str, Any]) -> int:
        return self.cpus

    # ------------------------------------------------------------------ what squeue says

    def _observe(self, job: Job | None) -> None:
        """What a squeue round found: a job Slurm ended stops its machine, with Slurm's reason."""
        if job is None:
            if self._seen or time.monotonic() - self.submitted > _UNSEEN_GRACE:
                self._finish("GONE", "")
            return
        self._seen = True
        self.state, self.reason = job.state, job.reason
        self.node, self.partition = job.node or self.node, job.partition or self.partition
        self.cpus = job.cpus or self.cpus
        if job.state == "RUNNING" and self.started is None:
            self.started = time.time()
        if job.ended:
            self._finish(job.state, job.reason)

    def _finish(self, state: str, reason: str) -> None:
        if self.started is not None and self.stopped is None:
            self.stopped = time.time()
        self.state = state
        if self._exit.done() or self._killing is not None:
            return
        where = f"Slurm job {self.id} of machine {self.machine.addr or self.machine.name}"
        said = f" (reason: {reason})" if reason and reason != "None" else ""
        if state in _ENDED_BY_SLURM:
            kind = OutOfMemory if state == "OUT_OF_MEMORY" else MachineStopped
            self.verdict = kind(f"{where} {_ENDED_BY_SLURM[state]}: {state}{said}", machine=self.machine.addr)
            super()._end(self.verdict)
        elif self._confirming is None:  # else the agent's link has told how, and that is about to be used
            ended = "is no longer in squeue" if state == "GONE" else f"ended {state}{said}"
            if not self._address.done():  # before its agent ever answered: its output says why
                ended += f" before its agent answered; its output ends: {self._output_tail()}"
            super()._end(MachineStopped(f"{where} {ended}", machine=self.machine.addr))

    def _end(self, err: BaseException) -> None:
        """The link ended: unless we know already, ask squeue whether Slurm ended the job, to say so."""
        if self._killing is not None or self._exit.done() or self.verdict is not None or self.finished:
            super()._end(self.verdict or err)
        elif self._confirming is None:
            self._confirming = self.system._spawn(self._confirm(err))

    async def _confirm(self, err: BaseException) -> None:
        deadline = time.monotonic() + 2 * self.system.poll_interval + 1.0
        while not self.finished and time.monotonic() < deadline and not self._exit.done():
            await self.system._round()
        super()._end(self.verdict or err)

    def _output_tail(self, lines: int = 5) -> str:
        path = self.directory / script.OUTPUT
        try:
            tail = path.read_text(errors="replace").strip().splitlines()[-lines:]
        except OSError:
            return f"nothing ({path} is missing)"
        return " | ".join(tail) or f"nothing ({path} is empty)"

    # ------------------------------------------------------------------ the agent

    async def _locate(self) -> tuple[str, int]:
        """The node and port the job's output reports (read often: cheaper than squeue, and sooner)."""
        deadline = self.submitted + max(self.system.start_timeout - self.system.poll_interval - 1.0,
                                        self.system.start_timeout / 2)
        output = self.directory / script.OUTPUT
        while (found := await asyncio.to_thread(script.report, output)) is None:
            if self._exit.done():
                raise self._exit.result()
            if time.monotonic() > deadline and self.state == "PENDING":
                await self._give_up()
            await asyncio.sleep(_READ_EVERY)
        self.node = found[0]
        return found

    async def _give_up(self) -> None:
        """The job is still queued at the deadline: cancel it, and say why Slurm kept it waiting."""
        waited = time.monotonic() - self.submitted
        self.verdict = MachineStopped(
            f"Slurm job {self.id} of machine {self.machine.name} was still {self.state} after {waited:.0f} s "
            f"(reason: {self.reason or 'unknown'}), past the start timeout; cancelled it. Ask for fewer cores or less "
            "memory, another partition, or a longer start_timeout", machine="")
        await self.system._cancel(self.id)
        raise self.verdict

    async def _waiting(self) -> None:
        if self._exit.done():
            raise self._exit.result()

    async def _stop(self) -> None:
        super()._end(MachineStopped(f"Slurm job {self.id} of machine {self.machine.addr or self.machine.name} was "
                                    "cancelled by the driver", machine=self.machine.addr))
        if self.state not in commands.ENDED:
            await self.system._cancel(self.id)
        if self.started is not None and self.stopped is None:
            self.stopped = time.time()
        await self._hang_up(self._exit.result())


def _write_private(path: Path, text: str) -> None:
    """Writes a file only its owner can read (0600), in directories only its owner can enter."""
    path.parent.parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # the session's
    path.parent.mkdir(mode=0o700, exist_ok=True)  # the machine's
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)

