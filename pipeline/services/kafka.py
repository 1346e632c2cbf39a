"""A single-node Apache Kafka in KRaft mode, run from the Maven Central jars.

No Kafka distribution is installed anywhere: ``mvn`` copies the broker's jars
(named in ``deploy/local/kafka-pom.xml``) into the project's cache once, and
the broker runs as ``java ... kafka.Kafka server.properties`` with one node
acting as both broker and controller. Its storage is formatted once and kept
under ``<data_dir>/services/kafka``, so topics survive restarts.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import os
import re
import shutil
import subprocess
import tempfile
import time
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from pipeline.connections import kafka_client_kwargs
from pipeline.services import (
    ManagedProcess,
    ServiceError,
    bind_host,
    port_accepts,
    server_address,
    services_dir,
)
from pipeline.services.tls import Certificates, ensure_certificates
from pipeline.settings import Settings

log = logging.getLogger(__name__)

POM = Path(__file__).resolve().parents[2] / "deploy" / "local" / "kafka-pom.xml"
CACHE_ENV = "PIPELINE_CACHE_DIR"
DEFAULT_CACHE = "~/.cache/sensor-forecasts"
HEAP = "-Xmx768m"

# Kafka's own logs stay at WARN, but the line that says the server started is kept.
# Log4j's shutdown hook is off: Kafka logs while it shuts down, which made the hook
# print a spurious warning; the console appender flushes every line anyway.
LOG4J2 = """\
status = warn
shutdownHook = disable
appender.console.type = Console
appender.console.name = STDOUT
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.stdout.ref = STDOUT
logger.server.name = kafka.server.KafkaRaftServer
logger.server.level = INFO
"""


def cache_dir() -> Path:
    """The cache the project owns: ``$PIPELINE_CACHE_DIR`` or ~/.cache/sensor-forecasts."""
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE).expanduser()


def kafka_version() -> str:
    """The Kafka version the pom pins, so the pom stays the one place to change it."""
    try:
        root = ET.parse(POM).getroot()
    except (OSError, ET.ParseError) as exc:
        raise ServiceError(f"cannot read {POM} ({exc}); it ships with the source tree") from None
    namespace = {"m": "http://maven.apache.org/POM/4.0.0"}
    version = root.findtext("m:properties/m:kafka.version", namespaces=namespace)
    if not version:
        raise ServiceError(f"{POM} does not set the kafka.version property")
    return version.strip()


def _tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise ServiceError(f"`{name}` not found on PATH; install Debian package {package}")
    return path


def _run(argv: list[str], what: str, timeout: float) -> str:
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired:
        raise ServiceError(f"{what} took longer than {timeout:.0f} s") from None
    if done.returncode != 0:
        output = "\n".join((done.stdout + done.stderr).strip().splitlines()[-25:])
        raise ServiceError(f"{what} failed (exit {done.returncode}):\n{output}")
    return done.stdout


def ensure_jars() -> Path:
    """Return the folder of Kafka's jars, resolving them with mvn on first use.

    The jars land in a temporary folder that is renamed when complete, so an
    interrupted download is never mistaken for a usable Kafka.
    """
    version = kafka_version()
    home = cache_dir() / f"kafka-{version}"
    libs = home / "libs"
    if libs.is_dir():
        return libs
    mvn = _tool("mvn", "maven")
    home.mkdir(parents=True, exist_ok=True)
    log.info("resolving Kafka %s jars from Maven Central into %s (first run only)", version, libs)
    started = time.monotonic()
    # Once renamed into place the temporary folder is gone; nothing is left to clean.
    with tempfile.TemporaryDirectory(
        dir=home, prefix="libs-", ignore_cleanup_errors=True
    ) as partial:
        _run(
            [
                mvn,
                "-q",
                "-B",
                "-f",
                str(POM),
                f"-Dmaven.repo.local={cache_dir() / 'm2'}",
                "dependency:copy-dependencies",
                f"-DoutputDirectory={partial}",
                "-DincludeScope=runtime",
            ],
            "resolving the Kafka jars with mvn",
            timeout=600,
        )
        if not libs.is_dir():
            os.rename(partial, libs)
    log.info("Kafka jars ready in %.0f s", time.monotonic() - started)
    return libs


def describe_cluster(
    host: str, port: int, timeout: float = 5.0, security: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Ask the broker for its cluster metadata (a real Metadata request).

    Blocking, but safe to call from code that runs an event loop: the request
    runs on a loop of its own in a worker thread. ``security`` holds aiokafka's
    security arguments (see ``pipeline.connections.kafka_client_kwargs``).
    """

    async def describe() -> dict[str, Any]:
        admin = AIOKafkaAdminClient(
            bootstrap_servers=f"{host}:{port}",
            request_timeout_ms=int(timeout * 1000),
            **(security or {}),
        )
        try:
            await admin.start()
            return await admin.describe_cluster()
        finally:
            await admin.close()

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, asyncio.wait_for(describe(), timeout)).result()


