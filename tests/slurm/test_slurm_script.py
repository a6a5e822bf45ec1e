"""The batch script and squeue's lines, read without a cluster."""

from __future__ import annotations

import subprocess
from pathlib import Path

from bigmachine.systems.slurm import commands, script


def test_script_removes_the_credentials_before_the_agent_reads_them(tmp_path: Path) -> None:
    (tmp_path / script.CREDENTIALS).write_text('{"secret": 1}\n')
    fake = tmp_path / "python"  # stands in for the interpreter: shows what the agent would read, and the dir
    fake.write_text('#!/bin/sh\ncat /dev/stdin; ls\n')
    fake.chmod(0o755)
    text = script.render(python=str(fake), session="s-1", machine="m0", version="0.1.0")
    done = subprocess.run(["sh", "-s"], input=text, capture_output=True, text=True, cwd=tmp_path, timeout=30,
                          env={"SLURMD_NODENAME": "node7", "PATH": "/usr/bin:/bin"}, check=True)
    assert done.stdout.splitlines()[:2] == ["bigmachine: node node7", '{"secret": 1}']
    assert script.CREDENTIALS not in done.stdout.split()  # gone before the agent ran
    assert not (tmp_path / script.CREDENTIALS).exists()


def test_report_needs_both_the_node_and_the_agents_port(tmp_path: Path) -> None:
    output = tmp_path / script.OUTPUT
    assert script.report(output) is None
    output.write_text("bigmachine: node c12-3\n")
    assert script.report(output) is None
    output.write_text("bigmachine: node c12-3\nINFO bigmachine.agent: agent x listening on 0.0.0.0:4242\n"
                      "listening on 0.0.0.0:4242\n")
    assert script.report(output) == ("c12-3", 4242)


def test_squeue_lines_parse_with_free_text_reasons() -> None:
    (job,) = [commands._parse("17_3|PENDING||short|4|ann|0:00|bigmachine:s-1|QOSMaxJobsPerUserLimit|x")]
    assert (job.id, job.state, job.node, job.partition, job.cpus, job.user) == ("17_3", "PENDING", "", "short", 4, "ann")
    assert job.name == "bigmachine:s-1" and job.reason == "QOSMaxJobsPerUserLimit|x" and not job.ended
    assert commands._parse("9|CANCELLED by 0|vm|debug|1|root|0:05|bigmachine:s|None").state == "CANCELLED"
    assert commands._parse("9|TIMEOUT|vm|debug|1|root|1:00|bigmachine:s|TimeLimit").ended
