"""Authenticated, encrypted links: Kafka over SASL_SSL, Redis with a login over TLS, the
device API over HTTPS, each with certificate verification on.

The servers are a private Kafka and Redis of this module, started secured by the same
code as ``pipeline services up --secure`` in a folder of their own on free ports, so the
shared plain-text services other tests use are never touched. The whole pipeline runs
against them once (simulator -> Faust worker -> prediction worker), and each refusal an
operator could meet is provoked once and must name its cause without the secret.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import secrets
import shutil
import socket
import ssl
import stat
import tempfile
import urllib.request
from collections import Counter, defaultdict
from pathlib import Path

import aiohttp
import faust
import pytest
import redis
from aiokafka.errors import KafkaConnectionError

from pipeline import services
from pipeline.connections import (
    faust_broker_credentials,
    kafka_client_kwargs,
    redis_client,
    tls_context,
)
from pipeline.services.kafka import describe_cluster
from pipeline.services.secure import client_environment, local_ca, secured
from pipeline.services.tls import Certificates
from pipeline.settings import Settings, SettingsError, load_settings
from pipeline.source.sensibo import SensiboClient, SourceTLSError, open_session
from pipeline.storage import Store
from pipeline.windowing import expected_windows
from tests.kafka_util import read_topic
from tests.processes import BIN, Process, free_port, isolated_env, wait_for
from tests.test_end_to_end import epoch

DEVICES = 3
INTERVAL = 60
HISTORY = 3 * 3600
DURATION = 3 * 3600
WINDOW = 3600


# --- settings and client construction (no servers) ---------------------------------------


def test_settings_refuse_secured_links_that_cannot_work() -> None:
    cases = {
        "kafka_ca_file is set but kafka_security_protocol is PLAINTEXT": {
            "PIPELINE_KAFKA_CA_FILE": __file__,
        },
        "redis_ca_file is set but redis_url is not rediss://": {
            "PIPELINE_REDIS_CA_FILE": __file__,
        },
        "the Redis password is given twice": {
            "PIPELINE_REDIS_URL": "redis://:hunter2-secret@127.0.0.1:6379/0",
            "PIPELINE_REDIS_PASSWORD": "hunter2-secret",
        },
        "redis_username is set without redis_password": {"PIPELINE_REDIS_USERNAME": "app"},
    }
    for expected, environ in cases.items():
        with pytest.raises(SettingsError) as caught:
            load_settings(environ=environ)
        assert expected in str(caught.value)
        assert "hunter2-secret" not in str(caught.value)

    # A login and a CA file are checked when the client that needs them is built, at the
    # start of a role that uses the link.
    no_user = load_settings(
        environ={
            "PIPELINE_KAFKA_SECURITY_PROTOCOL": "sasl_ssl",
            "PIPELINE_KAFKA_PASSWORD": "hunter2-secret",
        }
    )
    for build in (kafka_client_kwargs, faust_broker_credentials):
        with pytest.raises(SettingsError) as caught:
            build(no_user)
        assert "SASL_SSL needs kafka_username (env PIPELINE_KAFKA_USERNAME)" in str(caught.value)
        assert "hunter2-secret" not in str(caught.value)
    missing = load_settings(
        environ={
            "PIPELINE_KAFKA_SECURITY_PROTOCOL": "SSL",
            "PIPELINE_KAFKA_CA_FILE": "/nowhere/ca.pem",
            "PIPELINE_REDIS_URL": "rediss://127.0.0.1:6379/0",
            "PIPELINE_REDIS_CA_FILE": "/nowhere/redis-ca.pem",
        }
    )
    with pytest.raises(
        SettingsError, match=r"kafka_ca_file \(env PIPELINE_KAFKA_CA_FILE\): no such"
    ):
        kafka_client_kwargs(missing)
    with pytest.raises(SettingsError, match=r"redis_ca_file .* no such file /nowhere/redis-ca"):
        redis_client(missing)


def secured_example() -> Settings:
    return load_settings(
        environ={
            "PIPELINE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "PIPELINE_KAFKA_SASL_MECHANISM": "scram-sha-256",
            "PIPELINE_KAFKA_USERNAME": "app",
            "PIPELINE_KAFKA_PASSWORD": "kafka-secret",
            "PIPELINE_REDIS_URL": "rediss://127.0.0.1:6380/2",
            "PIPELINE_REDIS_USERNAME": "app",
            "PIPELINE_REDIS_PASSWORD": "redis-secret",
        }
    )


def test_every_client_gets_the_login_and_verifies_the_server() -> None:
    settings = secured_example()
    kafka = kafka_client_kwargs(settings)
    assert {k: v for k, v in kafka.items() if k != "ssl_context"} == {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-256",
        "sasl_plain_username": "app",
        "sasl_plain_password": "kafka-secret",
    }
    context = kafka["ssl_context"]
    assert context.check_hostname and context.verify_mode == ssl.CERT_REQUIRED

    credentials = faust_broker_credentials(settings)
    assert isinstance(credentials, faust.SASLCredentials)
    assert credentials.protocol.value == "SASL_SSL"
    assert credentials.mechanism.value == "SCRAM-SHA-256"
    assert credentials.ssl_context.check_hostname
    assert "kafka-secret" not in repr(credentials)

    pool = redis_client(settings).connection_pool
    assert pool.connection_class is redis.SSLConnection
    assert pool.connection_kwargs["username"] == "app"
    assert pool.connection_kwargs["password"] == "redis-secret"
    assert pool.connection_kwargs["ssl_cert_reqs"] == "required"
    assert pool.connection_kwargs["ssl_check_hostname"] is True

    plain = load_settings(environ={})
    assert kafka_client_kwargs(plain) == {"security_protocol": "PLAINTEXT"}
    assert faust_broker_credentials(plain) is None
    assert "password" not in redis_client(plain).connection_pool.connection_kwargs


def test_secure_services_need_both_passwords_from_the_environment() -> None:
    with pytest.raises(services.ServiceError) as caught:
        secured(load_settings(environ={"PIPELINE_KAFKA_PASSWORD": "x"}))
    assert "PIPELINE_REDIS_PASSWORD" in str(caught.value)
    assert "PIPELINE_KAFKA_PASSWORD" not in str(caught.value)


# --- a private secured Kafka and Redis ------------------------------------------------------


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _three_free_ports() -> tuple[int, int]:
    """A Kafka port whose next port (its controller) is free too, and a Redis port."""
    for _ in range(100):
        port = random.randrange(30000, 40000)
        if _free(port) and _free(port + 1) and _free(port + 2):
            return port, port + 2
    raise RuntimeError("no free ports for a private Kafka and Redis")


@pytest.fixture(scope="module")
def secure_stack():
    """Kafka on SASL_SSL (SCRAM-SHA-512) and Redis on TLS with an ACL user, as --secure makes.

    Made outside pytest's temporary root, which a concurrent pytest session may prune.
    """
    workdir = Path(tempfile.mkdtemp(prefix="secure-links-"))
    kafka_port, redis_port = _three_free_ports()
    settings = secured(
        load_settings(
            environ={
                "PIPELINE_BROKER": f"kafka://127.0.0.1:{kafka_port}",
                "PIPELINE_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
                "PIPELINE_DATA_DIR": str(workdir / "data"),
                # Quotes, a backslash and a space: the servers' config files must escape them.
                "PIPELINE_KAFKA_PASSWORD": f'k"\\ {secrets.token_urlsafe(12)}',
                "PIPELINE_REDIS_PASSWORD": f'r"\\ {secrets.token_urlsafe(12)}',
            }
        )
    )
    try:
        services.ensure_running(settings)
        yield settings, workdir
    finally:
        services.stop(settings)
        shutil.rmtree(workdir, ignore_errors=True)


def role_env(settings: Settings, topic_prefix: str, sim_port: int, workdir: Path) -> dict:
    """What a role of the pipeline is given to reach the secured services and simulator."""
    env = isolated_env(settings.broker, settings.redis_url, topic_prefix, sim_port)
    env.update(client_environment(settings))
    env.update(
        PIPELINE_KAFKA_PASSWORD=settings.kafka_password,
        PIPELINE_REDIS_PASSWORD=settings.redis_password,
        PIPELINE_SOURCE_URL=f"https://127.0.0.1:{sim_port}/api/v2",
        PIPELINE_SOURCE_CA_FILE=local_ca(settings),
        PIPELINE_DATA_DIR=str(workdir / f"{topic_prefix}data"),
    )
    return env


def test_secure_services_keep_their_secrets_to_themselves(secure_stack) -> None:
    settings, _ = secure_stack
    root = services.services_dir(settings)
    certs = Certificates(root / "tls")
    private = [certs.ca_key, certs.key, certs.keystore, root / "kafka" / "server.properties"]
    private.append(root / "redis" / "redis.conf")
    for path in private:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE(certs.directory.stat().st_mode) == 0o700
    assert settings.redis_password not in (root / "redis" / "redis.conf").read_text()
    assert settings.kafka_password not in (root / "kafka" / "kafka.log").read_text()
    assert "SASL_SSL://" in (root / "kafka" / "server.properties").read_text()


def test_kafka_answers_only_a_verified_login(secure_stack) -> None:
    settings, _ = secure_stack
    host, port = settings.broker.removeprefix("kafka://").split(":")
    assert describe_cluster(host, int(port), security=kafka_client_kwargs(settings))["brokers"]

    refused = {
        "plain text": dataclasses.replace(
            settings, kafka_security_protocol="PLAINTEXT", kafka_ca_file=""
        ),
        "no SASL login": dataclasses.replace(settings, kafka_security_protocol="SSL"),
        "server's CA not trusted": dataclasses.replace(settings, kafka_ca_file=""),
        "wrong password": dataclasses.replace(settings, kafka_password="not-the-password"),
    }

    def answers(client: Settings) -> bool:
        try:
            describe_cluster(host, int(port), timeout=5, security=kafka_client_kwargs(client))
        except (KafkaConnectionError, TimeoutError):
            return False
        return True

    assert [why for why, client in refused.items() if answers(client)] == []


def test_services_started_for_other_credentials_are_reported_not_restarted(secure_stack) -> None:
    settings, _ = secure_stack
    other = dataclasses.replace(settings, kafka_password="another-password")
    with pytest.raises(services.ServiceError) as caught:
        services.ensure_running(other)
    assert "other listeners or credentials" in str(caught.value)
    assert "another-password" not in str(caught.value)
    assert settings.kafka_password not in str(caught.value)
    assert [s.state for s in services.status(settings)] == ["running", "running"]


def test_a_worker_with_a_wrong_kafka_password_says_so_without_it(secure_stack, tmp_path) -> None:
    settings, workdir = secure_stack
    env = role_env(settings, f"wrong-{secrets.token_hex(3)}-", free_port(), workdir)
    env.update(PIPELINE_KAFKA_PASSWORD="wrong-" + secrets.token_hex(8))
    env.update(PIPELINE_WEB_PORT=str(free_port()))
    worker = Process("faust", [str(BIN / "faust"), "-A", "pipeline.app", "worker"], env, tmp_path)
    try:
        wait_for(lambda: not worker.alive(), 60, "the worker to give up")
    finally:
        worker.stop()
    log = worker.log_path.read_text()
    assert worker.popen.returncode != 0
    assert "SaslAuthenticationFailed" in log and "invalid credentials" in log
    assert "SCRAM-SHA-512" in log
    assert env["PIPELINE_KAFKA_PASSWORD"] not in log and settings.kafka_password not in log


def test_redis_answers_only_a_login_over_tls(secure_stack, tmp_path) -> None:
    settings, workdir = secure_stack
    client = redis_client(settings, socket_timeout=5)
    assert client.ping()
    client.close()

    host, port = settings.redis_url.removeprefix("rediss://").split("/")[0].split(":")
    anonymous = redis.Redis(
        host=host, port=int(port), ssl=True, ssl_ca_certs=local_ca(settings), socket_timeout=2
    )
    with pytest.raises(redis.AuthenticationError):
        anonymous.ping()
    anonymous.close()
    plain = redis.Redis(host=host, port=int(port), password=settings.redis_password,
                        username=settings.redis_username, socket_timeout=2)  # fmt: skip
    with pytest.raises(redis.ConnectionError):
        plain.ping()
    plain.close()
    untrusted = redis_client(dataclasses.replace(settings, redis_ca_file=""), socket_timeout=2)
    with pytest.raises(redis.ConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
        untrusted.ping()
    untrusted.close()

    # A prediction worker with the wrong password stops at once and says why.
    env = role_env(settings, "wrong-", free_port(), workdir)
    env["PIPELINE_REDIS_PASSWORD"] = "wrong-" + secrets.token_hex(8)
    worker = Process("rq", [str(BIN / "pipeline"), "prediction-worker"], env, tmp_path)
    try:
        wait_for(lambda: not worker.alive(), 60, "the prediction worker to give up")
    finally:
        worker.stop()
    log = worker.log_path.read_text()
    assert worker.popen.returncode == 1
    assert "invalid username-password pair" in log
    assert env["PIPELINE_REDIS_PASSWORD"] not in log and settings.redis_password not in log


def simulator_argv(settings: Settings, port: int, *extra: str) -> list[str]:
    certs = Certificates(services.services_dir(settings) / "tls")
    return [
        str(BIN / "pipeline"), "simulator", "--port", str(port),
        "--tls-cert", str(certs.cert), "--tls-key", str(certs.key), *extra,
    ]  # fmt: skip


def https_ok(url: str, ca_file: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2, context=tls_context(ca_file)) as response:
            return response.status == 200
    except OSError:
        return False


def test_the_device_api_client_trusts_the_private_ca_only_when_told(secure_stack, tmp_path) -> None:
    settings, workdir = secure_stack
    port = free_port()
    env = role_env(settings, "https-", port, workdir)
    simulator = Process("simulator", simulator_argv(settings, port, "--devices", "2"), env,
                        tmp_path)  # fmt: skip
    api_key = env["PIPELINE_SOURCE_API_KEY"]
    base = f"https://127.0.0.1:{port}/api/v2"

    async def devices(ca_file: str) -> list[str]:
        async with open_session(ca_file) as session:
            return await SensiboClient(base, api_key, session, 5.0).list_devices()

    try:
        health = f"https://127.0.0.1:{port}/healthz"
        wait_for(lambda: https_ok(health, local_ca(settings)), 30, "the simulator", [simulator])
        assert len(asyncio.run(devices(local_ca(settings)))) == 2
        with pytest.raises(SourceTLSError) as caught:
            asyncio.run(devices(""))
        with pytest.raises(aiohttp.ClientConnectionError):
            asyncio.run(_plain_http(f"http://127.0.0.1:{port}/healthz"))
    finally:
        simulator.stop()
    error = caught.value
    assert error.kind == "tls" and not error.retryable
    assert "certificate verify failed" in str(error) and "source_ca_file" in str(error)
    assert api_key not in str(error)


async def _plain_http(url: str) -> None:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        await response.read()


# --- the whole pipeline over the secured links ---------------------------------------------


@pytest.mark.e2e
def test_every_device_gets_its_forecasts_over_secured_links(secure_stack, tmp_path) -> None:
    settings, workdir = secure_stack
    prefix = f"secure-{secrets.token_hex(4)}-"
    sim_port, web_port = free_port(), free_port()
    env = role_env(settings, prefix, sim_port, workdir)
    env.update(
        PIPELINE_JOB_WINDOW_SECONDS=str(WINDOW),
        PIPELINE_TRAINING_SECONDS=str(6 * 3600),
        PIPELINE_HORIZON_SECONDS="3600",
        PIPELINE_FORECAST_STEP_SECONDS="600",
        PIPELINE_DEFAULT_MODEL="prophet",
        PIPELINE_WEB_PORT=str(web_port),
    )
    api = f"https://127.0.0.1:{sim_port}/api/v2"
    simulator = simulator_argv(
        settings, sim_port, "--devices", str(DEVICES), "--interval-seconds", str(INTERVAL),
        "--history-seconds", str(HISTORY), "--duration-seconds", str(DURATION),
        "--speedup", "1200", "--seed", "7",
    )  # fmt: skip
    processes = [Process("simulator", simulator, env, tmp_path)]
    store = Store(redis_client(settings, socket_timeout=10))
    try:
        health = f"https://127.0.0.1:{sim_port}/healthz"
        wait_for(lambda: https_ok(health, local_ca(settings)), 30, "the simulator", processes)
        processes.append(
            Process("faust", [str(BIN / "faust"), "-A", "pipeline.app", "worker", "-l", "info"],
                    env, tmp_path)
        )  # fmt: skip
        processes.append(Process("rq", [str(BIN / "pipeline"), "prediction-worker"], env, tmp_path))
        expected = frozen_readings(api, env, processes, local_ca(settings))
        windows = {d: expected_windows(sorted(t), WINDOW) for d, t in expected.items()}
        assert len(windows) == DEVICES and all(windows.values())
        wait_for(
            lambda: all(store.forecast_count(d) == len(w) for d, w in windows.items()),
            120,
            "a forecast for every job",
            processes,
            interval=1,
        )
    finally:
        for process in reversed(processes):
            process.stop()

    readings = read_topic(settings.broker, f"{prefix}readings", kafka_client_kwargs(settings))
    seen = Counter((key, value["time"]) for key, value in readings)
    assert max(seen.values()) == 1, "a (device, time) reached the readings topic twice"
    by_device = defaultdict(set)
    for key, value in readings:
        by_device[key].add(value["time"])
    assert dict(by_device) == expected
    for device, device_windows in windows.items():
        assert store.latest_forecast(device)["trained_until"] == device_windows[-1][1]

    logs = "".join(p.log_path.read_text(errors="replace") for p in processes)
    for secret in (settings.kafka_password, settings.redis_password):
        assert secret not in logs
    assert "Authenticated as pipeline via SCRAM-SHA-512" in logs


def frozen_readings(api: str, env: dict, processes: list[Process], ca_file: str) -> dict:
    """The simulator's full reading set once its clock froze, fetched over verified HTTPS."""
    context = tls_context(ca_file)

    def get(url: str) -> dict:
        with urllib.request.urlopen(url, timeout=10, context=context) as response:
            return json.load(response)

    def frozen() -> bool:
        clock = get(api.removesuffix("/api/v2") + "/healthz")
        return clock["now"] >= clock["start"] + DURATION

    wait_for(frozen, 60, "the simulator clock to reach its end", processes)
    key = env["PIPELINE_SOURCE_API_KEY"]
    pods = get(f"{api}/users/me/pods?fields=id&apiKey={key}")["result"]
    history = {
        pod["id"]: get(f"{api}/pods/{pod['id']}/historicalMeasurements?days=1&apiKey={key}")
        for pod in pods
    }
    return {
        device: {epoch(point["time"]) for point in answer["result"]["temperature"]}
        for device, answer in history.items()
    }


def test_the_clients_print_nothing_secret_about_the_stack(secure_stack) -> None:
    settings, _ = secure_stack
    shown = json.dumps(client_environment(settings)) + repr(settings)
    assert settings.kafka_password not in shown and settings.redis_password not in shown
    assert client_environment(settings)["PIPELINE_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert client_environment(settings)["PIPELINE_REDIS_URL"].startswith("rediss://")
