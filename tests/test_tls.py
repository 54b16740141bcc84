"""HTTPS served by regscan itself: the standalone's self-signed certificate, made once
and kept beside its key file, answering the reference's ``curl -k https://...`` commands;
and a renewed certificate taken up on SIGHUP without a restart."""

from __future__ import annotations

import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509

from regscan.certificate import fingerprint
from testbed.services import free_port
from testbed.stack import Stack, wait_for
from testbed.tls import ServerCertificate, TestCA


def served_fingerprint(port: int) -> str:
    """SHA-256 of the certificate the server on ``port`` presents to a new connection."""
    pem = ssl.get_server_certificate(("127.0.0.1", port), timeout=5)
    return fingerprint(x509.load_pem_x509_certificate(pem.encode()))


class Standalone:
    """``regscan standalone`` in a folder of its own, read as a person reads it."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port, self.tls_port = free_port(), free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("REGSCAN_")}
        env["REGSCAN_DATABASE_URL"] = f"sqlite:///{folder / 'regscan.db'}"
        self.log = folder / "standalone.log"
        ports = ["--port", str(self.port), "--tls-port", str(self.tls_port)]
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "regscan.cli", "standalone", *ports],
                cwd=folder,
                env={**env, "PYTHONPATH": str(Path(__file__).parents[1])},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_for(lambda: "Press Ctrl-C" in self.text(), 60, "the standalone to start")

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def shown(self, label: str) -> str:
        return re.findall(rf"^  {label}:\s+(\S+)", self.text(), re.MULTILINE)[-1]

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=60)


@pytest.mark.e2e
def test_standalone_answers_curl_k_https_with_a_certificate_made_once(tmp_path: Path):
    # Given the standalone started for the first time
    first = Standalone(tmp_path)
    try:
        # Then it made a certificate beside its key file, and printed its fingerprint
        cert = tmp_path / "regscan-tls.crt"
        assert (tmp_path / "regscan.key").exists() and cert.exists()
        assert (tmp_path / "regscan-tls.key").stat().st_mode & 0o077 == 0
        printed = first.shown("SHA-256")
        assert printed == served_fingerprint(first.tls_port)
        # And the reference's command works as written, over curl -k
        password = first.shown("password")
        done = subprocess.run(
            ["curl", "-sk", "-u", f"admin:{password}",
             f"https://127.0.0.1:{first.tls_port}/api/v34.04/settings/registry"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert done.returncode == 0 and '"specifications":[]' in done.stdout, done
        # And plain HTTP stays
        plain = subprocess.run(
            ["curl", "-s", f"http://127.0.0.1:{first.port}/api/v1/_ping"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert plain.stdout == '"OK"'
    finally:
        first.stop()

    # When it starts again, it serves the same certificate
    again = Standalone(tmp_path)
    try:
        assert again.shown("SHA-256") == printed == served_fingerprint(again.tls_port)
    finally:
        again.stop()


def test_the_api_takes_a_renewed_certificate_on_sighup(
    stack: Stack, api_ca: TestCA, api_certificate: ServerCertificate, tmp_path: Path
):
    assert stack.tls_port is not None
    wait_for(lambda: _serves(stack.tls_port), 30, "the API's HTTPS listener")
    before = served_fingerprint(stack.tls_port)
    # Given a renewed certificate written over the files the API was started with
    renewed = api_ca.issue(f"renewed-{tmp_path.name}")
    shutil.copy(renewed.cert_file, api_certificate.cert_file)
    shutil.copy(renewed.key_file, api_certificate.key_file)

    # When the API is sent SIGHUP, new connections get the renewed certificate
    stack.signal("api", signal.SIGHUP)
    wait_for(lambda: served_fingerprint(stack.tls_port) == renewed.fingerprint, 10, "the reload")
    assert renewed.fingerprint != before

    # And a half-written pair is not taken: the renewed one stays in service
    saved = api_certificate.cert_file.read_bytes()
    api_certificate.cert_file.write_text("-----BEGIN CERTIFICATE-----\ncut off")
    try:
        stack.signal("api", signal.SIGHUP)
        assert served_fingerprint(stack.tls_port) == renewed.fingerprint
        assert stack.api.get("/api/v1/_ping").status_code == 200
    finally:
        api_certificate.cert_file.write_bytes(saved)


def _serves(port: int) -> bool:
    try:
        served_fingerprint(port)
    except OSError:
        return False
    return True
