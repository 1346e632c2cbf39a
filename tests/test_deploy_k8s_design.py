"""The rendered Kubernetes overlays hold together with the pipeline they deploy.

Each rule here is one the schemas cannot see: the topics are the ones the Faust app
declares, with the settings' partitions; stream workers never outnumber partitions;
KEDA watches the queue the job manager fills; the grace period outlasts a job; secrets
only ever come from a Secret; every setting a manifest gives is one the pipeline accepts.
"""

from __future__ import annotations

import base64
import itertools
import re
from pathlib import PurePosixPath

import faust
import pytest

from pipeline.settings import CONFIG_ENV, load_settings
from tests.deploy_util import (
    OVERLAYS,
    SECRET_NAME,
    SECRET_NAME_PATTERN,
    SETTINGS_KEY,
    container_env,
    containers,
    named,
    of_kind,
    pipeline_workloads,
    pod_spec,
    render,
    settings_text,
    settings_values,
    walk,
    workloads,
)

SECRET_KEYS = {"source-api-key", "redis-password", "kafka-password"}
REDIS_TLS_SECRET = "redis-tls"
DEV_PLACEHOLDER = "dev-placeholder-not-a-secret"
PLACEHOLDER_SECRETS = {key: "placeholder" for key in SECRET_KEYS}
POD_FIELDS = {"metadata.name": "stream-worker-0", "metadata.namespace": "sensor-forecasts"}


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request) -> tuple[str, list[dict]]:
    return request.param, render(request.param)


def pipeline_settings(resources: list[dict], tmp_path, container: dict):
    """The settings a pipeline container runs with: the ConfigMap's file plus its env."""
    config = tmp_path / SETTINGS_KEY
    config.write_text(settings_text(resources))
    env = container_env(container, PLACEHOLDER_SECRETS, POD_FIELDS)
    env = {k: v for k, v in env.items() if k.startswith("PIPELINE_") and k != CONFIG_ENV}
    return load_settings(config, environ=env)


def test_every_role_accepts_its_settings_file_and_environment(overlay, tmp_path) -> None:
    """No typo'd key, unknown PIPELINE_ variable or bad value anywhere."""
    name, resources = overlay
    roles = pipeline_workloads(resources)
    expected = {"stream-worker", "prediction-worker", "dashboard"}
    assert set(roles) == (expected | {"simulator"} if name == "dev" else expected)
    for workload in roles.values():
        for container in containers(workload):
            settings = pipeline_settings(resources, tmp_path, container)
            if any(e["name"] == "PIPELINE_REDIS_PASSWORD" for e in container.get("env", [])):
                # The password travels on its own, never inside the URL; the link is TLS.
                assert settings.redis_url == "rediss://redis:6379/0"
                assert settings.redis_password == "placeholder"
            if any(e["name"] == "PIPELINE_KAFKA_PASSWORD" for e in container.get("env", [])):
                assert settings.kafka_security_protocol == "SASL_SSL"
                assert (settings.kafka_username, settings.kafka_password) == (
                    "sensor-forecasts",
                    "placeholder",
                )


def test_settings_are_a_configmap_mounted_as_a_directory(overlay) -> None:
    _, resources = overlay
    for role, workload in pipeline_workloads(resources).items():
        volumes = {v["name"]: v for v in pod_spec(workload).get("volumes", [])}
        for container in containers(workload):
            env = {e["name"]: e.get("value") for e in container.get("env", [])}
            if role == "simulator":  # serves the device API; reads only its API key
                continue
            mounts = [
                m
                for m in container["volumeMounts"]
                if "configMap" in volumes.get(m["name"], {}) and m.get("readOnly")
            ]
            assert len(mounts) == 1 and "subPath" not in mounts[0], f"{role}: mount the folder"
            config_map = volumes[mounts[0]["name"]]["configMap"]["name"]
            assert config_map.startswith("pipeline-settings-")  # content hash: rolls pods
            named(resources, "ConfigMap", config_map)
            assert env[CONFIG_ENV] == str(PurePosixPath(mounts[0]["mountPath"], SETTINGS_KEY))


