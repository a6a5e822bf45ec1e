"""runtime/spec.py: the LaunchSpec a system hands a starting machine, through the environment."""

from __future__ import annotations

import json
import os

import pytest

from bigmachine.runtime.spec import ENVIRONMENT_VARIABLE, LaunchSpec


def test_a_spec_travels_through_the_environment_and_is_consumed(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = LaunchSpec(session="s-1", tls_dir="/tmp/tls", listen_fd=7, lease=70.0, parent=123, system="local",
                      service_threads=8, keepalive=(2.0, 60.0, 10.0), report_fd=9, path=["/code"], argv=["x.py"],
                      memory_limit=1 << 30, cgroup_procs="/sys/fs/cgroup/x/cgroup.procs")
    monkeypatch.setenv(ENVIRONMENT_VARIABLE, spec.to_environment()[ENVIRONMENT_VARIABLE])
    assert LaunchSpec.from_environment() == spec
    assert ENVIRONMENT_VARIABLE not in os.environ  # a machine's children don't inherit it


def test_a_spec_from_another_version_with_unknown_fields_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENVIRONMENT_VARIABLE, json.dumps({"session": "s", "tls_dir": "/t", "colour": "blue"}))
    with pytest.raises(ValueError, match=r"unknown fields \['colour'\]: driver and machine versions differ"):
        LaunchSpec.from_environment()
