"""The debug server is not a door: DNS rebinding and other sites' requests are refused (issue 13)."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator

import httpx
import pytest
from browser import Browser
from debug_support import Cluster

from bigmachine.web.guard import allowed_hosts, host_name

pytestmark = pytest.mark.timeout(120)


def test_only_known_host_names_are_served(cluster: Cluster, http: httpx.Client) -> None:
    port = cluster.origin.rsplit(":", 1)[1]
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost"):
        assert http.get(cluster.base + "/vars", headers={"Host": host}).status_code == 200, host
    for host in (f"attacker.example:{port}", "attacker.example", f"127.0.0.1.attacker.example:{port}", ""):
        reply = http.get(cluster.base + "/vars", headers={"Host": host})
        assert reply.status_code == 400, host
        assert "--bigm.debug-allow-host" in reply.text and "pid" not in reply.text


def test_cross_site_requests_are_refused_but_links_work(cluster: Cluster, http: httpx.Client) -> None:
    fetch = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "cors", "Sec-Fetch-Dest": "empty"}
    assert http.get(cluster.base + "/vars", headers=fetch).status_code == 403
    image = {"Sec-Fetch-Site": "same-site", "Sec-Fetch-Mode": "no-cors", "Sec-Fetch-Dest": "image"}
    assert http.get(cluster.base + "/pprof/profile?seconds=1", headers=image).status_code == 403
    link = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document"}
    assert http.get(cluster.base + "/status", headers=link).status_code == 200
    own = {"Sec-Fetch-Site": "same-origin", "Sec-Fetch-Mode": "cors"}
    assert http.get(cluster.base + "/timeline", headers=own).status_code == 200


def test_host_names() -> None:
    assert host_name("h:1") == "h" and host_name("[::1]:3333") == "::1" and host_name("::1") == "::1"
    assert {"localhost", "127.0.0.1", "::1", "10.0.0.5"} <= allowed_hosts("10.0.0.5")
    assert "ops.example" in allowed_hosts(None, ["Ops.Example"])


def test_dns_rebinding_in_chromium(cluster: Cluster) -> None:
    """The browser resolves attacker.example to 127.0.0.1, as a rebinding attack makes it: the page is refused."""
    port = cluster.origin.rsplit(":", 1)[1]
    with Browser("--host-resolver-rules=MAP attacker.example 127.0.0.1") as browser:
        browser.open(f"http://attacker.example:{port}/debug/bigmachine/vars")
        text = browser.run("document.body.innerText")
        assert text.startswith("invalid Host 'attacker.example'")
        assert "cmdline" not in text
        browser.open(cluster.base + "/vars")  # the same browser, the right name: served
        assert "cmdline" in browser.run("document.body.innerText")


@pytest.fixture
def other_site() -> Iterator[str]:
    """Another origin on loopback serving one page (what a web page the user opens would be)."""

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"<!doctype html><title>elsewhere</title><p>another site</p>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    thread = threading.Thread(target=server.serve_forever, name="other-site")
    thread.start()
    try:
        yield f"http://localhost:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_cross_origin_fetch_in_chromium_is_refused(cluster: Cluster, other_site: str) -> None:
    with Browser() as browser:
        browser.open(other_site)
        script = """
          Promise.all(["/debug/bigmachine/vars", "/debug/bigmachine/pprof/profile?seconds=5"].map(function (path) {
            return fetch("%s" + path).then(function (r) { return "read " + r.status; },
                                          function (e) { return "refused " + e.name; });
          }).concat([fetch("%s/debug/bigmachine/vars", {mode: "no-cors"}).then(function (r) {
            return "opaque " + r.type + " " + r.status; }, function (e) { return "refused " + e.name; })]))
        """ % (cluster.origin, cluster.origin)
        outcomes = browser.run(script)
    assert outcomes[:2] == ["refused TypeError", "refused TypeError"]
    assert outcomes[2] in ("opaque opaque 0", "refused TypeError")  # nothing readable either way


def test_more_host_names_can_be_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    import bigmachine
    from bigmachine import systems
    from bigmachine.web.guard import ALLOW_HOST_ENV
    from bigmachine.web.server import serve_debug

    monkeypatch.setenv(ALLOW_HOST_ENV, "ops.example, dash.example")
    with bigmachine.start(systems.Testing()) as b:
        server = serve_debug(b, "127.0.0.1:0", allow_hosts=["driver.internal"])
        url = f"http://127.0.0.1:{server.port}/debug/bigmachine/machines"
        for host in ("ops.example", "dash.example:80", "driver.internal", "127.0.0.1"):
            assert httpx.get(url, headers={"Host": host}).status_code == 200, host
        assert httpx.get(url, headers={"Host": "other.example"}).status_code == 400


def test_the_driver_option_allows_more_host_names() -> None:
    """``--bigm.debug-allow-host NAME`` (repeatable) reaches the guard: that name is served, others still not."""
    import argparse

    from bigmachine import driver

    parser = argparse.ArgumentParser()
    driver.add_arguments(parser)
    args = parser.parse_args(["--bigm.system", "testing", "--bigm.debug", "127.0.0.1:0",
                              "--bigm.debug-allow-host", "cluster.example", "--bigm.debug-allow-host", "other.example"])
    with driver.start(args) as b:
        assert b.debug_url is not None
        port = b.debug_url.rsplit(":", 1)[1].rstrip("/")
        url = f"{b.debug_url.rstrip('/')}/debug/bigmachine/vars"
        with httpx.Client(timeout=10) as client:
            for host in ("cluster.example", f"other.example:{port}"):
                assert client.get(url, headers={"Host": host}).status_code == 200, host
            assert client.get(url, headers={"Host": "attacker.example"}).status_code == 400
