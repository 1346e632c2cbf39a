"""The deployment files as the tests see them: rendered Kubernetes overlays, the Compose
file, and the environment each role's container gets.

Rendering uses the real kustomize, installed into the project's cache by
``scripts/install-deploy-tools.sh``; where a tool cannot be had, the calling test skips
with the script's reason rather than passing.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
COMPOSE_FILE = DEPLOY / "compose.yaml"
OVERLAYS = ("dev", "prod")
INSTALL_SCRIPT = ROOT / "scripts" / "install-deploy-tools.sh"
CRDS_ENV = "SENSOR_FORECASTS_CRDS_DIR"
DEFAULT_CRDS = ROOT.parent / "shared" / "crds"
SETTINGS_KEY = "pipeline.yaml"
SECRET_NAME = "sensor-forecasts-secrets"
# Pipeline roles: Kubernetes workload name (also the Compose service, numbered for the
# stream workers) -> role name of `pipeline health`.
ROLES = ("stream-worker", "prediction-worker", "dashboard", "simulator")
WORKLOAD_KINDS = ("Deployment", "StatefulSet")
SECRET_NAME_PATTERN = re.compile(r"KEY|TOKEN|PASSWORD|SECRET|AUTH", re.IGNORECASE)


@functools.cache
def _install(name: str) -> tuple[Path | None, str]:
    """(path, "") once installed, or (None, why not): tried once per test session."""
    try:
        result = subprocess.run(
            ["bash", str(INSTALL_SCRIPT), name], capture_output=True, text=True, timeout=600
        )
    except subprocess.TimeoutExpired:
        return None, f"{INSTALL_SCRIPT.name} {name} took over 600 s"
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines()
        return None, lines[-1] if lines else f"exit status {result.returncode}"
    return Path(result.stdout.strip().splitlines()[-1]), ""


def tool(name: str) -> Path:
    """Path of a deployment tool, installed on first use; skips the test if impossible."""
    path, reason = _install(name)
    if path is None:
        pytest.skip(f"{name} unavailable: {reason}")
    return path


@functools.cache
def _render(overlay: str) -> tuple[dict, ...]:
    kustomize = tool("kustomize")
    result = subprocess.run(
        [str(kustomize), "build", str(DEPLOY / "k8s" / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"kustomize build {overlay} failed:\n{result.stderr}"
    assert not result.stderr.strip(), f"kustomize build {overlay} warned:\n{result.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def render(overlay: str) -> list[dict]:
    """Every resource of an overlay, as ``kustomize build`` prints them."""
    return [dict(doc) for doc in _render(overlay)]


def kustomize_version() -> str:
    return subprocess.run(
        [str(tool("kustomize")), "version"], capture_output=True, text=True, check=True
    ).stdout.strip()


def crds_dir() -> Path:
    return Path(os.environ.get(CRDS_ENV, DEFAULT_CRDS))


def of_kind(resources: list[dict], kind: str) -> list[dict]:
    return [r for r in resources if r["kind"] == kind]


def named(resources: list[dict], kind: str, name: str) -> dict:
    matches = [r for r in of_kind(resources, kind) if r["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} {name}, found {len(matches)}"
    return matches[0]


def workloads(resources: list[dict]) -> list[dict]:
    return [r for r in resources if r["kind"] in WORKLOAD_KINDS]


def pod_spec(workload: dict) -> dict:
    return workload["spec"]["template"]["spec"]


def containers(workload: dict) -> list[dict]:
    spec = pod_spec(workload)
    return spec.get("initContainers", []) + spec["containers"]


def pipeline_workloads(resources: list[dict]) -> dict[str, dict]:
    """Role -> the workload running it (the ones built from the project's image)."""
    return {
        w["metadata"]["name"]: w
        for w in workloads(resources)
        if any(c["image"].split(":")[0].endswith("sensor-forecasts") for c in containers(w))
    }


def settings_text(resources: list[dict]) -> str:
    """The settings file of the ConfigMap every role mounts."""
    (config_map,) = [
        r for r in of_kind(resources, "ConfigMap") if SETTINGS_KEY in r.get("data", {})
    ]
    return config_map["data"][SETTINGS_KEY]


def settings_values(resources: list[dict]) -> dict[str, Any]:
    return yaml.safe_load(settings_text(resources))


_VAR_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def container_env(
    container: dict, secrets: Mapping[str, str], fields: Mapping[str, str]
) -> dict[str, str]:
    """A container's environment as the kubelet builds it: secret and field references
    resolved from the given values, ``$(VAR)`` expanded from the variables before it."""
    env: dict[str, str] = {}
    for item in container.get("env", []):
        if "value" in item:
            value = _VAR_REF.sub(lambda m: env.get(m.group(1), m.group(0)), item["value"])
        elif "secretKeyRef" in item["valueFrom"]:
            value = secrets[item["valueFrom"]["secretKeyRef"]["key"]]
        elif "fieldRef" in item["valueFrom"]:
            value = fields[item["valueFrom"]["fieldRef"]["fieldPath"]]
        else:
            raise AssertionError(f"unexpected env source in {item}")
        env[item["name"]] = value
    return env


def compose() -> dict:
    """The Compose file, YAML merge keys resolved as Compose resolves them."""
    return yaml.safe_load(COMPOSE_FILE.read_text())


_INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?[?-][^}]*)?\}")


def compose_variables(data: Any) -> set[str]:
    """Names of the variables the Compose file takes from deploy/.env."""
    return set(_INTERPOLATION.findall(yaml.safe_dump(data)))


def interpolate(value: str, variables: Mapping[str, str]) -> str:
    """Compose's ``${VAR}``/``${VAR:?message}`` interpolation; ``$$`` is a literal ``$``."""
    return _INTERPOLATION.sub(lambda m: variables[m.group(1)], value).replace("$$", "$")


def compose_environment(service: dict, variables: Mapping[str, str]) -> dict[str, str]:
    environment = service.get("environment", {})
    assert isinstance(environment, dict), "environment as a mapping, for merging"
    return {k: interpolate(str(v), variables) for k, v in environment.items()}


def compose_role(name: str) -> str | None:
    """The pipeline role a Compose service runs (stream-worker-1 -> stream-worker)."""
    base = re.sub(r"-\d+$", "", name)
    return base if base in ROLES else None


def walk(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """Every (path, value) in a nested structure of dicts and lists."""
    yield path, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from walk(value, f"{path}[{index}]")
