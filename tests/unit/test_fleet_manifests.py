"""deploy/kubernetes/ validated offline: the built-in kinds against Kubernetes' own OpenAPI schemas
(kubernetes-validate bundles them), KEDA's ScaledObject against a schema written from KEDA's
documentation (keda.sh/docs/2.x/reference/scaledobject-spec and scalers/metrics-api), and the
ties between them: a ScaledObject per pool's Deployment, asking the controller for that pool, and
a grace period that covers the preStop drain."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from taskpool.core.settings import DEFAULT_FLEET_PORT, POOLS

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
K8S_VERSION = "1.30.0"

#: KEDA 2.x ScaledObject (keda.sh/v1alpha1), the fields these manifests use, with KEDA's types.
SCALED_OBJECT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "ScaledObject"},
        "metadata": {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}},
        "spec": {
            "type": "object",
            "required": ["scaleTargetRef", "triggers"],
            "additionalProperties": False,
            "properties": {
                "scaleTargetRef": {
                    "type": "object",
                    "required": ["name"],
                    "additionalProperties": False,
                    "properties": {
                        "apiVersion": {"type": "string"},
                        "kind": {"type": "string"},
                        "name": {"type": "string"},
                        "envSourceContainerName": {"type": "string"},
                    },
                },
                "pollingInterval": {"type": "integer", "minimum": 1},
                "cooldownPeriod": {"type": "integer", "minimum": 0},
                "initialCooldownPeriod": {"type": "integer", "minimum": 0},
                "idleReplicaCount": {"type": "integer", "minimum": 0},
                "minReplicaCount": {"type": "integer", "minimum": 0},
                "maxReplicaCount": {"type": "integer", "minimum": 1},
                "fallback": {"type": "object"},
                "advanced": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "restoreToOriginalReplicaCount": {"type": "boolean"},
                        "horizontalPodAutoscalerConfig": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {"name": {"type": "string"}, "behavior": {"type": "object"}},
                        },
                        "scalingModifiers": {"type": "object"},
                    },
                },
                "triggers": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["type", "metadata"],
                        "additionalProperties": False,
                        "properties": {
                            "type": {"type": "string"},
                            "name": {"type": "string"},
                            "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                            "useCachedMetrics": {"type": "boolean"},
                            # every metadata value is a string in KEDA's API
                            "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
                            "authenticationRef": {"type": "object"},
                        },
                    },
                },
            },
        },
    },
}

#: The metrics-api scaler's metadata (keda.sh/docs/2.x/scalers/metrics-api).
METRICS_API_REQUIRED = ("url", "valueLocation", "targetValue")
METRICS_API_KNOWN = {
    "url",
    "valueLocation",
    "targetValue",
    "activationTargetValue",
    "format",
    "authMode",
    "method",
    "unsafeSsl",
}


def documents() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted(DEPLOY.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                out.append((path.name, doc))
    return out


def test_every_builtin_kind_passes_the_kubernetes_schema() -> None:
    builtin = [(name, doc) for name, doc in documents() if doc["kind"] != "ScaledObject"]
    assert {doc["kind"] for _, doc in builtin} == {"Deployment", "Service"}
    for name, doc in builtin:
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{name}: {doc['kind']} {doc['metadata']['name']}: {exc.message}")


def test_the_validator_catches_a_broken_manifest() -> None:
    _, deployment = next((n, d) for n, d in documents() if d["kind"] == "Deployment")
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = "330"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)
    scaled = next(d for _, d in documents() if d["kind"] == "ScaledObject")
    wrong = yaml.safe_load(yaml.safe_dump(scaled))
    wrong["spec"]["triggers"][0]["metadata"]["targetValue"] = 1
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(wrong, SCALED_OBJECT_SCHEMA)


def test_each_pool_has_a_deployment_and_a_scaled_object_following_the_controller() -> None:
    docs = documents()
    deployments = {d["metadata"]["name"]: d for _, d in docs if d["kind"] == "Deployment"}
    scaled = {d["metadata"]["name"]: d for _, d in docs if d["kind"] == "ScaledObject"}
    service = next(d for _, d in docs if d["kind"] == "Service")
    assert service["spec"]["ports"][0]["port"] == DEFAULT_FLEET_PORT
    for pool in POOLS:
        name = f"taskpool-worker-{pool}"
        deployment, so = deployments[name], scaled[name]
        jsonschema.validate(so, SCALED_OBJECT_SCHEMA)
        assert so["spec"]["scaleTargetRef"]["name"] == name
        [trigger] = so["spec"]["triggers"]
        assert trigger["type"] == "metrics-api" and trigger["metricType"] == "AverageValue"
        meta = trigger["metadata"]
        assert set(METRICS_API_REQUIRED) <= set(meta) <= METRICS_API_KNOWN
        assert meta["url"].endswith(f":{DEFAULT_FLEET_PORT}/keda/{pool}")
        assert meta["url"].startswith(f"http://{service['metadata']['name']}.")
        assert (meta["valueLocation"], meta["targetValue"]) == ("desired", "1")

        pod = deployment["spec"]["template"]["spec"]
        [container] = pod["containers"]
        assert container["command"] == ["taskpool", "worker", "--pool", pool]
        pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
        assert pre_stop[:3] == ["taskpool", "fleet", "drain"]
        drain = float(pre_stop[pre_stop.index("--wait") + 1])
        # the grace period covers the whole drain plus Celery's warm shutdown
        assert pod["terminationGracePeriodSeconds"] >= drain + 10


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    assert listed == {p.name for p in DEPLOY.glob("*.yaml")} - {"kustomization.yaml"}
