"""``pipeline services up --secure``: the local services with authenticated, encrypted links.

The services take their shape from the settings (``kafka_security_protocol``,
a ``rediss://`` URL, the passwords), so the clients and the servers cannot
disagree. ``--secure`` fills in what is left at plain text: Kafka on SASL_SSL
with SCRAM-SHA-512, Redis on TLS with an ACL user, both trusting the local CA
in ``<data_dir>/services/tls``. The passwords are never invented or written
down here: they come from ``PIPELINE_KAFKA_PASSWORD`` and
``PIPELINE_REDIS_PASSWORD``, the same variables every role reads.
"""

from __future__ import annotations

import dataclasses
from urllib.parse import urlsplit

from pipeline.services import ServiceError, services_dir
from pipeline.services.tls import Certificates
from pipeline.settings import ENV_PREFIX, Settings

DEFAULT_USER = "pipeline"

# What a client needs besides the passwords to reach secured services.
CLIENT_SETTINGS = (
    "broker",
    "kafka_security_protocol",
    "kafka_sasl_mechanism",
    "kafka_username",
    "kafka_ca_file",
    "redis_url",
    "redis_username",
    "redis_ca_file",
)


def local_ca(settings: Settings) -> str:
    """Path of the local CA certificate that signs the local services' certificate."""
    return str(Certificates(services_dir(settings) / "tls").ca)


def secured(settings: Settings) -> Settings:
    """The settings with every link to the local services authenticated and encrypted.

    What the settings already say is kept (a chosen mechanism, user or CA);
    raises ServiceError when a password is missing.
    """
    url = urlsplit(settings.redis_url)
    if url.password:
        raise ServiceError(
            f"--secure keeps the Redis password out of the URL: move it from redis_url to "
            f"{ENV_PREFIX}REDIS_PASSWORD"
        )
    missing = []
    if not settings.kafka_password:
        missing.append(f"{ENV_PREFIX}KAFKA_PASSWORD")
    if not settings.redis_password:
        missing.append(f"{ENV_PREFIX}REDIS_PASSWORD")
    if missing:
        raise ServiceError(
            f"--secure needs the password(s) in {' and '.join(missing)}; they are read from "
            "the environment (or the settings file) by the services and every client alike"
        )
    ca = local_ca(settings)
    changes: dict[str, str] = {}
    if settings.kafka_security_protocol == "PLAINTEXT":
        changes["kafka_security_protocol"] = "SASL_SSL"
    protocol = changes.get("kafka_security_protocol", settings.kafka_security_protocol)
    if protocol.startswith("SASL_") and not settings.kafka_username:
        changes["kafka_username"] = DEFAULT_USER
    if protocol in ("SSL", "SASL_SSL") and not settings.kafka_ca_file:
        changes["kafka_ca_file"] = ca
    if url.scheme == "redis":
        changes["redis_url"] = url._replace(scheme="rediss").geturl()
    if not (settings.redis_username or url.username):
        changes["redis_username"] = DEFAULT_USER
    if not settings.redis_ca_file:
        changes["redis_ca_file"] = ca
    return dataclasses.replace(settings, **changes)


def client_environment(settings: Settings) -> dict[str, str]:
    """The ``PIPELINE_*`` variables (no passwords) that point a role at these services."""
    return {
        f"{ENV_PREFIX}{name.upper()}": str(getattr(settings, name))
        for name in CLIENT_SETTINGS
        if getattr(settings, name)
    }
