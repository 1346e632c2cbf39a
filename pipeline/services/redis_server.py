"""A ``redis-server`` from Debian's package, on the port of the settings' Redis URL.

Readings, jobs and forecasts live in Redis, so the server keeps an
append-only file under ``<data_dir>/services/redis``: a restart keeps every
write, and a crash loses at most the last second of them.

The settings decide how it is reached: a ``rediss://`` URL makes it speak TLS
only (certificate of the local CA, see ``pipeline.services.tls``), and a
password (``redis_password``, or one in the URL) makes it refuse clients that
do not log in, as the settings' ACL user or as the default user. The password
is stored only as its SHA-256 in ``redis.conf``, which only the owner can read.
"""

from __future__ import annotations

import hashlib
import shutil
from urllib.parse import unquote, urlsplit

import redis

from pipeline.connections import redis_client
from pipeline.services import (
    ManagedProcess,
    ServiceError,
    bind_host,
    server_address,
    services_dir,
)
from pipeline.services.tls import Certificates, ensure_certificates
from pipeline.settings import Settings


class RedisService:
    """One Redis server bound to loopback, managed as a detached process."""

    name = "redis"
    start_timeout = 30.0
    # On SIGTERM Redis flushes the append-only file; that is quick.
    stop_grace = 20.0

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.url = settings.redis_url
        self.host, self.port = server_address(self.url, 6379)
        self.directory = services_dir(settings) / "redis"
        self.config_path = self.directory / "redis.conf"
        self.process = ManagedProcess(self.directory, "redis")
        self.tls = urlsplit(self.url).scheme == "rediss"
        self.certificates = Certificates(services_dir(settings) / "tls")

    def answers(self) -> bool:
        """Whether the server answers PING to a client made from the settings."""
        client = redis_client(self.settings, socket_connect_timeout=2, socket_timeout=2)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    def mismatch(self) -> str | None:
        """Why the running server was not started for these settings, or None if it was."""
        try:
            running = self.config_path.read_text()
        except FileNotFoundError:
            return None
        if running == self._config():
            return None
        return (
            "the running Redis was started with another port, TLS mode or password than "
            "the settings ask for"
        )

    def prepare(self) -> None:
        """Check the binary, make the certificate if TLS is asked for, write the configuration."""
        self._binary()
        self.directory.mkdir(parents=True, exist_ok=True)
        if self.tls:
            ensure_certificates(self.certificates.directory, [self.host])
        self.config_path.touch(mode=0o600)
        self.config_path.chmod(0o600)
        self.config_path.write_text(self._config())

    def command(self) -> list[str]:
        """Run the server in the foreground with the generated configuration."""
        return [self._binary(), str(self.config_path)]

    def _binary(self) -> str:
        path = shutil.which("redis-server")
        if path is None:
            raise ServiceError(
                "`redis-server` not found on PATH; install Debian package redis-server"
            )
        return path

    def _config(self) -> str:
        if self.tls:
            listen = [
                "port 0",
                f"tls-port {self.port}",
                f"tls-cert-file {self.certificates.cert}",
                f"tls-key-file {self.certificates.key}",
                f"tls-ca-cert-file {self.certificates.ca}",
                "tls-auth-clients no",
            ]
        else:
            listen = [f"port {self.port}"]
        lines = [
            "# Written by `pipeline services up`; edits are overwritten.",
            f"bind {bind_host(self.host)}",
            *listen,
            f"dir {self.directory}",
            "appendonly yes",
            f"pidfile {self.process.pid_path}",
            f"logfile {self.process.log_path}",
            "daemonize no",
        ]
        lines += self._users()
        return "\n".join(lines) + "\n"

    def _users(self) -> list[str]:
        """ACL lines: the login the settings use, with the password's SHA-256 only."""
        url = urlsplit(self.url)
        password = self.settings.redis_password or unquote(url.password or "")
        if not password:
            return []
        digest = hashlib.sha256(password.encode()).hexdigest()
        user = self.settings.redis_username or unquote(url.username or "") or "default"
        if not user.isprintable() or any(c.isspace() or c in "\"'" for c in user):
            raise ServiceError(f"Redis user name {user!r} cannot go in redis.conf; choose another")
        lines = [f"user {user} on #{digest} ~* &* +@all"]
        if user != "default":
            lines.append("user default off")
        return lines
