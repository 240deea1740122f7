"""What a file can show of the Kubernetes manifests (deploy/kubernetes/, untested on a cluster): they parse, every
broker container is probed, runs one process, non-root on a read-only root, and gets its keys from the Secret."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

MANIFESTS = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"


def documents() -> list[dict[str, Any]]:
    return [doc for path in sorted(MANIFESTS.glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text("utf-8"))]


def pod_specs() -> list[dict[str, Any]]:
    return [doc["spec"]["template"]["spec"] for doc in documents() if doc["kind"] in {"Deployment", "Job"}]


def test_every_manifest_parses_as_a_kubernetes_object() -> None:
    kinds = {doc["kind"] for doc in documents()}
    assert {"Deployment", "Job", "Service", "ConfigMap", "PodDisruptionBudget", "NetworkPolicy"} <= kinds
    for doc in documents():
        assert doc["apiVersion"] and doc["metadata"]["name"]


def test_every_container_is_non_root_on_a_read_only_root_without_capabilities() -> None:
    for spec in pod_specs():
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] == 10001  # the image's user (Containerfile)
        assert spec["automountServiceAccountToken"] is False
        for container in spec["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"]["drop"] == ["ALL"]
            mounts = {m["mountPath"] for m in container["volumeMounts"]}
            assert {"/tmp", "/var/lib/dlnuf"} <= mounts  # noqa: S108 - the only places the broker writes


def test_the_broker_runs_one_process_per_pod_with_probes_on_healthz_and_readyz() -> None:
    (deployment,) = [doc for doc in documents() if doc["kind"] == "Deployment"]
    (broker,) = deployment["spec"]["template"]["spec"]["containers"]
    assert broker["args"] == ["serve"]  # no --workers
    assert broker["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert broker["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert broker["readinessProbe"]["httpGet"]["path"] == "/readyz"


def test_every_pod_takes_its_keys_from_the_one_secret() -> None:
    (config,) = [doc for doc in documents() if doc["kind"] == "ConfigMap"]
    (deployment,) = [doc for doc in documents() if doc["kind"] == "Deployment"]
    spec = deployment["spec"]["template"]["spec"]
    (keys,) = [m for m in spec["containers"][0]["volumeMounts"] if m["name"] == "keys"]
    assert keys["readOnly"] is True
    assert {v["name"]: v.get("secret", {}).get("secretName") for v in spec["volumes"]}["keys"] == "dlnuf-keys"
    for variable in ("DLNUF_SIGNING_KEY", "DLNUF_LOG_KEY", "DLNUF_SUBJECT_KEY", "DLNUF_IDENTITY_KEY"):
        assert config["data"][variable].startswith(keys["mountPath"] + "/")
