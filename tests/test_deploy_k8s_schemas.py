"""Every Kubernetes manifest, after kustomize applies an overlay, validated offline.

Built-in kinds go against the Kubernetes API's JSON schemas that kubernetes-validate
ships (strict: an unknown field fails), for the oldest Kubernetes the manifests support
and the newest schema set available. Custom resources (KEDA, Strimzi) go against the
``openAPIV3Schema`` of their CRDs from the shared CRD folder, made strict the same way.
A resource with no schema fails: nothing passes on a warning.

What JSON Schema cannot check: the CRDs' CEL rules (``x-kubernetes-validations``); the
only one our resources meet, KEDA's minReplicaCount <= maxReplicaCount, is asserted in
test_deploy_k8s_design.py.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import kubernetes_validate.utils
import pytest
import referencing
import yaml

from tests.deploy_util import OVERLAYS, crds_dir, named, render

OLDEST_SUPPORTED = "1.30.0"
KUBERNETES_VERSIONS = sorted({OLDEST_SUPPORTED, kubernetes_validate.utils.latest_version()})
CUSTOM_GROUPS = ("keda.sh", "kafka.strimzi.io")
DEFINITIONS_ID = "https://kubernetes.io/api/_definitions.json"
OBJECT_META = f"{DEFINITIONS_ID}#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"


def is_custom(resource: dict) -> bool:
    return resource["apiVersion"].split("/")[0] in CUSTOM_GROUPS


def validate_builtin(resource: dict, version: str) -> None:
    """Raise if the resource breaks the strict schema of its kind (or has none)."""
    kubernetes_validate.validate(resource, version, strict=True)


# --- CRD schemas as strict JSON Schema -------------------------------------------------


def _strict(schema: Any) -> Any:
    """An OpenAPI v3 schema of a CRD as JSON Schema, with the API server's rules made
    explicit: unknown fields fail where the API server would prune them (unless the CRD
    preserves them), ``nullable`` admits null, int-or-string admits both."""
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    if "properties" in out:
        out["properties"] = {name: _strict(sub) for name, sub in out["properties"].items()}
    for key in ("items", "not"):
        if isinstance(out.get(key), dict):
            out[key] = _strict(out[key])
    if isinstance(out.get("additionalProperties"), dict):
        out["additionalProperties"] = _strict(out["additionalProperties"])
    for key in ("anyOf", "allOf", "oneOf"):
        if key in out:
            out[key] = [_strict(sub) for sub in out[key]]
    if out.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if out.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if (
        out.get("type") == "object"
        and "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


@functools.cache
def _k8s_definitions() -> referencing.Resource:
    version = kubernetes_validate.utils.latest_version()
    contents = kubernetes_validate.utils.schema_contents(
        f"kubernetes-json-schema/v{version}-local-strict/_definitions.json", version
    )
    return referencing.Resource.from_contents(contents)


@functools.cache
def crd_validators(folder: Path) -> dict[tuple[str, str], jsonschema.Validator]:
    """(apiVersion, kind) -> validator, for every served version of every CRD found."""
    registry = referencing.Registry().with_resource(DEFINITIONS_ID, _k8s_definitions())
    validators = {}
    for path in sorted(folder.rglob("*.yaml")):
        for crd in yaml.safe_load_all(path.read_text()):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for version in crd["spec"]["versions"]:
                if not version.get("served"):
                    continue
                schema = _strict(version["schema"]["openAPIV3Schema"])
                schema["properties"]["metadata"] = {"$ref": OBJECT_META}
                schema["required"] = sorted({*schema.get("required", []), "metadata"})
                validators[(f"{group}/{version['name']}", kind)] = jsonschema.Draft202012Validator(
                    schema, registry=registry
                )
    return validators


def validate_custom(resource: dict, validators: dict) -> None:
    """Raise AssertionError listing every way the resource breaks its CRD's schema."""
    key = (resource["apiVersion"], resource["kind"])
    assert key in validators, f"no CRD in {crds_dir()} serves {key[0]} {key[1]}"
    errors = sorted(validators[key].iter_errors(resource), key=lambda e: list(e.path))
    assert not errors, "\n".join(
        f"{resource['kind']}/{resource['metadata']['name']} "
        f".{'.'.join(map(str, e.path))}: {e.message}"
        for e in errors
    )


@pytest.fixture(scope="module")
def validators() -> dict:
    folder = crds_dir()
    if not folder.is_dir():
        pytest.skip(f"CRD folder {folder} is absent (set SENSOR_FORECASTS_CRDS_DIR)")
    return crd_validators(folder)


# --- tests ---------------------------------------------------------------------------


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_builtin_resources_match_the_kubernetes_schemas(overlay: str, version: str) -> None:
    builtin = [r for r in render(overlay) if not is_custom(r)]
    assert len(builtin) >= 10
    failures = []
    for resource in builtin:
        try:
            validate_builtin(resource, version)
        except Exception as exc:  # ValidationError, SchemaNotFoundError: both fail
            where = f"{resource['kind']}/{resource['metadata']['name']}"
            failures.append(f"{where}: {getattr(exc, 'message', exc)}")
    assert not failures, f"{overlay} against Kubernetes {version}:\n" + "\n".join(failures)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_custom_resources_match_their_crds(overlay: str, validators: dict) -> None:
    custom = [r for r in render(overlay) if is_custom(r)]
    kinds = {r["kind"] for r in custom}
    assert kinds == {
        "Kafka",
        "KafkaNodePool",
        "KafkaTopic",
        "KafkaUser",
        "ScaledObject",
        "TriggerAuthentication",
    }
    for resource in custom:
        validate_custom(resource, validators)


def test_every_custom_kind_has_its_crd_here(validators: dict) -> None:
    """KafkaNodePool included: a resource without a CRD would be a silent pass."""
    served = {kind for _, kind in validators}
    assert {
        "Kafka",
        "KafkaNodePool",
        "KafkaTopic",
        "KafkaUser",
        "ScaledObject",
        "TriggerAuthentication",
    } <= served


def test_the_validators_reject_what_the_api_server_would(validators: dict) -> None:
    """Strictness checked on broken copies: a typo'd field, a wrong type, bad metadata."""
    resources = render("prod")

    statefulset = copy.deepcopy(named(resources, "StatefulSet", "stream-worker"))
    statefulset["spec"]["replica"] = 3
    with pytest.raises(jsonschema.ValidationError, match="replica"):
        validate_builtin(statefulset, OLDEST_SUPPORTED)

    unknown_kind = {"apiVersion": "example.org/v1", "kind": "Gadget", "metadata": {"name": "x"}}
    with pytest.raises(kubernetes_validate.utils.SchemaNotFoundError):
        validate_builtin(unknown_kind, OLDEST_SUPPORTED)

    topic = copy.deepcopy(named(resources, "KafkaTopic", "readings"))
    topic["spec"]["partition"] = 12
    with pytest.raises(AssertionError, match="partition"):
        validate_custom(topic, validators)

    scaled = copy.deepcopy(named(resources, "ScaledObject", "prediction-worker"))
    scaled["spec"]["maxReplicaCount"] = "thirty"
    with pytest.raises(AssertionError, match="maxReplicaCount"):
        validate_custom(scaled, validators)

    pool = copy.deepcopy(named(resources, "KafkaNodePool", "combined"))
    pool["metadata"]["labels"] = {"strimzi.io/cluster": 1}
    with pytest.raises(AssertionError, match="labels"):
        validate_custom(pool, validators)
