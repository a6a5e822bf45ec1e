"""The driver's options: --bigm.* flags and BIGMACHINE_* environment variables."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from bigmachine import driver
from bigmachine.systems import Local, Testing

ROOT = Path(__file__).parent.parent


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=1)
    driver.add_arguments(parser)
    return parser.parse_args(argv)


def test_defaults() -> None:
    args = parse([])
    assert args.bigm_system == "local" and args.bigm_debug == "127.0.0.1:3333"
    assert isinstance(driver.make_system(args), Local)


def test_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    args = parse(["--bigm.system", "testing", "--bigm.debug", "none", "-n", "3"])
    assert args.n == 3 and args.bigm_debug == "none"
    assert isinstance(driver.make_system(args), Testing)


def test_environment_variables_set_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BIGMACHINE_SYSTEM", "testing")
    monkeypatch.setenv("BIGMACHINE_DEBUG", "127.0.0.1:0")
    args = parse([])
    assert args.bigm_system == "testing" and args.bigm_debug == "127.0.0.1:0"
    assert parse(["--bigm.system", "local"]).bigm_system == "local"  # a flag beats the environment


def test_unknown_system_is_rejected(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse(["--bigm.system", "mainframe"])
    assert "invalid choice: 'mainframe'" in capsys.readouterr().err


def test_start_without_args_reads_argv_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["prog", "--bigm.system=testing", "--bigm.debug=none", "--other-flag"])
    with driver.start() as b:
        assert isinstance(b.system, Testing) and b.debug_url is None and b.is_driver


@pytest.mark.parametrize("system", ["local", "testing"])
def test_bigpi_example_prints_pi_and_warns_of_nothing(system: str) -> None:
    run = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "bigpi.py"), "-n", "200000", "--nmach", "2",
         f"--bigm.system={system}", "--bigm.debug=none"],
        capture_output=True, text=True, timeout=120, check=True,
    )
    last = run.stdout.strip().splitlines()[-1]
    assert last.startswith("pi = ") and abs(float(last.split()[-1]) - 3.14159) < 0.05
    noise = [line for line in (run.stdout + run.stderr).splitlines() if "WARNING" in line or "ERROR" in line]
    assert not noise, f"a run that went well, shutdown included, said: {noise}"


def test_wordcount_example_counts_across_machines() -> None:
    text = "the cat and the dog and the bird\n" * 300
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "wordcount.py"), "--nmach", "3", "--top", "2", "--bigm.debug=none"],
        input=text, capture_output=True, text=True, timeout=120, check=True,
    ).stdout.splitlines()
    assert out[0] == "2400 words"
    assert out[1].split() == ["900", "the"] and out[2].split() == ["600", "and"]
