"""The data-parallel variants of the deployment files: ``docker/compose.dp.yaml`` (a Compose
override over compose.yaml) and ``docker/k8s-dp`` (a kustomize overlay over docker/k8s). Both give
ONE vLLM endpoint with ``--data-parallel-size N`` and reserve exactly N GPUs. No cluster or Docker
needed; where ``kubectl`` is installed its kustomize build must agree with the patches applied
here."""

from __future__ import annotations

import copy
import json
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from deploy_support import COMPOSE, DATA, DOCKER, K8S_DIR, interpolate_compose, load_yaml

COMPOSE_DP = DOCKER / "compose.dp.yaml"
K8S_DP = DOCKER / "k8s-dp"


class ComposeLoader(yaml.SafeLoader):
    """Compose's merge tags: ``!override`` (replace the base's value) and ``!reset``."""


class Override(list):
    pass


ComposeLoader.add_constructor(
    "!override", lambda loader, node: Override(loader.construct_sequence(node, deep=True)))
ComposeLoader.add_constructor("!reset", lambda loader, node: None)


def flag_value(args: list[str], flag: str) -> str | None:
    """The value of ``--flag V`` or ``--flag=V`` in an argument list (the last one wins)."""
    value = None
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(flag + "="):
            value = arg.split("=", 1)[1]
    return value


def merge_compose(base: Any, override: Any) -> Any:
    """Compose's merge for what the override uses: mappings merge, ``!override`` replaces."""
    if isinstance(override, Override):
        return list(override)
    if isinstance(base, dict) and isinstance(override, dict):
        out = dict(base)
        for k, v in override.items():
            out[k] = merge_compose(base.get(k), v) if k in base else (
                list(v) if isinstance(v, Override) else v)
        return out
    return override


def interpolate_tree(node: Any, env: dict[str, str]) -> Any:
    if isinstance(node, dict):
        return {k: interpolate_tree(v, env) for k, v in node.items()}
    if isinstance(node, list):
        return [interpolate_tree(v, env) for v in node]
    return interpolate_compose(node, env) if isinstance(node, str) else node


# ------------------------------------------------------------------------------------------------
# compose


@pytest.fixture(scope="module")
def compose_dp() -> Any:
    with open(COMPOSE_DP, encoding="utf-8") as f:
        return yaml.load(f, Loader=ComposeLoader)  # a SafeLoader subclass


@pytest.mark.parametrize("env", [{}, {"EARLYTOM_DP_SIZE": "8"},
                                 {"EARLYTOM_DP_SIZE": "4", "EARLYTOM_BACKEND_ARGS": "--seed 1"}])
def test_compose_dp_sets_ranks_and_gpus_together(compose_dp, env):
    merged = interpolate_tree(merge_compose(load_yaml(COMPOSE), compose_dp), env)
    svc = merged["services"]["earlytom"]
    args = shlex.split(svc["environment"]["EARLYTOM_BACKEND_ARGS"])
    size = int(flag_value(args, "--data-parallel-size"))
    assert size == int(env.get("EARLYTOM_DP_SIZE", 2))
    assert flag_value(args, "--tensor-parallel-size") is None
    [device] = svc["deploy"]["resources"]["reservations"]["devices"]  # replaced, not appended
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert int(device["count"]) == size
    if "EARLYTOM_BACKEND_ARGS" in env:  # the user's own flags are kept, after the DP ones
        assert args[-2:] == shlex.split(env["EARLYTOM_BACKEND_ARGS"])
    assert svc["ipc"] == "host"  # the ranks share tensors through /dev/shm
    # the rest of the stack is compose.yaml's, unchanged
    assert set(merged["services"]) == set(load_yaml(COMPOSE)["services"])


