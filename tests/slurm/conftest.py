"""A real one-node Slurm cluster for the tests: munged, slurmctld and slurmd, started in a temp dir and torn down.

``slurm_cluster`` (package scope) writes a configuration with free ports, its own
munge key and socket, and two partitions on this host's node: ``debug`` (the default,
cores shared by up to 4 jobs) and ``tight`` (a core per job, where a job can be kept
PENDING for lack of CPUs); it points ``SLURM_CONF`` at it for the tests and their
jobs. The daemons are ended by the pids in their pid files. Tests are skipped, with
the reason, only where the daemons can't run (not root, packages missing).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

_CONF = """\
ClusterName=bmtest
SlurmctldHost={host}
AuthType=auth/munge
AuthInfo=socket={dir}/munge/socket
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SlurmUser=root
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
StateSaveLocation={dir}/state
SlurmdSpoolDir={dir}/spool
SlurmctldPidFile={dir}/slurmctld.pid
SlurmdPidFile={dir}/slurmd.pid
SlurmctldLogFile={dir}/slurmctld.log
SlurmdLogFile={dir}/slurmd.log
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
KillWait=5
NodeName={host} CPUs=2 RealMemory=2000 State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
PartitionName=tight Nodes={host} MaxTime=INFINITE State=UP OverSubscribe=NO
"""


@dataclass
class Cluster:
    directory: Path
    conf: Path
    host: str

    def run(self, *command: str, timeout: float = 30.0) -> str:
        """Runs a Slurm command against this cluster; fails the test, quoting Slurm, if it fails."""
        done = subprocess.run(list(command), capture_output=True, text=True, timeout=timeout, check=False,
                              env={**os.environ, "SLURM_CONF": str(self.conf)})
        assert done.returncode == 0, f"{' '.join(command)}: {done.stderr or done.stdout}"
        return done.stdout

    def live_jobs(self, name: str) -> list[str]:
        """Ids of the live (not ended) jobs named ``name``."""
        return self.run("squeue", "--noheader", f"--name={name}", "--format=%i").split()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pid(path: Path, patience: float = 10.0) -> int | None:
    deadline = time.monotonic() + patience
    while time.monotonic() < deadline:
        try:
            return int(path.read_text().strip())
        except (FileNotFoundError, ValueError):
            time.sleep(0.05)
    return None


def _stop(pid: int | None) -> None:
    if pid is None:
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)


def _why_not() -> str | None:
    missing = [b for b in ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel") if not shutil.which(b)]
    if missing:
        return f"Slurm is not installed (missing {', '.join(missing)}): apt-get install slurm-wlm munge"
    if os.geteuid() != 0:
        return "the test cluster's slurmd and munged must start as root (they set job users and run as munge)"
    return None


@pytest.fixture(scope="package")
def slurm_cluster() -> Iterator[Cluster]:
    """A one-node Slurm cluster of our own, for the package's tests."""
    if (reason := _why_not()) is not None:
        pytest.skip(reason)
    # Not under the tests' TMPDIR: munged runs as the munge user, who must reach its key and socket.
    directory = Path(tempfile.mkdtemp(prefix="bmslurm-", dir="/tmp"))
    pids: dict[str, int | None] = {}
    try:
        yield _start(directory, pids)
    finally:
        os.environ.pop("SLURM_CONF", None)
        for daemon in ("slurmd", "slurmctld", "munged"):
            _stop(pids.get(daemon))
        shutil.rmtree(directory, ignore_errors=True)


def _start(directory: Path, pids: dict[str, int | None]) -> Cluster:
    directory.chmod(0o755)
    munge = directory / "munge"
    for sub in ("state", "spool", "munge"):
        (directory / sub).mkdir()
    munge.chmod(0o755)
    key = munge / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    shutil.chown(munge, "munge", "munge")
    shutil.chown(key, "munge", "munge")
    subprocess.run(["runuser", "-u", "munge", "--", "munged", "--force", f"--socket={munge}/socket",
                    f"--key-file={key}", f"--log-file={munge}/munged.log", f"--pid-file={munge}/munged.pid",
                    f"--seed-file={munge}/seed"], check=True, timeout=30)
    pids["munged"] = _pid(munge / "munged.pid")
    host = socket.gethostname().split(".")[0]
    conf = directory / "slurm.conf"
    conf.write_text(_CONF.format(host=host, dir=directory, ctld_port=_free_port(), d_port=_free_port()))
    cluster = Cluster(directory, conf, host)
    subprocess.run(["slurmctld", "-f", str(conf)], check=True, timeout=30)
    pids["slurmctld"] = _pid(directory / "slurmctld.pid")
    subprocess.run(["slurmd", "-f", str(conf)], check=True, timeout=30)
    pids["slurmd"] = _pid(directory / "slurmd.pid")
    os.environ["SLURM_CONF"] = str(conf)  # the system's commands and the jobs (sbatch exports it) use it
    deadline = time.monotonic() + 30
    while "idle" not in cluster.run("sinfo", "--noheader", "--format=%T"):
        if time.monotonic() > deadline:
            log = (directory / "slurmctld.log").read_text()[-2000:]
            pytest.fail(f"the test cluster's node never became idle; slurmctld.log ends: {log}")
        time.sleep(0.2)
    return cluster
