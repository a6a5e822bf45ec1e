"""The Slurm system's options, packing, and how failures of Slurm's commands read."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest
from services import Echo

import bigmachine
from bigmachine import driver
from bigmachine.systems import Slurm
from bigmachine.systems.slurm import commands
from bigmachine.systems.slurm.commands import SlurmError

Cluster = Any  # the fixture's type lives in this directory's conftest.py


def test_driver_options_and_variables_make_a_slurm_system(monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("BIGMACHINE_SLURM_ACCOUNT", "genomics")
    parser = argparse.ArgumentParser()
    driver.add_arguments(parser)
    args = parser.parse_args(["--bigm.system=slurm", "--bigm.slurm.partition=short", "--bigm.slurm.time=0:30:00",
                              "--bigm.slurm.cores-per-machine=4", "--bigm.slurm.memory=8G",
                              "--bigm.slurm.sbatch-args=--qos=low --constraint='avx2&ib'"])
    system = driver.make_system(args)
    assert isinstance(system, Slurm)
    assert (system.partition, system.account, system.time, system.memory) == ("short", "genomics", "0:30:00", "8G")
    assert system.cores_per_machine == 4 and system.maxprocs() == 4
    assert system.sbatch_args == ["--qos=low", "--constraint=avx2&ib"]
    with pytest.raises(SystemExit):  # a bad value is a usage error while parsing, not when the system is made
        parser.parse_args(["--bigm.system=slurm", "--bigm.slurm.cores-per-machine=many"])
    assert "argument --bigm.slurm.cores-per-machine: must be an integer, not 'many'" in capsys.readouterr().err


def test_a_command_that_hangs_fails_naming_it() -> None:
    with pytest.raises(SlurmError, match=r"`sleep 5` did not answer within 0.2 s") as caught:
        commands.run(["sleep", "5"], timeout=0.2)
    assert caught.value.temporary


def test_a_missing_command_says_where_to_run_the_driver() -> None:
    with pytest.raises(SlurmError, match="`no-such-sbatch` was not found.*login node"):
        commands.run(["no-such-sbatch"])


def test_sbatch_refusal_fails_start_naming_the_command_and_slurms_message(slurm_cluster: Cluster,
                                                                           tmp_path: Path) -> None:
    with bigmachine.start(Slurm(partition="nosuch", workdir=tmp_path / "shared")) as b:
        with pytest.raises(bigmachine.Error) as caught:
            b.start(1, bigmachine.Services(E=Echo()))
    assert "sbatch --parsable" in str(caught.value) and "--partition=nosuch" in str(caught.value)
    assert "invalid partition" in str(caught.value).lower()
    assert not list((tmp_path / "shared").rglob("bootstrap.json"))


def test_cores_per_machine_sets_cpus_per_task_and_maxprocs(slurm_cluster: Cluster, tmp_path: Path) -> None:
    with bigmachine.start(Slurm(cores_per_machine=2, workdir=tmp_path / "shared", poll_interval=1.0)) as b:
        (m,) = b.start(1, bigmachine.Services(E=Echo()))
        assert m.maxprocs == 2  # known when start returns
        m.wait(bigmachine.RUNNING, timeout=60)
        assert m.maxprocs == 2
        cpus = slurm_cluster.run("squeue", "--noheader", f"--name=bigmachine:{b.name}", "--format=%C").split()
        assert cpus == ["2"]


def test_a_job_that_fails_before_its_agent_answers_says_why(slurm_cluster: Cluster, tmp_path: Path) -> None:
    system = Slurm(python="/nonexistent/python3", workdir=tmp_path / "shared", poll_interval=1.0, start_timeout=30)
    with bigmachine.start(system) as b:
        (m,) = b.start(1, bigmachine.Services(E=Echo()))
        m.wait(bigmachine.STOPPED, timeout=20)
    assert isinstance(m.err, bigmachine.MachineStopped)
    assert "FAILED" in str(m.err) and "before its agent answered" in str(m.err)
    assert "/nonexistent/python3" in str(m.err)  # the shell's complaint, from the job's output
