"""deploy/k8s: the manifests parse, kustomize renders them, and what they say about the service
(settings, port, probe paths, shutdown time, scaling bound) matches the service."""

from __future__ import annotations

import os
import shutil
import subprocess
import urllib.error
import urllib.request
from typing import Any

import pytest
import yaml

from service.config import ServiceSettings, load_settings
from service.http import HttpServer, Readiness
from service.metrics import ServiceMetrics
from tests.deploy.deploykit import (
    DEPLOY,
    REPO,
    exposed_series,
    load_yaml,
    load_yaml_docs,
    setting_env_names,
)

K8S = DEPLOY / "k8s"
# The oldest Kubernetes release the manifests are written for (autoscaling/v2, policy/v1).
KUBERNETES_VERSION = "1.28"


def _kustomization() -> dict[str, Any]:
    data: dict[str, Any] = load_yaml(K8S / "kustomization.yaml")
    return data


def _resources() -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name in _kustomization()["resources"]:
        for doc in load_yaml_docs(K8S / name):
            out[doc["kind"]] = doc
    return out


def _pod() -> dict[str, Any]:
    pod: dict[str, Any] = _resources()["Deployment"]["spec"]["template"]
    return pod


def _container() -> dict[str, Any]:
    (container,) = _pod()["spec"]["containers"]
    return container


def _settings_env() -> dict[str, str]:
    return {k: str(v) for k, v in _resources()["ConfigMap"]["data"].items()}


def _http_port() -> int:
    return int(_settings_env().get("SENSORCAST_HTTP__PORT", ServiceSettings().http.port))