def test_compose_dp_merged_validates_against_the_spec(compose_dp):
    schema = json.loads((DATA / "compose-spec.json").read_text(encoding="utf-8"))
    merged = interpolate_tree(merge_compose(load_yaml(COMPOSE), compose_dp), {})
    device = merged["services"]["earlytom"]["deploy"]["resources"]["reservations"]["devices"][0]
    device["count"] = int(device["count"])  # what Compose makes of an interpolated number
    errors = list(jsonschema.validators.validator_for(schema)(schema).iter_errors(merged))
    assert not errors, [e.message for e in errors]


def test_compose_dp_is_documented():
    guide = (DOCKER.parent / "docs" / "scale-out.md").read_text(encoding="utf-8")
    assert "-f docker/compose.yaml -f docker/compose.dp.yaml" in guide
    assert "EARLYTOM_DP_SIZE" in guide


# ------------------------------------------------------------------------------------------------
# kubernetes


def json_pointer_replace(doc: Any, path: str, value: Any) -> None:
    parts = [p.replace("~1", "/").replace("~0", "~") for p in path.lstrip("/").split("/")]
    node = doc
    for p in parts[:-1]:
        node = node[int(p)] if isinstance(node, list) else node[p]
    last = parts[-1]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        assert last in node, f"replace of a missing path {path}"
        node[last] = value


def build_overlay(overlay: Path) -> list[dict[str, Any]]:
    """The overlay's objects: its base's resources with its JSON 6902 patches applied."""
    kust = load_yaml(overlay / "kustomization.yaml")
    docs: list[dict[str, Any]] = []
    for rel in kust["resources"]:
        base = (overlay / rel).resolve()
        base_kust = load_yaml(base / "kustomization.yaml")
        for r in base_kust["resources"]:
            for d in yaml.safe_load_all((base / r).read_text(encoding="utf-8")):
                if d is not None:
                    docs.append(d)
    docs = copy.deepcopy(docs)
    for patch in kust["patches"]:
        target = patch["target"]
        hits = [d for d in docs if d["kind"] == target["kind"]
                and d["metadata"]["name"] == target["name"]]
        assert len(hits) == 1, target
        for op in yaml.safe_load(patch["patch"]):
            assert op["op"] == "replace", op
            json_pointer_replace(hits[0], op["path"], op["value"])
    return docs


@pytest.fixture(scope="module")
def k8s_dp() -> dict[str, dict[str, Any]]:
    return {d["kind"]: d for d in build_overlay(K8S_DP)}


def test_k8s_dp_overlays_the_base():
    kust = load_yaml(K8S_DP / "kustomization.yaml")
    assert [(K8S_DP / r).resolve() for r in kust["resources"]] == [K8S_DIR.resolve()]


def test_k8s_dp_sets_ranks_and_gpus_together(k8s_dp):
    args = shlex.split(k8s_dp["ConfigMap"]["data"]["EARLYTOM_BACKEND_ARGS"])
    size = int(flag_value(args, "--data-parallel-size"))
    assert size >= 2 and flag_value(args, "--tensor-parallel-size") is None
    [c] = k8s_dp["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert int(c["resources"]["limits"]["nvidia.com/gpu"]) == size
    assert int(c["resources"]["requests"]["nvidia.com/gpu"]) == size
    # the base is untouched: one GPU, no data parallelism
    base = shlex.split(load_yaml(K8S_DIR / "configmap.yaml")["data"]["EARLYTOM_BACKEND_ARGS"])
    assert flag_value(base, "--data-parallel-size") is None


def test_k8s_dp_matches_kustomize_where_installed(k8s_dp):
    kubectl = shutil.which("kubectl")
    if kubectl is None:  # the Python build above is the check; kubectl only cross-checks it
        return
    out = subprocess.run([kubectl, "kustomize", str(K8S_DP)], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    built = {d["kind"]: d for d in yaml.safe_load_all(out) if d}
    assert built["ConfigMap"]["data"] == k8s_dp["ConfigMap"]["data"]
    assert built["Deployment"]["spec"]["template"]["spec"]["containers"][0]["resources"] == \
        k8s_dp["Deployment"]["spec"]["template"]["spec"]["containers"][0]["resources"]
