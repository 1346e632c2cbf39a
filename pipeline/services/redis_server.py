"""A ``redis-server`` from Debian's package, on the port of the settings' Redis URL.

Readings, jobs and forecasts live in Redis, so the server keeps an
append-only file under ``<data_dir>/services/redis``: a restart keeps every
write, and a crash loses at most the last second of them.
"""

from __future__ import annotations

import json
import shutil
from urllib.parse import unquote, urlsplit

import redis

from pipeline.services import (
    ManagedProcess,
    ServiceError,
    bind_host,
    server_address,
    services_dir,
)
from pipeline.settings import Settings


class RedisService:
    """One Redis server bound to loopback, managed as a detached process."""

    name = "redis"
    start_timeout = 30.0
    # On SIGTERM Redis flushes the append-only file; that is quick.
    stop_grace = 20.0

    def __init__(self, settings: Settings) -> None:
        self.url = settings.redis_url
        self.host, self.port = server_address(self.url, 6379)
        self.directory = services_dir(settings) / "redis"
        self.config_path = self.directory / "redis.conf"
        self.process = ManagedProcess(self.directory, "redis")

    def answers(self) -> bool:
        """Whether the server at the settings' URL answers PING."""
        client = redis.Redis.from_url(self.url, socket_connect_timeout=2, socket_timeout=2)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    def prepare(self) -> None:
        """Check the binary and write the configuration."""
        if urlsplit(self.url).scheme != "redis":
            raise ServiceError(f"{self.url} asks for TLS; the local redis-server speaks redis://")
        self._binary()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.config_path.touch(mode=0o600)
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
        lines = [
            "# Written by `pipeline services up`; edits are overwritten.",
            f"bind {bind_host(self.host)}",
            f"port {self.port}",
            f"dir {self.directory}",
            "appendonly yes",
            f"pidfile {self.process.pid_path}",
            f"logfile {self.process.log_path}",
            "daemonize no",
        ]
        password = urlsplit(self.url).password
        if password:
            # Quoted as redis.conf reads strings: double quotes, backslash escapes.
            lines.append(f"requirepass {json.dumps(unquote(password), ensure_ascii=False)}")
        return "\n".join(lines) + "\n"
