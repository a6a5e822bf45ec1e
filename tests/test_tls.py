"""Mutual TLS: only clients with a certificate from the session's authority reach a service."""

from __future__ import annotations

import datetime
import socket
import ssl
from pathlib import Path

import pytest
import handmade
from services import Echo

import bigmachine
from bigmachine import tls


@pytest.fixture
def machine(testing_session: bigmachine.B) -> bigmachine.Machine:
    (m,) = testing_session.start(1, bigmachine.Services(Echo=Echo()))
    m.wait(bigmachine.RUNNING, timeout=10)
    return m


def _request(machine: bigmachine.Machine, context: ssl.SSLContext | None) -> bytes:
    """Sends one RPC by hand; returns what the server answered (b'' if it refused or hung up)."""
    return handmade.post(machine, context, "Echo.echo", bigmachine.rpc.wire.encode_args("Echo.echo", (1,), {}))


def _client_context(identity: tls.Identity | None, ca_pem: bytes, tmp_path: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cadata=ca_pem.decode())
    if identity is not None:
        identity.write(tmp_path / "id")
        ctx.load_cert_chain(tmp_path / "id" / tls.CERT_FILE, tmp_path / "id" / tls.KEY_FILE)
    return ctx


def test_session_certificate_is_accepted(machine: bigmachine.Machine, testing_session: bigmachine.B, tmp_path: Path) -> None:
    identity = testing_session.authority.issue(["127.0.0.1"])
    assert b"200 OK" in _request(machine, _client_context(identity, identity.ca_pem, tmp_path))


def test_client_without_certificate_is_refused(machine: bigmachine.Machine, testing_session: bigmachine.B, tmp_path: Path) -> None:
    assert _request(machine, _client_context(None, testing_session.authority.ca_pem, tmp_path)) == b""


def test_certificate_from_another_authority_is_refused(machine: bigmachine.Machine, testing_session: bigmachine.B, tmp_path: Path) -> None:
    stranger = tls.Authority("stranger").issue(["127.0.0.1"])
    assert _request(machine, _client_context(stranger, testing_session.authority.ca_pem, tmp_path)) == b""


def test_expired_certificate_is_refused(machine: bigmachine.Machine, testing_session: bigmachine.B, tmp_path: Path) -> None:
    old = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=30)
    expired = testing_session.authority.issue(["127.0.0.1"], not_before=old, lifetime=datetime.timedelta(days=1))
    assert _request(machine, _client_context(expired, expired.ca_pem, tmp_path)) == b""


def test_plain_http_is_refused(machine: bigmachine.Machine) -> None:
    assert b"200 OK" not in _request(machine, None)


def test_client_verifies_the_server(machine: bigmachine.Machine, tmp_path: Path) -> None:
    """A server whose certificate is not from our authority is not trusted, even on the right address."""
    stranger = tls.Authority("stranger").issue(["127.0.0.1"])
    stranger.write(tmp_path / "server")
    server_ctx = tls.server_context(tmp_path / "server")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        import threading

        def accept() -> None:
            conn, _ = listener.accept()
            try:
                server_ctx.wrap_socket(conn, server_side=True)
            except (ssl.SSLError, OSError):
                pass
            finally:
                conn.close()

        thread = threading.Thread(target=accept)
        thread.start()
        impostor = machine._session.dial(f"https://127.0.0.1:{port}/")
        assert impostor.wait(bigmachine.RUNNING, timeout=10) == bigmachine.STOPPED
        thread.join(5)
    assert "CERTIFICATE_VERIFY_FAILED" in repr(impostor.err) or "certificate" in repr(impostor.err).lower()


def test_key_material_is_private_and_removed_at_shutdown(testing_system: bigmachine.systems.Testing) -> None:
    b = bigmachine.start(testing_system)
    tmpdir = b.tmpdir
    try:
        assert tmpdir.stat().st_mode & 0o777 == 0o700
        keys = list(tmpdir.rglob(tls.KEY_FILE))
        assert keys and all(k.stat().st_mode & 0o777 == 0o600 for k in keys)
        assert not list(tmpdir.rglob("ca-key*"))  # the authority's key is never written
    finally:
        b.shutdown()
    assert not tmpdir.exists()


def test_certificates_are_ecdsa_p256_and_short_lived(testing_session: bigmachine.B) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

    cert = x509.load_pem_x509_certificate(testing_session.authority.issue(["127.0.0.1"]).cert_pem)
    key = cert.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1"
    assert cert.not_valid_after_utc - cert.not_valid_before_utc <= datetime.timedelta(days=8)