def expected_topics(app_id: str, prefix: str) -> dict[str, str]:
    """Topic name -> kind ('keyed', 'changelog', 'leader'), as the Faust app declares them."""
    import pipeline.app  # before its topics, in the order `faust -A pipeline.app` imports
    from pipeline import topics

    app, settings = pipeline.app.app, pipeline.app.settings

    names = {}
    for value in vars(topics).values():
        if isinstance(value, faust.types.TopicT):
            (topic,) = value.topics
            names[prefix + topic.removeprefix(settings.topic_prefix)] = "keyed"
    for table in app.tables:
        names[f"{app_id}-{table}-changelog"] = "changelog"
    names[f"{app_id}-__assignor-__leader"] = "leader"
    return names


def test_kafka_topics_are_the_ones_the_app_declares(overlay) -> None:
    _, resources = overlay
    settings = settings_values(resources)
    partitions = settings["topic_partitions"]
    expected = expected_topics(settings["app_id"], settings.get("topic_prefix") or "")
    (kafka,) = of_kind(resources, "Kafka")
    brokers = sum(
        pool["spec"]["replicas"]
        for pool in of_kind(resources, "KafkaNodePool")
        if "broker" in pool["spec"]["roles"]
    )
    declared = {}
    # Topics Faust would create itself get the same copies as the declared ones.
    assert 1 <= settings["replication_factor"] <= brokers
    for topic in of_kind(resources, "KafkaTopic"):
        spec = topic["spec"]
        declared[spec["topicName"]] = spec
        assert topic["metadata"]["labels"]["strimzi.io/cluster"] == kafka["metadata"]["name"]
        assert spec["replicas"] == settings["replication_factor"]
    assert set(declared) == set(expected), (
        f"missing KafkaTopics: {sorted(set(expected) - set(declared))}; "
        f"not declared by the app: {sorted(set(declared) - set(expected))}"
    )
    for name, kind in expected.items():
        spec = declared[name]
        assert spec["partitions"] == (1 if kind == "leader" else partitions), name
        compacted = spec.get("config", {}).get("cleanup.policy") == "compact"
        assert compacted == (kind == "changelog"), name
    for pool in of_kind(resources, "KafkaNodePool"):
        assert pool["metadata"]["labels"]["strimzi.io/cluster"] == kafka["metadata"]["name"]
    min_isr = kafka["spec"]["kafka"]["config"]["min.insync.replicas"]
    assert all(spec["replicas"] > min_isr or brokers == 1 for spec in declared.values())


