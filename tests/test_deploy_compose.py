"""deploy/compose.yaml: valid against the Compose Specification, and the system it runs
is the local stack's (same services, names and ports), with its secrets kept out.

The Compose Specification's JSON schema is read from the wheel of check-jsonschema,
which vendors the current one; the wheel is downloaded by
``scripts/install-deploy-tools.sh compose-schema``, not installed (it needs a newer
click than Faust allows), and its file is checked against the wheel's RECORD hash.
"""

from __future__ import annotations

import base64
import copy
import csv
import hashlib
import io
import re
import zipfile
from pathlib import Path

import jsonschema
import pytest
import yaml

from pipeline.settings import load_settings
from tests.deploy_util import (
    DEPLOY,
    SECRET_NAME_PATTERN,
    compose,
    compose_environment,
    compose_role,
    compose_variables,
    containers,
    interpolate,
    pipeline_workloads,
    render,
    tool,
)

SCHEMA_IN_WHEEL = "check_jsonschema/builtin_schemas/vendor/compose-spec.json"
# The local stack's addresses (README: `pipeline up`, `pipeline services status`).
LOCAL_PORTS = {
    "kafka": 9092,
    "redis": 6379,
    "simulator": 8080,
    "stream-worker-1": 6066,
    "dashboard": 5006,
}
TEST_VARIABLES = {
    "REDIS_PASSWORD": "test-password",
    "PIPELINE_SOURCE_API_KEY": "test-key",
    "GRAFANA_ADMIN_PASSWORD": "test-grafana",
}


def read_verified(wheel: Path, member: str) -> bytes:
    """A file from a wheel, checked against the sha256 its RECORD lists."""
    with zipfile.ZipFile(wheel) as archive:
        record_name = next(n for n in archive.namelist() if n.endswith(".dist-info/RECORD"))
        record = {
            row[0]: row[1]
            for row in csv.reader(io.StringIO(archive.read(record_name).decode()))
            if row
        }
        data = archive.read(member)
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).decode().rstrip("=")
    assert record[member] == f"sha256={digest}", f"{member} differs from {wheel.name}'s RECORD"
    return data


@pytest.fixture(scope="module")
def compose_schema() -> dict:
    wheel = tool("compose-schema")
    return yaml.safe_load(read_verified(wheel, SCHEMA_IN_WHEEL))


def schema_errors(schema: dict, document: dict) -> list[str]:
    validator = jsonschema.Draft202012Validator(schema)
    return [
        f"{'.'.join(map(str, e.path))}: {e.message}"
        for e in sorted(validator.iter_errors(document), key=lambda e: list(e.path))
    ]


def test_compose_file_matches_the_compose_specification(compose_schema) -> None:
    document = compose()
    assert schema_errors(compose_schema, document) == []
    # The schema does reject: a misspelt service key and a malformed port both fail.
    broken = copy.deepcopy(document)
    broken["services"]["redis"]["restart_policy"] = "always"
    broken["services"]["dashboard"]["healthcheck"]["interval"] = 15
    errors = schema_errors(compose_schema, broken)
    assert any("restart_policy" in e for e in errors) and any("interval" in e for e in errors)


def test_compose_runs_the_local_system() -> None:
    services = compose()["services"]
    roles = {name: compose_role(name) for name in services}
    assert sorted(r for r in roles.values() if r) == [
        "dashboard",
        "prediction-worker",
        "simulator",
        "stream-worker",
        "stream-worker",
    ]
    assert services["prediction-worker"]["deploy"]["replicas"] == 2
    profiled = {name for name, service in services.items() if service.get("profiles")}
    assert {name for name, role in roles.items() if role is None} - profiled == {"kafka", "redis"}
    assert profiled == {"prometheus", "grafana"}
    assert all(services[name]["profiles"] == ["monitoring"] for name in profiled)
    for name, port in LOCAL_PORTS.items():
        published = [p.split(":") for p in services[name]["ports"]]
        assert ["127.0.0.1", str(port)] in [p[:2] for p in published], name
    for name, service in services.items():
        image = service["image"]
        assert re.fullmatch(r"[\w./-]+:v?\d[\w.-]*", image), f"{name}: pin {image}"
        assert service["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL"), name
    kafka_env = services["kafka"]["environment"]
    assert kafka_env["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft, one node
    assert "--appendonly yes" in " ".join(services["redis"]["command"])


def test_every_role_accepts_its_environment(tmp_path) -> None:
    for name, service in compose()["services"].items():
        if compose_role(name) is None:
            continue
        env = compose_environment(service, TEST_VARIABLES)
        settings = load_settings(environ=env)
        assert settings.broker == "kafka://kafka:9092", name
        assert settings.redis_url == "redis://redis:6379/0", name
        assert settings.redis_password == "test-password", name
        assert settings.source_api_key == "test-key", name
        if compose_role(name) == "prediction-worker":
            grace = service["stop_grace_period"]
            assert int(grace.removesuffix("s")) > settings.job_timeout_seconds


def test_secrets_come_from_the_uncommitted_env_file() -> None:
    document = compose()
    required = compose_variables(document)
    assert required == set(TEST_VARIABLES)
    for name, service in document["services"].items():
        for key, value in service.get("environment", {}).items():
            if SECRET_NAME_PATTERN.search(key):
                text = str(value)
                assert interpolate(text, TEST_VARIABLES) != text, f"{name}: {key} is a literal"
    example = DEPLOY / ".env.example"
    entries = dict(
        line.split("=", 1)
        for line in example.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    )
    assert set(entries) == required
    assert all(value.startswith("replace-with-") for value in entries.values())
    assert ".env" in (DEPLOY / ".gitignore").read_text().split()


def test_compose_and_kubernetes_start_each_role_alike() -> None:
    """One command line per role, whatever runs it (the entry-point test runs these)."""
    workloads = pipeline_workloads(render("dev"))
    for name, service in compose()["services"].items():
        role = compose_role(name)
        if role is None:
            continue
        (container,) = containers(workloads[role])
        assert service["command"] == container["command"] + container.get("args", []), name
