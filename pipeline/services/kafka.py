"""A single-node Apache Kafka in KRaft mode, run from the Maven Central jars.

No Kafka distribution is installed anywhere: ``mvn`` copies the broker's jars
(named in ``deploy/local/kafka-pom.xml``) into the project's cache once, and
the broker runs as ``java ... kafka.Kafka server.properties`` with one node
acting as both broker and controller. Its storage is formatted once and kept
under ``<data_dir>/services/kafka``, so topics survive restarts.
"""

from __future__ import annotations

import asyncio
import logging
import os
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

from pipeline.services import (
    ManagedProcess,
    ServiceError,
    bind_host,
    port_accepts,
    server_address,
    services_dir,
)
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


def describe_cluster(host: str, port: int, timeout: float = 5.0) -> dict[str, Any]:
    """Ask the broker for its cluster metadata (a real Metadata request).

    Blocking, but safe to call from code that runs an event loop: the request
    runs on a loop of its own in a worker thread.
    """

    async def describe() -> dict[str, Any]:
        admin = AIOKafkaAdminClient(
            bootstrap_servers=f"{host}:{port}", request_timeout_ms=int(timeout * 1000)
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
        self.host, self.port = server_address(settings.broker, 9092)
        self.controller_port = controller_port or self.port + 1
        self.directory = services_dir(settings) / "kafka"
        self.log_dirs = self.directory / "data"
        self.process = ManagedProcess(self.directory, "kafka")

    def answers(self) -> bool:
        """Whether the broker answers a Metadata request and lists itself."""
        if not port_accepts(self.host, self.port):
            return False
        try:
            return bool(describe_cluster(self.host, self.port)["brokers"])
        except (KafkaError, OSError, TimeoutError):
            return False

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
        self.server_properties.write_text(self._server_properties())
        self.log4j2_properties.write_text(LOG4J2)
        if (self.log_dirs / "meta.properties").exists():
            return
        cluster_id = self._cluster_id(java, libs)
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
            ],
            "formatting Kafka storage",
            timeout=120,
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
        bind = f"{bind_host(self.host)}:{self.port}"
        controller = f"{bind_host(self.host)}:{self.controller_port}"
        properties = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.bootstrap.servers": controller,
            "listeners": f"PLAINTEXT://{bind},CONTROLLER://{controller}",
            "advertised.listeners": f"PLAINTEXT://{self.host}:{self.port}",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "log.dirs": str(self.log_dirs),
            "num.partitions": "4",
            "auto.create.topics.enable": "true",
            "offsets.topic.replication.factor": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
        }
        lines = ["# Written by `pipeline services up`; edits are overwritten."]
        lines += [f"{key}={value}" for key, value in properties.items()]
        return "\n".join(lines) + "\n"
