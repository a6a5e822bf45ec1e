"""A Local machine serves the driver's own calls on a Unix socket in its private directory, everyone
else's on its TCP address; a directory too deep for a Unix socket's path leaves all calls on TCP."""

from __future__ import annotations

import asyncio
import io
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from services import Echo, Peer, Streams

import bigmachine
from bigmachine import RUNNING
from bigmachine.systems import Local

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def machines(local_session: bigmachine.B) -> list[bigmachine.Machine]:
    started = local_session.start(2, bigmachine.Services(Echo=Echo(), Streams=Streams(), Peer=Peer()))
    for machine in started:
        assert machine.wait(RUNNING, timeout=60) == RUNNING
    return started


def _port(machine: bigmachine.Machine) -> int:
    return int(machine.addr.rstrip("/").rsplit(":", 1)[1])


def _driver_tcp_connections_to(machine: bigmachine.Machine) -> list[object]:
    port = _port(machine)
    return [c for c in psutil.Process().net_connections("tcp") if c.raddr and c.raddr.port == port]


def _every_kind_of_call(machine: bigmachine.Machine) -> None:
    assert machine.call("Echo.add", 2, 3) == 5
    assert machine.submit("Echo.add", 4, 5).result(timeout=30) == 9

    async def main() -> int:
        return await machine.acall("Echo.add", 6, 7)

    assert asyncio.run(main()) == 13
    assert b"".join(machine.call("Streams.chunks", 3, 1000)) == b"x" * 3000
    assert machine.call("Streams.consume", io.BytesIO(b"y" * 300_000)) == 300_000


def test_the_driver_calls_its_machines_on_their_unix_sockets(local_session: bigmachine.B,
                                                             machines: list[bigmachine.Machine]) -> None:
    machine = machines[0]
    path = local_session._instances[machine].unix_socket()
    assert path is not None
    assert Path(path).parent == local_session.tmpdir / machine.name  # the machine's private directory (0700)
    assert stat.S_ISSOCK(os.stat(path).st_mode)
    _every_kind_of_call(machine)
    assert machine.connections()["data"] >= 1 and machine.connections()["control"] >= 1
    assert _driver_tcp_connections_to(machine) == []  # keepalives, control and data calls: all on the Unix socket
    served = [c for c in psutil.Process(machine.call("Echo.pid")).net_connections("unix") if c.laddr == path]
    assert len(served) >= machine.connections()["data"]  # the machine's ends, accepted on its socket


def test_machines_call_each_other_on_their_tcp_addresses(machines: list[bigmachine.Machine]) -> None:
    first, second = machines
    assert first.call("Peer.call_other", second.addr, "Echo.add", 2, 3) == 5
    accepted = psutil.Process(second.call("Echo.pid")).net_connections("tcp")
    assert any(c.laddr.port == _port(second) and c.raddr for c in accepted)  # TCP serves its peer (the driver has none)


@pytest.fixture
def deep_temp_dir(tmp_path: Path) -> Iterator[Path]:
    """A temp root so deep that no Unix socket path fits under a session's directory in it (108 bytes)."""
    deep = tmp_path / ("d" * 100)
    deep.mkdir()
    saved, tempfile.tempdir = tempfile.tempdir, str(deep)
    try:
        yield deep
    finally:
        tempfile.tempdir = saved


def test_a_temp_dir_too_deep_for_a_unix_socket_leaves_the_calls_on_tcp(deep_temp_dir: Path) -> None:
    with bigmachine.start(Local()) as b:
        assert str(b.tmpdir).startswith(str(deep_temp_dir))
        (machine,) = b.start(1, bigmachine.Services(Echo=Echo(), Streams=Streams()))
        assert machine.wait(RUNNING, timeout=60) == RUNNING
        assert b._instances[machine].unix_socket() is None
        _every_kind_of_call(machine)
        assert _driver_tcp_connections_to(machine)
        assert not list(b.tmpdir.rglob("*.sock"))
