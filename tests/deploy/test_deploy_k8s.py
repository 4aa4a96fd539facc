"""Kubernetes manifests under docker/k8s: shape and consistency (no cluster needed)."""

from __future__ import annotations

import os
import re
import shlex

import pytest
from deploy_support import (
    K8S_DIR,
    load_yaml,
    load_yaml_all,
    settings_env_names,
    supported_vllm_versions,
)


@pytest.fixture(scope="module")
def objects():
    kustomization = load_yaml(K8S_DIR / "kustomization.yaml")
    docs = []
    for rel in kustomization["resources"]:
        path = K8S_DIR / rel
        assert path.is_file(), rel
        docs += load_yaml_all(path)
    by_kind = {}
    for doc in docs:
        assert doc.get("apiVersion") and doc.get("kind") and doc["metadata"].get("name"), doc
        by_kind.setdefault(doc["kind"], []).append(doc)
    return by_kind


@pytest.fixture(scope="module")
def deployment(objects):
    [dep] = objects["Deployment"]
    return dep


@pytest.fixture(scope="module")
def container(deployment):
    [c] = deployment["spec"]["template"]["spec"]["containers"]
    return c


def test_kinds(objects):
    assert {"Namespace", "ConfigMap", "Deployment", "Service"} <= set(objects)


def test_namespaced_consistently(objects):
    [ns] = objects["Namespace"]
    name = ns["metadata"]["name"]
    assert load_yaml(K8S_DIR / "kustomization.yaml")["namespace"] == name
    for kind, docs in objects.items():
        if kind != "Namespace":
            for d in docs:
                assert d["metadata"].get("namespace") == name, (kind, d["metadata"]["name"])


def test_image_pinned(container):
    image = container["image"]
    assert ":" in image and not image.endswith(":latest")
    assert re.search(r":v?\d+(\.\d+)+", image) or "@sha256:" in image


def test_gpu_limits(container):
    limits = container["resources"]["limits"]
    assert int(limits["nvidia.com/gpu"]) >= 1
    requests = container["resources"].get("requests", {})
    if "nvidia.com/gpu" in requests:  # extended resources: requests must equal limits
        assert requests["nvidia.com/gpu"] == limits["nvidia.com/gpu"]


def test_tensor_parallel_matches_gpus(objects, container):
    [cm] = objects["ConfigMap"]
    args = shlex.split(cm["data"].get("EARLYTOM_BACKEND_ARGS", ""))
    tp = 1
    for i, arg in enumerate(args):
        if arg in ("--tensor-parallel-size", "-tp"):
            tp = int(args[i + 1])
        elif arg.startswith("--tensor-parallel-size="):
            tp = int(arg.split("=", 1)[1])
    assert int(container["resources"]["limits"]["nvidia.com/gpu"]) == tp


def test_probes_on_health(container):
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 8000, "metrics": 8001}
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] == "/health", probe
        assert get["port"] in ("http", 8000), probe
    # the startup probe covers a model download (>= 15 minutes)
    sp = container["startupProbe"]
    assert sp["periodSeconds"] * sp["failureThreshold"] >= 900


def test_non_root(deployment, container):
    pod = deployment["spec"]["template"]["spec"]["securityContext"]
    assert pod["runAsNonRoot"] is True
    assert int(pod["runAsUser"]) != 0
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert "ALL" in sc["capabilities"]["drop"]
    # the image's user (Dockerfile ARG EARLYTOM_UID) is the one run
    dockerfile = (K8S_DIR.parents[1] / "Dockerfile").read_text()
    assert f"ARG EARLYTOM_UID={pod['runAsUser']}" in dockerfile


def test_one_pod_per_gpu_node(deployment):
    spec = deployment["spec"]["template"]["spec"]
    terms = spec["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert any(t["topologyKey"] == "kubernetes.io/hostname" for t in terms)
    shm = [v for v in spec["volumes"] if v["name"] == "dshm"]
    assert shm and shm[0]["emptyDir"]["medium"] == "Memory"


def test_settings_from_configmap(objects, container, monkeypatch):
    [cm] = objects["ConfigMap"]
    refs = [e["configMapRef"]["name"] for e in container["envFrom"] if "configMapRef" in e]
    assert cm["metadata"]["name"] in refs
    data = cm["data"]
    assert all(isinstance(v, str) for v in data.values()), "ConfigMap values must be strings"
    names = {k for k in data if k.startswith("EARLYTOM_")}
    known = settings_env_names()
    assert names <= known, f"unknown settings: {sorted(names - known)}"
    from earlytom_server.settings import Settings

    for key in list(os.environ):
        if key.startswith("EARLYTOM_"):
            monkeypatch.delenv(key)
    for key in names:
        monkeypatch.setenv(key, data[key])
    s = Settings()
    assert s.host == "0.0.0.0" and s.port == 8000 and s.backend_port == 8001
    assert s.backend_host == "0.0.0.0"


def test_service_selects_pods(objects, deployment, container):
    [svc] = objects["Service"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    names = {p["name"] for p in container["ports"]}
    for port in svc["spec"]["ports"]:
        assert port["targetPort"] in names


def test_the_vllm_release_is_picked_in_the_kustomization(container):
    """The kustomization's image tag names a supported vLLM release (the Dockerfile's list), for
    the image the Deployment runs; the manifest's own tag is the same release."""
    [entry] = load_yaml(K8S_DIR / "kustomization.yaml")["images"]
    name, _, tag = container["image"].rpartition(":")
    assert entry["name"] == name
    for t in (entry["newTag"], tag):
        m = re.fullmatch(r"\d+(\.\d+)+-vllm(\d+\.\d+\.\d+)", t)
        assert m and m.group(2) in supported_vllm_versions(), t
    assert entry["newTag"] == tag