def test_stream_workers_are_a_statefulset_within_the_partitions(overlay) -> None:
    _, resources = overlay
    settings = settings_values(resources)
    workers = named(resources, "StatefulSet", "stream-worker")
    assert 1 <= workers["spec"]["replicas"] <= settings["topic_partitions"]
    headless = named(resources, "Service", workers["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    (container,) = containers(workers)
    env = container_env(container, PLACEHOLDER_SECRETS, POD_FIELDS)
    # Static membership and routing from the pod's own name.
    assert env["PIPELINE_GROUP_INSTANCE_ID"] == POD_FIELDS["metadata.name"]
    service_name = workers["spec"]["serviceName"]
    assert env["PIPELINE_WEB_HOST"].startswith(f"stream-worker-0.{service_name}.")
    # Table state on the pod's own volume, under data_dir.
    (claim,) = workers["spec"]["volumeClaimTemplates"]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == claim["metadata"]["name"]]
    assert mount["mountPath"] == settings["data_dir"]
    # Probes on the Faust web server.
    (port,) = container["ports"]
    assert port["containerPort"] == settings["web_port"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["port"] == port["name"]


def test_prediction_workers_scale_on_the_queue_and_outlast_a_job(overlay) -> None:
    name, resources = overlay
    settings = settings_values(resources)
    deployment = named(resources, "Deployment", "prediction-worker")
    assert "replicas" not in deployment["spec"], "KEDA owns the replica count"
    grace = pod_spec(deployment)["terminationGracePeriodSeconds"]
    assert grace > settings["job_timeout_seconds"]

    (scaled,) = of_kind(resources, "ScaledObject")
    assert scaled["spec"]["scaleTargetRef"]["name"] == "prediction-worker"
    assert 1 <= scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"]
    queues = {settings["queue_name"], *(settings.get("model_queues") or {}).values()}
    triggers = scaled["spec"]["triggers"]
    assert {t["metadata"]["listName"] for t in triggers} == {f"rq:queue:{q}" for q in queues}
    namespace = next(r for r in of_kind(resources, "Namespace"))["metadata"]["name"]
    for trigger in triggers:
        assert trigger["type"] == "redis"
        host, port = trigger["metadata"]["address"].rsplit(":", 1)
        assert host.split(".")[:2] == ["redis", namespace] and port == "6379"
        service = named(resources, "Service", "redis")
        assert service["spec"]["ports"][0]["port"] == int(port)
        # Over TLS, checked against the CA of redis-tls; set once (KEDA refuses metadata
        # enableTLS together with a `tls` parameter) and never unverified.
        assert trigger["metadata"]["enableTLS"] == "true"
        assert trigger["metadata"].get("unsafeSsl", "false") == "false"
        auth = named(resources, "TriggerAuthentication", trigger["authenticationRef"]["name"])
        refs = {r["parameter"]: (r["name"], r["key"]) for r in auth["spec"]["secretTargetRef"]}
        assert refs == {
            "password": (SECRET_NAME, "redis-password"),
            "ca": (REDIS_TLS_SECRET, "ca.crt"),
        }
    if name == "dev":
        assert scaled["spec"]["maxReplicaCount"] <= 2


def mounted_file(workload: dict, container: dict, path: str) -> tuple[str, str]:
    """(Secret, key) whose file a container sees at ``path``, through a read-only mount."""
    volumes = {v["name"]: v for v in pod_spec(workload).get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        if not PurePosixPath(path).is_relative_to(mount["mountPath"]):
            continue
        assert mount.get("readOnly") is True, f"{mount['name']} must be read-only"
        secret = volumes[mount["name"]]["secret"]
        relative = str(PurePosixPath(path).relative_to(mount["mountPath"]))
        (item,) = [i for i in secret["items"] if i["path"] == relative]
        return secret["secretName"], item["key"]
    raise AssertionError(f"{container['name']}: nothing mounted at {path}")


def test_redis_speaks_tls_only_and_every_client_checks_its_certificate(overlay, tmp_path) -> None:
    """Dropping TLS anywhere (a plain-text port, a redis:// URL, an unmounted CA) fails."""
    _, resources = overlay
    redis_set = named(resources, "StatefulSet", "redis")
    (server,) = containers(redis_set)
    words = " ".join(server["command"]).split()
    option = dict(itertools.pairwise(words))  # each --flag's value (the last one wins)
    service = named(resources, "Service", "redis")
    assert option["--port"] == "0", "Redis must not listen in plain text"
    assert int(option["--tls-port"]) == service["spec"]["ports"][0]["port"]
    assert option["--tls-auth-clients"] == "no"  # clients log in with the password
    for flag, key in (
        ("--tls-cert-file", "tls.crt"),
        ("--tls-key-file", "tls.key"),
        ("--tls-ca-cert-file", "ca.crt"),
    ):
        assert mounted_file(redis_set, server, option[flag]) == (REDIS_TLS_SECRET, key)
    # The password reaches Redis through a file in memory, never its command line.
    assert "--requirepass" not in words and "$REDIS_PASSWORD" in server["command"][-1]
    for kind in ("readinessProbe", "livenessProbe"):  # a bare TCP connect logs a TLS error
        probe = " ".join(server[kind]["exec"]["command"])
        assert "redis-cli --tls --cacert " in probe, kind
        assert mounted_file(redis_set, server, probe.split("--cacert ")[1].split()[0]) == (
            REDIS_TLS_SECRET,
            "ca.crt",
        )
    clients = 0
    for role, workload in pipeline_workloads(resources).items():
        for container in containers(workload):
            if not any(e["name"] == "PIPELINE_REDIS_PASSWORD" for e in container.get("env", [])):
                continue
            clients += 1
            settings = pipeline_settings(resources, tmp_path, container)
            assert settings.redis_url.startswith("rediss://"), role
            assert mounted_file(workload, container, settings.redis_ca_file) == (
                REDIS_TLS_SECRET,
                "ca.crt",
            ), role
            # Only the CA of redis-tls reaches a client, never the server's key.
            for volume in pod_spec(workload).get("volumes", []):
                if volume.get("secret", {}).get("secretName") == REDIS_TLS_SECRET:
                    assert [i["key"] for i in volume["secret"]["items"]] == ["ca.crt"], role
    assert clients == 3  # stream worker, prediction worker, dashboard


def test_every_container_has_requests_and_limits(overlay) -> None:
    _, resources = overlay
    for workload in workloads(resources):
        for container in containers(workload):
            resources_ = container.get("resources", {})
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources_.get(bound, {})), (
                    f"{workload['metadata']['name']}/{container['name']} lacks {bound}"
                )
    for pool in of_kind(resources, "KafkaNodePool"):
        assert {"requests", "limits"} <= set(pool["spec"]["resources"])


def test_every_pipeline_workload_has_a_disruption_budget(overlay) -> None:
    """Redis is one instance: a budget could only block drains or allow everything."""
    _, resources = overlay
    budgets = of_kind(resources, "PodDisruptionBudget")
    for name, workload in pipeline_workloads(resources).items():
        labels = workload["spec"]["template"]["metadata"]["labels"]
        matching = [
            b for b in budgets if b["spec"]["selector"]["matchLabels"].items() <= labels.items()
        ]
        assert len(matching) == 1, f"{name}: {len(matching)} budgets"
        assert matching[0]["spec"].get("maxUnavailable") == 1


def test_secrets_come_only_from_the_secret(overlay) -> None:
    name, resources = overlay
    secrets = of_kind(resources, "Secret")
    for workload in workloads(resources):
        for container in containers(workload):
            for item in container.get("env", []):
                if SECRET_NAME_PATTERN.search(item["name"]):
                    ref = item.get("valueFrom", {}).get("secretKeyRef")
                    assert ref, f"{item['name']} must come from a Secret, not a literal"
                    assert ref["name"] == SECRET_NAME and ref["key"] in SECRET_KEYS
    if name == "prod":
        assert not secrets, "prod: the Secret is created with kubectl, never rendered"
        return
    (secret,) = secrets
    assert secret["metadata"]["name"] == SECRET_NAME
    values = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert values == {key: DEV_PLACEHOLDER for key in SECRET_KEYS}
    for resource in resources:
        if resource is secret:
            continue
        for path, value in walk(resource):
            assert not (isinstance(value, str) and DEV_PLACEHOLDER in value), path


def test_pods_run_hardened(overlay) -> None:
    """Service links off: Kubernetes would inject <SERVICE>_PORT-style variables, and both
    Faust (WEB_PORT, ...) and the settings (PIPELINE_*) read variables by such names."""
    _, resources = overlay
    for workload in workloads(resources):
        spec = pod_spec(workload)
        name = workload["metadata"]["name"]
        assert spec["enableServiceLinks"] is False, name
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        for container in containers(workload):
            image = container["image"]
            assert re.fullmatch(r"[\w./-]+:[\w.-]+", image) and not image.endswith(":latest")
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, name
            assert security["readOnlyRootFilesystem"] is True, name
            assert security["capabilities"]["drop"] == ["ALL"], name


def test_overlays_size_the_system_as_documented() -> None:
    dev, prod = render("dev"), render("prod")
    for workload in workloads(dev):
        assert workload["spec"].get("replicas", 1) == 1, workload["metadata"]["name"]
    assert [p["spec"]["replicas"] for p in of_kind(dev, "KafkaNodePool")] == [1]
    assert named(prod, "StatefulSet", "stream-worker")["spec"]["replicas"] == 3
    assert sum(p["spec"]["replicas"] for p in of_kind(prod, "KafkaNodePool")) == 3
    assert settings_values(prod)["topic_partitions"] > settings_values(dev)["topic_partitions"]
    (dev_scaled,), (prod_scaled,) = of_kind(dev, "ScaledObject"), of_kind(prod, "ScaledObject")
    assert prod_scaled["spec"]["maxReplicaCount"] > dev_scaled["spec"]["maxReplicaCount"]
    assert named(prod, "Deployment", "dashboard")["spec"]["replicas"] == 2
