"""The authority's key stays in the driver; only authenticated peers get a pickle loaded; the debug
app is read-only. Mutual TLS refusals (no certificate, another authority, expired, plain HTTP,
an impostor server) and key file modes are in tests/test_tls.py.
"""

from __future__ import annotations

import datetime
import os
import pickle
import ssl
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import handmade
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from services import Work
from starlette.routing import Host, Mount, Route

import bigmachine
from bigmachine import RUNNING, tls
from bigmachine.systems import Local

pytestmark = pytest.mark.timeout(120)


def key_forms(key: Any) -> dict[str, bytes]:
    """Every way the key could have been written or held: PEM and DER encodings, the raw scalar."""
    ser = serialization
    scalar = key.private_numbers().private_value.to_bytes(32, "big")
    forms = {
        "PKCS8 PEM": key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.NoEncryption()),
        "SEC1 PEM": key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.TraditionalOpenSSL, ser.NoEncryption()),
        "PKCS8 DER": key.private_bytes(ser.Encoding.DER, ser.PrivateFormat.PKCS8, ser.NoEncryption()),
        "scalar big-endian": scalar,
        "scalar little-endian": scalar[::-1],
    }
    # The key's part of the PEM's base64 on one line (as an environment variable or JSON would hold it);
    # the first 48 characters encode the ASN.1 header every P-256 key shares.
    forms["PEM body"] = b"".join(forms["PKCS8 PEM"].splitlines()[1:-1])[48:90]
    return forms


def found_in(data: bytes, forms: dict[str, bytes]) -> list[str]:
    return [name for name, form in forms.items() if form in data]


def scan_memory(pid: int, forms: dict[str, bytes]) -> tuple[set[str], int]:
    """Which forms occur in the readable memory of process ``pid`` (needs ptrace rights: root here)."""
    found: set[str] = set()
    scanned = 0
    with open(f"/proc/{pid}/maps") as f:
        regions = f.read().splitlines()
    with open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
        for region in regions:
            fields = region.split()
            if not fields[1].startswith("r") or (len(fields) > 5 and fields[5].startswith("[v")):
                continue
            low, high = (int(x, 16) for x in fields[0].split("-"))
            try:
                mem.seek(low)
                data = mem.read(high - low)
            except OSError:
                continue
            scanned += len(data)
            found.update(found_in(data, forms))
    return found, scanned


def test_the_authority_key_never_reaches_a_machine() -> None:
    with bigmachine.start(Local()) as b:
        (m,) = b.start(1, bigmachine.Services(Work=Work()))
        assert m.wait(RUNNING, timeout=60) == RUNNING, m.err
        ca = key_forms(b.authority._key)  # held in the driver's memory only

        # Key files: only leaf keys, each matching its own certificate, in the session's private dir.
        keys = sorted(b.tmpdir.rglob(tls.KEY_FILE))
        assert {k.parent.name for k in keys} == {"driver", m.name}
        for path in keys:
            leaf = load_pem_private_key(path.read_bytes(), None)
            cert = (path.parent / tls.CERT_FILE).read_bytes()
            assert x509.load_pem_x509_certificate(cert).public_key() == leaf.public_key()
            assert leaf.private_numbers() != b.authority._key.private_numbers()
        root = Path(tempfile.gettempdir())
        for path in [p for p in root.rglob("*") if p.is_file()] + [p for p in b.tmpdir.rglob("*") if p.is_file()]:
            assert not found_in(path.read_bytes(), ca), f"{path} holds the authority's key"

        # What the machine's process has: its environment, command line, the files it can read, its memory.
        environ = m.call("Work.environ", timeout=10)
        assert not found_in("\n".join(f"{k}={v}" for k, v in environ.items()).encode(), ca)
        assert not any("PRIVATE KEY" in v for v in environ.values())
        assert "BIGMACHINE_LAUNCH_SPEC" not in environ  # the spec is consumed at start
        pid = m.info["pid"]
        assert not found_in(" ".join(psutil.Process(pid).cmdline()).encode(), ca)
        tls_files = [str(p) for p in (b.tmpdir / m.name).iterdir() if p.is_file()]  # not its Unix socket
        readable = m.call("Work.read_files", tls_files, timeout=10)
        assert all(data is not None and not found_in(data, ca) for data in readable.values()), list(readable)

        own = key_forms(load_pem_private_key((b.tmpdir / m.name / tls.KEY_FILE).read_bytes(), None))
        try:
            found, scanned = scan_memory(pid, {**{f"CA {k}": v for k, v in ca.items()},
                                               **{f"leaf {k}": v for k, v in own.items()}})
        except PermissionError as exc:
            pytest.skip(f"can't read the machine's memory here: {exc}")
        assert scanned > 10 << 20
        assert "leaf scalar big-endian" in found or "leaf scalar little-endian" in found, \
            f"the scan should find the machine's own key (found {found})"  # the scan works
        assert not {f for f in found if f.startswith("CA ")}, f"the machine's memory holds the authority's key: {found}"


