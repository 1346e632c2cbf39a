"""A private certificate authority and server certificate for the local services.

With secured links on, the local Kafka and Redis speak TLS only, so they need a
certificate that clients can verify with host name checks on. ``openssl``
makes a CA once and a server certificate for the loopback names, kept under
``<data_dir>/services/tls`` where only the owner can read them (mode 0700
folder, 0600 files). Clients trust the CA through ``kafka_ca_file`` and
``redis_ca_file``; nothing here is ever committed.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import shutil
import subprocess
from pathlib import Path

from pipeline.services import ServiceError

DAYS = 825  # the longest validity clients accept for a server certificate


@dataclasses.dataclass(frozen=True)
class Certificates:
    """Paths of the PEM files the servers and clients use."""

    directory: Path

    @property
    def ca(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.directory / "ca-key.pem"

    @property
    def cert(self) -> Path:
        return self.directory / "server.pem"

    @property
    def key(self) -> Path:
        return self.directory / "server-key.pem"

    @property
    def keystore(self) -> Path:
        """Private key, then certificate chain: Kafka's PEM keystore."""
        return self.directory / "server-keystore.pem"

    @property
    def names(self) -> Path:
        """The subject alternative names the server certificate was made for."""
        return self.directory / "server.names"


def subject_alt_names(hosts: list[str]) -> str:
    """``DNS:localhost,IP:127.0.0.1`` and each further host, as openssl takes them."""
    entries = ["DNS:localhost", "IP:127.0.0.1"]
    for host in hosts:
        try:
            entry = f"IP:{ipaddress.ip_address(host)}"
        except ValueError:
            entry = f"DNS:{host}"
        if entry not in entries:
            entries.append(entry)
    return ",".join(entries)


def _openssl(args: list[str], directory: Path) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        raise ServiceError("`openssl` not found on PATH; install Debian package openssl")
    try:
        done = subprocess.run(
            [openssl, *args],
            cwd=directory,
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
            # Keys and certificates are readable by the owner only.
            preexec_fn=lambda: os.umask(0o077),
        )
    except subprocess.TimeoutExpired:
        raise ServiceError(f"openssl {args[0]} took longer than 60 s") from None
    if done.returncode != 0:
        raise ServiceError(f"openssl {args[0]} failed: {done.stderr.strip()[-500:]}")


def ensure_certificates(directory: Path, hosts: list[str]) -> Certificates:
    """Make the CA (once) and a server certificate covering ``hosts`` (when they change)."""
    certs = Certificates(directory)
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    if not (certs.ca.exists() and certs.ca_key.exists()):
        _openssl(
            [
                "req", "-x509", "-new", "-newkey", "rsa:2048", "-nodes", "-sha256",
                "-days", str(DAYS), "-subj", "/CN=sensor-forecasts local CA",
                "-addext", "basicConstraints=critical,CA:TRUE",
                "-addext", "keyUsage=critical,keyCertSign,cRLSign",
                "-keyout", certs.ca_key.name, "-out", certs.ca.name,
            ],
            directory,
        )  # fmt: skip
        certs.cert.unlink(missing_ok=True)
    names = subject_alt_names(hosts)
    current = certs.names.read_text().strip() if certs.names.exists() else None
    if not certs.cert.exists() or current != names:
        _openssl(
            [
                "req", "-x509", "-new", "-newkey", "rsa:2048", "-nodes", "-sha256",
                "-days", str(DAYS), "-subj", "/CN=localhost",
                "-CA", certs.ca.name, "-CAkey", certs.ca_key.name,
                "-addext", f"subjectAltName={names}",
                "-addext", "basicConstraints=critical,CA:FALSE",
                "-addext", "keyUsage=critical,digitalSignature,keyEncipherment",
                "-addext", "extendedKeyUsage=serverAuth",
                "-keyout", certs.key.name, "-out", certs.cert.name,
            ],
            directory,
        )  # fmt: skip
        certs.keystore.touch(mode=0o600)
        certs.keystore.write_text(
            certs.key.read_text() + certs.cert.read_text() + certs.ca.read_text()
        )
        certs.names.write_text(names + "\n")
    return certs
