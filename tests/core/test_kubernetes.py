"""deploy/kubernetes/: valid against the Kubernetes schemas, and consistent with the proxy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from proxy.config import load_config
from proxy.supervisor import refusal
from tests.core.test_container import instruction

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "kubernetes"
#: The oldest Kubernetes the manifests are meant for, and the newest the validator knows.
VERSIONS = ["1.29.0", kubernetes_validate.latest_version()]


def documents() -> dict[str, dict[str, Any]]:
    """Every resource, by kind."""
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc["kind"] != "Kustomization":
                found[doc["kind"]] = doc
    return found


@pytest.mark.parametrize("version", VERSIONS)
def test_manifests_are_valid(version: str) -> None:
    docs = documents()
    assert set(docs) == {
        "ConfigMap",
        "Secret",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
    }
    for doc in docs.values():
        kubernetes_validate.validate(doc, version, strict=True)


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files


def container_env(deployment: dict[str, Any], secret: dict[str, Any]) -> dict[str, str]:
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert container["envFrom"] == [{"secretRef": {"name": secret["metadata"]["name"]}}]
    return {**secret["stringData"], **env}


def test_deployment_fits_the_proxy(tmp_path: Path) -> None:
    docs = documents()
    deployment, config_map, secret = docs["Deployment"], docs["ConfigMap"], docs["Secret"]
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = container_env(deployment, secret)

    # The config the pod reads: the ConfigMap's file at LLM_PROXY_CONFIG, with the pod's env.
    mount = next(m for m in container["volumeMounts"] if m["name"] == "config")
    volume = next(v for v in pod["volumes"] if v["name"] == "config")
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]
    config_path = Path(env["LLM_PROXY_CONFIG"])
    assert str(config_path.parent) == mount["mountPath"]
    (tmp_path / config_path.name).write_text(config_map["data"][config_path.name])
    settings = load_config(tmp_path / config_path.name, env=env)
    workers = settings.server.worker_count
    assert workers == int(container["resources"]["requests"]["cpu"])
    assert refusal(settings, workers) is None  # jobs on Redis: workers may share them
    assert settings.jobs_on_redis and settings.cache.backend == "redis"

    # Probes, port and the stop sequence.
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["ports"][0]["containerPort"] == settings.server.port
    pause = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert pause > 0
    assert pod["terminationGracePeriodSeconds"] > pause + settings.server.shutdown_timeout_s
    assert container["resources"]["requests"] and container["resources"]["limits"]

    # The image's user, and a writable /tmp for the workers' metrics files.
    assert str(pod["securityContext"]["runAsUser"]) == instruction("USER").split(":")[0]
    assert any(m["mountPath"] == "/tmp" for m in container["volumeMounts"])


def test_service_pdb_and_hpa_point_at_the_deployment() -> None:
    docs = documents()
    labels = docs["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert docs["Service"]["spec"]["selector"].items() <= labels.items()
    assert docs["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    target = docs["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == (
        "Deployment",
        docs["Deployment"]["metadata"]["name"],
    )
