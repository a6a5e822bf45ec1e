"""Serving the debug app: address handling, the 3333 fallback, shutdown, mounting ``b.debug_app()`` elsewhere."""

from __future__ import annotations

import argparse
import asyncio
import logging
import socket
import threading

import httpx
import pytest
from debug_support import start_driver
from services import Modules
from starlette.applications import Starlette
from starlette.routing import Mount

import bigmachine
from bigmachine import RUNNING, driver, systems
from bigmachine.web.server import parse_address, serve_debug

pytestmark = pytest.mark.timeout(60)


def _debug_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "bigmachine-debug-server"]


def test_driver_start_serves_logs_the_url_and_shutdown_stops_it(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="bigmachine.web.server")
    with start_driver("testing") as b:
        assert b.debug_url is not None
        assert f"debug server: {b.debug_url}/debug/bigmachine/status" in caplog.text
        assert httpx.get(b.debug_url + "/debug/bigmachine/status").status_code == 200
        assert len(_debug_threads()) == 1
        port = int(b.debug_url.rsplit(":", 1)[1])
    assert not _debug_threads()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/debug/bigmachine/status")


def test_debug_none_serves_nothing() -> None:
    parser = argparse.ArgumentParser()
    driver.add_arguments(parser)
    with driver.start(parser.parse_args(["--bigm.system", "testing", "--bigm.debug", "none"])) as b:
        assert b.debug_url is None
        assert not _debug_threads()


def test_default_port_taken_falls_back_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    blocker = socket.socket()
    try:
        blocker.bind(("127.0.0.1", 3333))
        blocker.listen(1)
    except OSError:
        pass  # someone else has it: taken all the same
    try:
        with bigmachine.start(systems.Testing()) as b:
            server = serve_debug(b, "127.0.0.1:3333")
            assert server.port != 3333
            assert "port 3333 on 127.0.0.1 is taken" in caplog.text
            assert b.debug_url == f"http://127.0.0.1:{server.port}"
            assert httpx.get(b.debug_url + "/debug/bigmachine/status").status_code == 200
    finally:
        blocker.close()


def test_other_ports_taken_fail_with_advice() -> None:
    with socket.socket() as taken, bigmachine.start(systems.Testing()) as b:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match="--bigm.debug"):
            serve_debug(b, f"127.0.0.1:{port}")
        assert b.debug_url is None


def test_addresses() -> None:
    assert parse_address("127.0.0.1:0") == ("127.0.0.1", 0)
    assert parse_address(":8080") == ("127.0.0.1", 8080)
    assert parse_address("[::1]:3333") == ("::1", 3333)
    for bad in ("localhost", "127.0.0.1:http", "1.2.3.4:70000"):
        with pytest.raises(ValueError, match="HOST:PORT"):
            parse_address(bad)


def test_debug_app_mounts_in_another_app_and_machines_never_load_the_web_stack() -> None:
    with bigmachine.start(systems.Local()) as b:
        (machine,) = b.start(1, bigmachine.Services(Modules=Modules()))
        machine.wait(RUNNING, timeout=60)
        outer = Starlette(routes=[Mount("/ops", app=b.debug_app())])

        async def fetch() -> tuple[httpx.Response, httpx.Response]:
            transport = httpx.ASGITransport(app=outer)
            async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
                return (await client.get("/ops/debug/bigmachine/status"),
                        await client.get("/ops/debug/bigmachine/vars"))

        status, values = asyncio.run(fetch())
        assert status.status_code == 200
        assert 'href="/ops/debug/bigmachine/machine/' in status.text
        assert values.json()[machine.addr]["pid"] == machine.info["pid"]
        assert machine.call("Modules.loaded", ["starlette", "jinja2", "httpx"]) == []


def test_status_page_shows_cloud_instances_and_the_session_cost(monkeypatch: pytest.MonkeyPatch) -> None:
    """What an EC2 instance's describe() and the system's cost() say reaches the status page."""
    from bigmachine.systems.testing import TestInstance

    described = {"instance": "i-0123456789abcdef0", "type": "c7i.large", "market": "spot", "usd_per_hour": 0.0345}
    monkeypatch.setattr(TestInstance, "describe", lambda self: described)
    system = systems.Testing()
    system.cost = lambda: {"instances": 1, "usd_per_hour": 0.0345, "usd_so_far": 1.25}  # type: ignore[attr-defined]
    with bigmachine.start(system) as b:
        (machine,) = b.start(1, bigmachine.Services(Modules=Modules()))
        machine.wait(RUNNING, timeout=30)

        async def fetch() -> httpx.Response:
            transport = httpx.ASGITransport(app=b.debug_app())
            async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
                return await client.get("/debug/bigmachine/status")

        page = asyncio.run(fetch()).text
    assert "i-0123456789abcdef0 · c7i.large · spot · $0.0345/h" in page
    assert "$1.25" in page and "1 instances · $0.035/h now" in page