class KafkaService:
    """One node that is both broker and controller, on the settings' broker address."""

    name = "kafka"
    start_timeout = 90.0
    # A controlled shutdown moves leadership and flushes logs; give it time.
    stop_grace = 60.0

    def __init__(self, settings: Settings, controller_port: int | None = None) -> None:
        self.settings = settings
        self.host, self.port = server_address(settings.broker, 9092)
        self.controller_port = controller_port or self.port + 1
        self.directory = services_dir(settings) / "kafka"
        self.log_dirs = self.directory / "data"
        self.process = ManagedProcess(self.directory, "kafka")
        self.protocol = settings.kafka_security_protocol
        self.certificates = Certificates(services_dir(settings) / "tls")

    def answers(self) -> bool:
        """Whether the broker answers a Metadata request and lists itself, as clients connect."""
        if not port_accepts(self.host, self.port):
            return False
        try:
            security = kafka_client_kwargs(self.settings)
            return bool(describe_cluster(self.host, self.port, security=security)["brokers"])
        except (KafkaError, OSError, TimeoutError):
            return False

    def mismatch(self) -> str | None:
        """Why the running broker was not started for these settings, or None if it was."""
        try:
            running = self.server_properties.read_text()
        except FileNotFoundError:
            return None
        if running == self._server_properties():
            return None
        return (
            f"the running Kafka was started with other listeners or credentials than the "
            f"settings ask for ({self.protocol} on port {self.port})"
        )

    def prepare(self) -> None:
        """Resolve the jars, write the configuration and format storage once."""
        java = _tool("java", "openjdk-17-jre-headless")
        libs = ensure_jars()
        if port_accepts(bind_host(self.host), self.controller_port):
            raise ServiceError(
                f"controller port {self.controller_port} is in use; free it or choose "
                "another with `pipeline services up --controller-port PORT`"
            )
        self.directory.mkdir(parents=True, exist_ok=True)
        if self.protocol in ("SSL", "SASL_SSL"):
            ensure_certificates(self.certificates.directory, [self.host])
        # It may hold the broker's own SASL password: owner only.
        self.server_properties.touch(mode=0o600)
        self.server_properties.chmod(0o600)
        self.server_properties.write_text(self._server_properties())
        self.log4j2_properties.write_text(LOG4J2)
        if (self.log_dirs / "meta.properties").exists():
            self._check_scram_user()
            return
        cluster_id = self._cluster_id(java, libs)
        scram = self._scram_arguments()
        log.info("formatting Kafka storage in %s (cluster id %s)", self.log_dirs, cluster_id)
        _run(
            [
                java,
                "-cp",
                f"{libs}/*",
                "kafka.tools.StorageTool",
                "format",
                "-t",
                cluster_id,
                "-c",
                str(self.server_properties),
                "--standalone",
                *scram,
            ],
            "formatting Kafka storage",
            timeout=120,
        )

    @property
    def scram_user_path(self) -> Path:
        """The SCRAM user the storage was formatted with: mechanism, name, salt, iterations
        and a SHA-256 of the salted password, to notice a changed password at a restart."""
        return self.directory / "scram.user"

    def _uses_scram(self) -> bool:
        mechanism = self.settings.kafka_sasl_mechanism
        return self.protocol.startswith("SASL_") and mechanism.startswith("SCRAM-")

    def _salted(self, salt: bytes, iterations: int) -> bytes:
        digest = "sha512" if self.settings.kafka_sasl_mechanism == "SCRAM-SHA-512" else "sha256"
        return hashlib.pbkdf2_hmac(digest, self.settings.kafka_password.encode(), salt, iterations)

    def _scram_record(self, salt: bytes, iterations: int) -> str:
        check = hashlib.sha256(self._salted(salt, iterations)).hexdigest()
        user = f"{self.settings.kafka_sasl_mechanism} {self.settings.kafka_username}"
        return f"{user} {base64.b64encode(salt).decode()} {iterations} {check}"

    def _scram_arguments(self) -> list[str]:
        """``--add-scram`` for the settings' user, with a salted password, never the password.

        SCRAM users live in the cluster metadata, so they are made when the storage
        is formatted; the salted form keeps the password itself off the command line.
        """
        if not self._uses_scram():
            return []
        if not re.fullmatch(r"[A-Za-z0-9._@-]+", self.settings.kafka_username):
            raise ServiceError(
                "the local Kafka takes a kafka_username of letters, digits and ._@- only"
            )
        iterations, salt = 8192, os.urandom(24)
        self.scram_user_path.touch(mode=0o600)
        self.scram_user_path.write_text(self._scram_record(salt, iterations) + "\n")
        credential = (
            f"{self.settings.kafka_sasl_mechanism}=[name={self.settings.kafka_username},"
            f'iterations={iterations},salt="{base64.b64encode(salt).decode()}",'
            f'saltedpassword="{base64.b64encode(self._salted(salt, iterations)).decode()}"]'
        )
        return ["--add-scram", credential]

    def _check_scram_user(self) -> None:
        """Refuse to start formatted storage whose SCRAM user differs from the settings'."""
        if not self._uses_scram():
            return
        try:
            mechanism, user, salt, iterations, _ = self.scram_user_path.read_text().split()
        except (FileNotFoundError, ValueError):
            mechanism = user = salt = iterations = ""
        wanted = (self.settings.kafka_sasl_mechanism, self.settings.kafka_username)
        if (mechanism, user) != wanted:
            problem = f"has no {wanted[0]} user {wanted[1]!r}"
        elif self.scram_user_path.read_text().strip() != self._scram_record(
            base64.b64decode(salt), int(iterations)
        ):
            problem = f"has another password for {user!r} than kafka_password"
        else:
            return
        raise ServiceError(
            f"the Kafka storage in {self.log_dirs} {problem}; SCRAM users are made when it "
            "is first formatted, so remove that folder (its topics go with it) or use "
            "another data_dir"
        )

    def command(self) -> list[str]:
        """Run the broker in the foreground with the generated configuration."""
        return [
            _tool("java", "openjdk-17-jre-headless"),
            HEAP,
            f"-Dlog4j2.configurationFile={self.log4j2_properties}",
            "-cp",
            f"{ensure_jars()}/*",
            "kafka.Kafka",
            str(self.server_properties),
        ]

    @property
    def server_properties(self) -> Path:
        return self.directory / "server.properties"

    @property
    def log4j2_properties(self) -> Path:
        return self.directory / "log4j2.properties"

    @property
    def cluster_id_path(self) -> Path:
        """The cluster id chosen at the first format, kept to format again identically."""
        return self.directory / "cluster.id"

    def _cluster_id(self, java: str, libs: Path) -> str:
        if self.cluster_id_path.exists():
            return self.cluster_id_path.read_text().strip()
        cluster_id = _run(
            [java, "-cp", f"{libs}/*", "kafka.tools.StorageTool", "random-uuid"],
            "generating a Kafka cluster id",
            timeout=60,
        ).strip()
        self.cluster_id_path.write_text(f"{cluster_id}\n")
        return cluster_id

    def _server_properties(self) -> str:
        # Listeners bind to loopback; the settings' host name is advertised as given.
        # The client listener speaks the settings' protocol and is also the inter-broker
        # one; the controller's stays PLAINTEXT, on loopback.
        bind = f"{bind_host(self.host)}:{self.port}"
        controller = f"{bind_host(self.host)}:{self.controller_port}"
        listener = self.protocol
        properties = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.bootstrap.servers": controller,
            "listeners": f"{listener}://{bind},CONTROLLER://{controller}",
            "advertised.listeners": f"{listener}://{self.host}:{self.port}",
            "listener.security.protocol.map": f"{listener}:{listener},CONTROLLER:PLAINTEXT",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": listener,
            "log.dirs": str(self.log_dirs),
            "num.partitions": "4",
            "auto.create.topics.enable": "true",
            "offsets.topic.replication.factor": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            **self._security_properties(),
        }
        lines = ["# Written by `pipeline services up`; edits are overwritten."]
        lines += [f"{key}={_escape_property(value)}" for key, value in properties.items()]
        return "\n".join(lines) + "\n"

    def _security_properties(self) -> dict[str, str]:
        """TLS (PEM files of the local CA) and SASL for the client listener."""
        properties = {}
        if self.protocol in ("SSL", "SASL_SSL"):
            properties.update(
                {
                    "ssl.keystore.type": "PEM",
                    "ssl.keystore.location": str(self.certificates.keystore),
                    "ssl.truststore.type": "PEM",
                    "ssl.truststore.location": str(self.certificates.ca),
                    "ssl.client.auth": "none",
                }
            )
        if self.protocol.startswith("SASL_"):
            mechanism = self.settings.kafka_sasl_mechanism
            user, password = self.settings.kafka_username, self.settings.kafka_password
            if mechanism == "PLAIN":
                module = "org.apache.kafka.common.security.plain.PlainLoginModule"
                options = {"username": user, "password": password, f"user_{user}": password}
            else:
                module = "org.apache.kafka.common.security.scram.ScramLoginModule"
                options = {"username": user, "password": password}
            prefix = f"listener.name.{self.protocol.lower()}.{mechanism.lower()}"
            properties.update(
                {
                    "sasl.enabled.mechanisms": mechanism,
                    "sasl.mechanism.inter.broker.protocol": mechanism,
                    f"{prefix}.sasl.jaas.config": _jaas(module, options),
                }
            )
        return properties


def _jaas(module: str, options: dict[str, str]) -> str:
    """A JAAS login module line with double-quoted, backslash-escaped option values."""

    def quoted(value: str) -> str:
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'

    return f"{module} required " + " ".join(f"{k}={quoted(v)}" for k, v in options.items()) + ";"


def _escape_property(value: str) -> str:
    """Escape a value as java.util.Properties reads it back."""
    if any(c in value for c in "\r\n"):
        raise ServiceError("a Kafka setting holds a line break; it cannot go in server.properties")
    return value.replace("\\", "\\\\")
