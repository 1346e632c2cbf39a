"""Clients of Kafka, Redis and the device API, built from the settings in one place.

Every role reaches the same three servers, and each link can be authenticated
and encrypted (``kafka_security_protocol``, ``redis_password``, ``rediss://``,
the ``*_ca_file`` settings). Building every client here means a link is secured
everywhere or nowhere: no call site can forget the password or the CA, and
certificate verification (with host name checks) is never switched off.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import redis
import redis.asyncio as aioredis

from pipeline.settings import ENV_PREFIX, Settings, SettingsError


def bootstrap_servers(settings: Settings) -> str:
    """The broker as aiokafka takes it: ``host:port`` without the ``kafka://`` scheme."""
    return settings.broker.removeprefix("kafka://")


def ca_file(settings: Settings, name: str) -> str:
    """The CA bundle a ``*_ca_file`` setting names, checked when a client is built.

    Checked here rather than when settings load, so that a role which never
    opens that link does not need the file (prediction workers never talk to Kafka).
    """
    path = getattr(settings, name)
    if path and not Path(path).is_file():
        raise SettingsError(f"{name} (env {ENV_PREFIX}{name.upper()}): no such file {path}")
    return path


def tls_context(ca_file: str = "") -> ssl.SSLContext:
    """A client TLS context that verifies the server and its host name.

    It trusts the system's CA store, plus ``ca_file`` (PEM) when given, so a
    private CA adds to the public ones rather than replacing them.
    """
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    if ca_file:
        context.load_verify_locations(cafile=ca_file)
    return context


def kafka_uses_tls(settings: Settings) -> bool:
    return settings.kafka_security_protocol in ("SSL", "SASL_SSL")


def _kafka_login(settings: Settings) -> tuple[str, str]:
    """The SASL user and password; both are required with a SASL_* protocol."""
    names = ("kafka_username", "kafka_password")
    missing = [f"{n} (env {ENV_PREFIX}{n.upper()})" for n in names if not getattr(settings, n)]
    if missing:
        raise SettingsError(
            f"kafka_security_protocol {settings.kafka_security_protocol} needs "
            + " and ".join(missing)
        )
    return settings.kafka_username, settings.kafka_password


def kafka_client_kwargs(settings: Settings) -> dict[str, Any]:
    """Security keyword arguments for any aiokafka client (producer, consumer, admin)."""
    kwargs: dict[str, Any] = {"security_protocol": settings.kafka_security_protocol}
    if kafka_uses_tls(settings):
        kwargs["ssl_context"] = tls_context(ca_file(settings, "kafka_ca_file"))
    if settings.kafka_security_protocol.startswith("SASL_"):
        username, password = _kafka_login(settings)
        kwargs.update(
            sasl_mechanism=settings.kafka_sasl_mechanism,
            sasl_plain_username=username,
            sasl_plain_password=password,
        )
    return kwargs


def faust_broker_credentials(settings: Settings) -> Any:
    """Faust's ``broker_credentials`` for the settings, or None for PLAINTEXT.

    Faust hands these to every consumer and producer it makes, the
    transactional ones of ``exactly_once`` included.
    """
    import faust

    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return None
    if protocol == "SSL":
        return faust.SSLCredentials(tls_context(ca_file(settings, "kafka_ca_file")))
    username, password = _kafka_login(settings)
    return faust.SASLCredentials(
        username=username,
        password=password,
        mechanism=settings.kafka_sasl_mechanism,
        ssl_context=(
            tls_context(ca_file(settings, "kafka_ca_file")) if protocol == "SASL_SSL" else None
        ),
    )


def _redis_kwargs(settings: Settings, url: str) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    if settings.redis_username:
        kwargs["username"] = settings.redis_username
    if settings.redis_password:
        kwargs["password"] = settings.redis_password
    if url.startswith("rediss://"):
        kwargs.update(ssl_cert_reqs="required", ssl_check_hostname=True)
        if settings.redis_ca_file:
            kwargs["ssl_ca_certs"] = ca_file(settings, "redis_ca_file")
    return kwargs


def redis_client(
    settings: Settings, *, asyncio: bool = False, url: str | None = None, **options: Any
) -> Any:
    """A Redis client for ``settings.redis_url`` (or ``url``, e.g. another database).

    ``options`` are redis-py's own (timeouts, retry); the password, user and
    TLS verification come from the settings, never from the call site.
    """
    url = url or settings.redis_url
    factory = aioredis.Redis if asyncio else redis.Redis
    return factory.from_url(url, **_redis_kwargs(settings, url), **options)