def test_every_manifest_parses_and_is_listed() -> None:
    listed = set(_kustomization()["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk
    for name in listed:
        for doc in load_yaml_docs(K8S / name):
            assert doc["apiVersion"] and doc["kind"] and doc["metadata"]["name"], name
    kinds = set(_resources())
    assert {
        "ConfigMap",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "PodMonitor",
        "PrometheusRule",
    } <= kinds


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
def test_kustomize_renders() -> None:
    result = subprocess.run(
        ["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    assert len(docs) == len(_resources())
    namespaced = [d for d in docs if d["kind"] != "Namespace"]
    assert {d["metadata"]["namespace"] for d in namespaced} == {_kustomization()["namespace"]}
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
    (rewrite,) = _kustomization()["images"]
    assert image == f"{rewrite['newName']}:{rewrite['newTag']}"


def test_image_version_is_the_project_version() -> None:
    from service import __version__

    (rewrite,) = _kustomization()["images"]
    assert rewrite["name"] == _container()["image"].split(":")[0]
    assert rewrite["newTag"] == __version__
    compose = load_yaml(DEPLOY / "compose.yaml")
    assert compose["services"]["sensorcast"]["image"] == f"sensorcast:{__version__}"


def test_settings_exist_and_are_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    env = _settings_env()
    env_from_pod = {e["name"] for e in _container().get("env", [])}
    unknown = (set(env) | env_from_pod) - setting_env_names()
    assert not unknown, f"not a ServiceSettings variable: {unknown}"
    for key in list(os.environ):
        if key.startswith("SENSORCAST_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = load_settings()
    assert str(settings.model.registry) == "/opt/sensorcast/models"


def test_deployment_wires_settings_port_and_resources() -> None:
    container = _container()
    (source,) = container["envFrom"]
    assert source["configMapRef"]["name"] == _resources()["ConfigMap"]["metadata"]["name"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": _http_port()}
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][kind]), kind
    assert container["args"] == ["serve"]
    assert _pod()["spec"]["securityContext"]["runAsNonRoot"] is True


def test_probes_hit_endpoints_the_service_serves() -> None:
    container = _container()
    readiness = container["readinessProbe"]["httpGet"]
    liveness = container["livenessProbe"]["httpGet"]
    assert readiness["path"] == "/readyz"
    assert liveness["path"] == "/healthz"
    probes = [container[k]["httpGet"] for k in ("readinessProbe", "livenessProbe", "startupProbe")]
    named = {p["name"] for p in container["ports"]}
    assert all(p["port"] in named for p in probes)

    server = HttpServer("127.0.0.1", 0, ServiceMetrics(), Readiness()).start()
    try:
        statuses = {p["path"]: _status(server.port, p["path"]) for p in probes}
    finally:
        server.stop()
    assert statuses["/healthz"] == 200
    assert statuses["/readyz"] == 503  # nothing is ready in a bare server


def _status(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_podmonitor_scrapes_the_metrics_endpoint() -> None:
    (endpoint,) = _resources()["PodMonitor"]["spec"]["podMetricsEndpoints"]
    server = HttpServer("127.0.0.1", 0, ServiceMetrics(), Readiness()).start()
    try:
        assert _status(server.port, endpoint["path"]) == 200
    finally:
        server.stop()


def test_termination_grace_covers_the_final_checkpoint() -> None:
    env = _settings_env()
    defaults = ServiceSettings().kafka
    shutdown = float(env.get("SENSORCAST_KAFKA__SHUTDOWN_TIMEOUT", defaults.shutdown_timeout))
    checkpoint = float(env.get("SENSORCAST_KAFKA__CHECKPOINT_TIMEOUT", defaults.checkpoint_timeout))
    assert _pod()["spec"]["terminationGracePeriodSeconds"] > shutdown + checkpoint


def _selects_pod(selector: dict[str, str]) -> bool:
    labels = _pod()["metadata"]["labels"]
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def test_selectors_match_the_pods() -> None:
    r = _resources()
    assert _selects_pod(r["Deployment"]["spec"]["selector"]["matchLabels"])
    assert _selects_pod(r["Service"]["spec"]["selector"])
    assert _selects_pod(r["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"])
    assert _selects_pod(r["PodMonitor"]["spec"]["selector"]["matchLabels"])


def test_service_and_podmonitor_reach_the_metrics_port() -> None:
    r = _resources()
    (port,) = r["Service"]["spec"]["ports"]
    assert port["port"] == _http_port() and port["targetPort"] == "http"
    (endpoint,) = r["PodMonitor"]["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == "http"
    # The alerts select job="sensorcast": the PodMonitor takes the job from this pod label.
    assert _pod()["metadata"]["labels"][r["PodMonitor"]["spec"]["jobLabel"]] == "sensorcast"


def test_autoscaler_never_exceeds_the_partition_count() -> None:
    r = _resources()
    hpa = r["HorizontalPodAutoscaler"]["spec"]
    target = hpa["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", r["Deployment"]["metadata"]["name"])
    partitions = int(_settings_env()["SENSORCAST_KAFKA__PARTITIONS"])
    assert hpa["minReplicas"] <= r["Deployment"]["spec"]["replicas"] <= hpa["maxReplicas"]
    assert hpa["maxReplicas"] <= partitions
    (metric,) = hpa["metrics"]
    assert metric["pods"]["metric"]["name"] in exposed_series()


def test_disruption_budget_keeps_a_member() -> None:
    pdb = _resources()["PodDisruptionBudget"]["spec"]
    replicas = _resources()["Deployment"]["spec"]["replicas"]
    if "maxUnavailable" in pdb:
        assert 0 < pdb["maxUnavailable"] < replicas
    else:
        assert 0 < pdb["minAvailable"] < replicas


def test_models_path_matches_the_image() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert "SENSORCAST_MODEL__REGISTRY=/opt/sensorcast/models" in dockerfile
    assert _settings_env()["SENSORCAST_MODEL__REGISTRY"] == "/opt/sensorcast/models"
    assert (REPO / "models" / _settings_env()["SENSORCAST_MODEL__NAME"]).is_dir()


@pytest.mark.parametrize("kind", ["Namespace", "ConfigMap", "Deployment", "Service",
                                  "PodDisruptionBudget", "HorizontalPodAutoscaler"])  # fmt: skip
def test_manifest_matches_the_kubernetes_schema(kind: str) -> None:
    """Strict: an unknown or misspelt field (``readinessprobe``) fails, as on a real API server."""
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    resource = _resources()[kind]
    try:
        kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        pytest.fail(f"{kind}: {exc.message} at {'/'.join(map(str, exc.path))}")
