"""The standalone's own TLS certificate: self-signed, made on first start, kept beside
the secret key file, as the reference console ships one (so ``curl -k`` works at once,
and a client that pins the certificate can check its fingerprint)."""

from __future__ import annotations

import hashlib
import ipaddress
import os
import socket
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALID_DAYS = 825  # the longest lifetime clients commonly accept for a server certificate
CERT_NAME = "regscan-tls.crt"
KEY_NAME = "regscan-tls.key"


@dataclass(frozen=True)
class TlsFiles:
    cert_file: Path
    key_file: Path

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the certificate (DER) as ``AA:BB:...``, as browsers show it."""
        cert = x509.load_pem_x509_certificate(self.cert_file.read_bytes())
        return fingerprint(cert)


def fingerprint(cert: x509.Certificate) -> str:
    digest = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def load_or_create(folder: Path) -> TlsFiles:
    """The certificate and key in ``folder``; made there the first time."""
    files = TlsFiles(folder / CERT_NAME, folder / KEY_NAME)
    if not (files.cert_file.exists() and files.key_file.exists()):
        _create(files)
    return files


def _create(files: TlsFiles) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    host = socket.gethostname()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"regscan on {host}")])
    alt_names: list[x509.GeneralName] = [x509.DNSName("localhost")]
    if host and host != "localhost":
        alt_names.append(x509.DNSName(host))
    alt_names += [x509.IPAddress(ipaddress.ip_address(a)) for a in ("127.0.0.1", "::1")]
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    # The key is created readable by its owner only; the certificate is public.
    fd = os.open(files.key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(key_pem)
    files.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
