"""The command line a user meets: --help grouping, Go's -bigm.x spellings, usage errors, python -m bigmachine."""

from __future__ import annotations

import argparse
import subprocess
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import bigmachine
from bigmachine import driver
from bigmachine.systems import Testing

ROOT = Path(__file__).parent.parent


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="prog")
    p.add_argument("-n", type=int, default=1)
    driver.add_arguments(p)
    return p


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=60, cwd=ROOT)


def test_state_formats_as_its_name() -> None:
    assert f"{bigmachine.RUNNING}" == str(bigmachine.RUNNING) == "RUNNING"
    assert f"[{bigmachine.STOPPED:>8}]" == "[ STOPPED]"
    assert bigmachine.STARTING < bigmachine.RUNNING and int(bigmachine.RUNNING) == 2  # still an ordered IntEnum


def test_help_puts_ec2_options_in_their_own_group_and_keeps_usage_short() -> None:
    text = parser().format_help()
    usage, rest = text.split("\n\n", 1)
    assert "[--bigm.ec2.*]" in usage and "--bigm.ec2.region" not in usage and len(usage.splitlines()) <= 4
    session, ec2 = rest.split("bigmachine on EC2:")
    assert "--bigm.system" in session and "--bigm.ec2." not in session
    assert "--bigm.ec2.instance-type" in ec2 and "--bigm.ec2.spot" in ec2
    assert "-bigm.ec2type" not in text and " -bigm.system" not in text  # Go's spellings work but are not shown


def test_go_single_dash_spellings_are_aliases() -> None:
    args = parser().parse_args(["-bigm.system=testing", "-bigm.debug", "none", "-bigm.ec2type", "t3.micro",
                                "-bigm.ec2ondemand=false", "-bigm.ec2.fallback=false", "-n", "3"])
    assert (args.bigm_system, args.bigm_debug, args.bigm_ec2_instance_type) == ("testing", "none", "t3.micro")
    assert args.bigm_ec2_spot is True and args.bigm_ec2_fallback is False and args.n == 3
    plain = parser().parse_args(["-bigm.ec2ondemand"])
    assert plain.bigm_ec2_spot is False and plain.bigm_system == "local"  # the aliases don't clobber defaults


@pytest.mark.parametrize("argv, message", [
    (["--bigm.debug=nonsense"], "argument --bigm.debug: debug address must look like HOST:PORT"),
    (["-bigm.debug=host:99999"], "argument -bigm.debug: debug address must look like HOST:PORT"),
    (["--bigm.system=mainframe"], "invalid choice: 'mainframe'"),
    (["--bigm.ec2.port=abc"], "argument --bigm.ec2.port: must be an integer, not 'abc'"),
    (["--bigm.ec2.max-price=cheap"], "must be a number, not 'cheap'"),
    (["-bigm.ec2.spot=maybe"], "must be true or false, not 'maybe'"),
    (["--bigm.slurm.poll-interval=often"], "argument --bigm.slurm.poll-interval: must be a number, not 'often'"),
    (["--bigm.slurm.sbatch-args=--comment='unclosed"], "argument --bigm.slurm.sbatch-args: must be valid"),
])
def test_bad_values_are_usage_errors(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        parser().parse_args(argv)
    err = capsys.readouterr().err
    assert exited.value.code == 2 and err.startswith("usage: prog") and message in err


@pytest.mark.parametrize("variable, value, message", [
    ("BIGMACHINE_DEBUG", "nonsense", "must look like HOST:PORT"),
    ("BIGMACHINE_SLURM_CORES_PER_MACHINE", "many", "argument --bigm.slurm.cores-per-machine: must be an integer"),
])
def test_bad_environment_value_is_a_usage_error(variable: str, value: str, message: str, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SystemExit):
        parser().parse_args([])
    assert message in capsys.readouterr().err


def test_a_bad_value_found_when_the_system_is_made_is_a_clean_error() -> None:
    args = parser().parse_args(["--bigm.system=ec2", "--bigm.ec2.tags=oops", "--bigm.debug=none"])
    with pytest.raises(SystemExit, match="bigmachine: error: --bigm.ec2.tags takes KEY=VALUE"):
        driver.start(args)


@pytest.mark.parametrize("argv, message", [
    (["-n", "0"], "argument -n: must be at least 1, not 0"),
    (["--nmach", "0"], "argument --nmach: must be at least 1, not 0"),
    (["--nmach", "two"], "argument --nmach: must be an integer, not 'two'"),
    (["--bigm.debug=nonsense"], "must look like HOST:PORT"),
])
def test_bigpi_rejects_bad_counts_with_usage_not_a_traceback(argv: list[str], message: str) -> None:
    done = run("examples/bigpi.py", *argv)
    assert done.returncode == 2 and "usage: bigpi.py" in done.stderr and message in done.stderr
    assert "Traceback" not in done.stderr


def test_python_m_bigmachine_shows_version_systems_and_options() -> None:
    done = run("-m", "bigmachine")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert out.startswith(f"bigmachine {bigmachine.__version__} ")
    for name in driver.SYSTEMS:
        assert f"\n  {name} " in out
    assert "In-process machines for tests" in out and "--bigm.ec2.instance-type" in out and "Hosts" in out
    assert run("-m", "bigmachine", "--version").stdout.strip() == f"bigmachine {bigmachine.__version__}"


def test_a_system_with_options_gets_a_group_and_builds_from_them(monkeypatch: pytest.MonkeyPatch) -> None:
    """The pattern a new system follows: an entry in SYSTEM_OPTIONS and a module with two functions."""
    def add_arguments(group: argparse._ArgumentGroup, env: Callable[[str, str], str]) -> None:
        group.add_argument("--bigm.fake.period", dest="bigm_fake_period", type=float, default=env("fake.period", "1"))

    def from_arguments(args: argparse.Namespace) -> Testing:
        return Testing(keepalive_period=args.bigm_fake_period)

    module: Any = types.ModuleType("fake_system_options")
    module.add_arguments, module.from_arguments = add_arguments, from_arguments
    monkeypatch.setitem(sys.modules, "fake_system_options", module)
    monkeypatch.setattr(driver, "SYSTEMS", (*driver.SYSTEMS, "fake"))
    monkeypatch.setitem(driver.SYSTEM_OPTIONS, "fake", ("Fake", "fake_system_options"))
    p = parser()
    assert "bigmachine on Fake:" in p.format_help() and "[--bigm.fake.*]" in p.format_usage()
    system = driver.make_system(p.parse_args(["--bigm.system=fake", "-bigm.fake.period=0.5"]))
    assert isinstance(system, Testing) and system.keepalive_period == 0.5
