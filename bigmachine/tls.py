"""The session's certificate authority: ECDSA P-256 keys, short-lived certificates, mTLS contexts.

The authority's private key is created in the driver and never written anywhere but
the driver's private temp dir; machines get only a leaf certificate and its key.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Authority", "Identity", "client_context", "server_context"]

CA_FILE, CERT_FILE, KEY_FILE = "ca.pem", "cert.pem", "key.pem"
_CLOCK_SKEW = datetime.timedelta(minutes=5)


@dataclass(frozen=True)
class Identity:
    """A leaf certificate, its key and the authority's certificate, as PEM."""

    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes

    def write(self, directory: str | os.PathLike[str]) -> Path:
        """Writes the three files into ``directory`` (created 0700), keys 0600; returns it."""
        path = Path(directory)
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        for name, data in ((CA_FILE, self.ca_pem), (CERT_FILE, self.cert_pem), (KEY_FILE, self.key_pem)):
            fd = os.open(path / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        return path


class Authority:
    """An in-process CA issuing leaf certificates good for both server and client auth."""

    def __init__(self, name: str = "bigmachine", *, lifetime: datetime.timedelta = datetime.timedelta(days=7)):
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        self._x509, self._hashes, self._ec, self._ser = x509, hashes, ec, serialization
        self.lifetime = lifetime
        self._key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} authority")])
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _CLOCK_SKEW)
            .not_valid_after(now + lifetime)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
            )
            .sign(self._key, hashes.SHA256())
        )
        self.ca_pem = self._cert.public_bytes(serialization.Encoding.PEM)

    def issue(
        self,
        hosts: list[str],
        *,
        common_name: str = "bigmachine",
        lifetime: datetime.timedelta | None = None,
        not_before: datetime.datetime | None = None,
        usages: tuple[str, ...] = ("server", "client"),
    ) -> Identity:
        """A new key and a certificate for it, valid for ``hosts`` (IP addresses or DNS names)."""
        from cryptography.hazmat.primitives.asymmetric import ec

        key = ec.generate_private_key(ec.SECP256R1())
        cert = self._certify(key.public_key(), hosts, common_name, lifetime, not_before, usages)
        ser = self._ser
        key_pem = key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.NoEncryption())
        return Identity(self.ca_pem, cert, key_pem)

    def sign_request(self, csr_pem: bytes, hosts: list[str], *, common_name: str) -> bytes:
        """A certificate for the key of a signing request: the key never travels, the names are ours."""
        from .errors import Error

        csr = self._x509.load_pem_x509_csr(csr_pem)
        if not csr.is_signature_valid:
            raise Error("the certificate signing request has a bad signature")
        return self._certify(csr.public_key(), hosts, common_name, None, None, ("server", "client"))

    def _certify(self, public_key: Any, hosts: list[str], common_name: str, lifetime: datetime.timedelta | None,
                 not_before: datetime.datetime | None, usages: tuple[str, ...]) -> bytes:
        x509 = self._x509
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        start = not_before or _now()
        oids = {"server": ExtendedKeyUsageOID.SERVER_AUTH, "client": ExtendedKeyUsageOID.CLIENT_AUTH}
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self._cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(start if not_before else start - _CLOCK_SKEW)  # machines' clocks may lag ours
            .not_valid_after(start + (lifetime or self.lifetime))
            .add_extension(x509.ExtendedKeyUsage([oids[u] for u in usages]), critical=True)
        )
        names: list[Any] = []
        for host in dict.fromkeys(hosts):
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        pem: bytes = builder.sign(self._key, self._hashes.SHA256()).public_bytes(self._ser.Encoding.PEM)
        return pem


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def server_context(directory: str | os.PathLike[str]) -> ssl.SSLContext:
    """A TLS server context that requires a client certificate from the same authority."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _load(ctx, Path(directory))
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_context(directory: str | os.PathLike[str]) -> ssl.SSLContext:
    """A TLS client context that presents our certificate and verifies the server's."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # check_hostname and CERT_REQUIRED by default
    _load(ctx, Path(directory))
    return ctx


def _load(ctx: ssl.SSLContext, path: Path) -> None:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(path / CERT_FILE, path / KEY_FILE)
    ctx.load_verify_locations(path / CA_FILE)