# ------------------------------------------------------------------ only authenticated peers


class MkdirOnLoad:
    """A pickle that makes a directory when loaded: shows whether a body was ever unpickled."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (self.path,))


def send(m: bigmachine.Machine, context: ssl.SSLContext | None, body: bytes) -> bytes:
    """POSTs ``body`` to Work.echo; returns what came back (b'' if the connection was refused)."""
    return handmade.post(m, context, "Work.echo", body)


def context_for(identity: tls.Identity | None, trust: bytes, directory: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cadata=trust.decode())
    if identity is not None:
        identity.write(directory)
        ctx.load_cert_chain(directory / tls.CERT_FILE, directory / tls.KEY_FILE)
    return ctx


def test_pickles_are_loaded_only_from_authenticated_peers(testing_session: bigmachine.B, tmp_path: Path) -> None:
    (m,) = testing_session.start(1, bigmachine.Services(Work=Work()))
    assert m.wait(RUNNING, timeout=10) == RUNNING
    authority = testing_session.authority
    old = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=30)
    peers = {
        "plain HTTP": None,
        "no client certificate": context_for(None, authority.ca_pem, tmp_path / "none"),
        "another authority's certificate": context_for(tls.Authority("stranger").issue(["127.0.0.1"]),
                                                       authority.ca_pem, tmp_path / "stranger"),
        "an expired certificate": context_for(authority.issue(["127.0.0.1"], not_before=old,
                                                              lifetime=datetime.timedelta(days=1)),
                                              authority.ca_pem, tmp_path / "expired"),
    }
    for name, context in peers.items():
        marker = tmp_path / f"unpickled-{name.replace(' ', '-')}"
        answer = send(m, context, pickle.dumps(((MkdirOnLoad(str(marker)),), {})))
        assert b"200 OK" not in answer, f"{name}: answered {answer[:100]!r}"
        time.sleep(0.2)
        assert not marker.exists(), f"{name}: the machine unpickled the body"
    # The session's own certificate: the body is loaded (that is the threat model: peers are trusted).
    marker = tmp_path / "unpickled-session-peer"
    answer = send(m, context_for(authority.issue(["127.0.0.1"]), authority.ca_pem, tmp_path / "peer"),
                  pickle.dumps(((MkdirOnLoad(str(marker)),), {})))
    assert b"200 OK" in answer and marker.is_dir()
    assert m.call("Work.add", 1, 2, timeout=5) == 3


# ------------------------------------------------------------------ the debug app


def _routes(routes: list[Any], prefix: str = "") -> list[tuple[str, Any]]:
    found = []
    for route in routes:
        if isinstance(route, (Mount, Host)):
            found += _routes(list(route.routes), prefix + getattr(route, "path", ""))
        else:
            found.append((prefix + getattr(route, "path", "?"), route))
    return found


def test_debug_app_has_only_read_only_routes(testing_session: bigmachine.B) -> None:
    """Every route of the debug app answers GET (and HEAD) only: nothing changes state or runs code.
    (tests/web/test_debug_routes.py sends POSTs to some pages; this walks every route.)"""
    routes = _routes(list(testing_session.debug_app().routes))
    paths = {path for path, _ in routes}
    assert {"/debug/bigmachine/status", "/debug/bigmachine/pprof/profile", "/metrics"} <= paths
    for path, route in routes:
        assert isinstance(route, Route), f"{path}: {type(route).__name__} is not a plain HTTP route"
        assert route.methods is not None and route.methods <= {"GET", "HEAD"}, f"{path}: {route.methods}"
