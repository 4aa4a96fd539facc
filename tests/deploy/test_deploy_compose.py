"""docker/compose.yaml: valid against the Compose specification, pinned images, healthchecks,
GPU reservation, mounts that exist, settings earlytom-serve understands."""

from __future__ import annotations

import copy
import json
import os
import re

import jsonschema
import pytest
from deploy_support import (
    COMPOSE,
    DATA,
    DOCKER,
    REPO,
    interpolate_compose,
    load_yaml,
    settings_env_names,
    supported_vllm_versions,
)

SCHEMA_PATH = DATA / "compose-spec.json"
PINNED_TAG = re.compile(r"^[\w./-]+:v?\d+(\.\d+)+(-[\w.]+)?(@sha256:[0-9a-f]{64})?$")


@pytest.fixture(scope="module")
def compose():
    return load_yaml(COMPOSE)


@pytest.fixture(scope="module")
def validator():
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def test_schema_is_the_compose_spec(validator):
    assert validator.schema["title"] == "Compose Specification"
    assert (DATA / "LICENSE.compose-spec").is_file()
    assert "compose-spec" in (DATA / "README.md").read_text(encoding="utf-8")


def test_compose_validates(compose, validator):
    errors = sorted(validator.iter_errors(compose), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)


def test_schema_rejects_mistakes(compose, validator):
    """The vendored schema is strict enough to catch typos (guards against an empty schema)."""
    bad = copy.deepcopy(compose)
    bad["services"]["earlytom"]["healthchek"] = bad["services"]["earlytom"].pop("healthcheck")
    assert list(validator.iter_errors(bad))
    bad = copy.deepcopy(compose)
    bad["services"]["earlytom"]["deploy"]["resources"]["reservations"]["devices"][0]["count"] = [1]
    assert list(validator.iter_errors(bad))


def test_services(compose):
    assert {"earlytom", "prometheus", "grafana"} <= set(compose["services"])


@pytest.mark.parametrize("name", ["earlytom", "prometheus", "grafana"])
def test_image_pinned_or_built(compose, name):
    svc = compose["services"][name]
    assert "image" in svc or "build" in svc
    if "build" not in svc:
        image = svc["image"]
        assert "latest" not in image
        assert PINNED_TAG.match(image), f"{name}: image {image!r} is not pinned to a version tag"
    else:
        build = svc["build"]
        context = DOCKER / (build["context"] if isinstance(build, dict) else build)
        dockerfile = build.get("dockerfile", "Dockerfile") if isinstance(build, dict) else "Dockerfile"
        assert (context / dockerfile).resolve() == (REPO / "Dockerfile").resolve()
        if "image" in svc:  # the tag the build is stored under
            assert "latest" not in interpolate_compose(svc["image"])


@pytest.mark.parametrize("name", ["earlytom", "prometheus", "grafana"])
def test_healthcheck(compose, name):
    hc = compose["services"][name].get("healthcheck")
    assert hc and not hc.get("disable"), f"{name} has no healthcheck"
    test = hc["test"]
    assert isinstance(test, list) and test[0] in ("CMD", "CMD-SHELL") and len(test) > 1
    for key in ("interval", "timeout", "retries"):
        assert key in hc


def test_earlytom_healthcheck_uses_the_image_probe(compose):
    test = compose["services"]["earlytom"]["healthcheck"]["test"]
    assert test == ["CMD", "python3", "/opt/earlytom/healthcheck.py"]
    assert "COPY docker/healthcheck.py /opt/earlytom/healthcheck.py" in (REPO / "Dockerfile").read_text()


def test_gpu_reservation(compose):
    svc = compose["services"]["earlytom"]
    devices = svc["deploy"]["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices)
    assert svc.get("ipc") == "host" or "shm_size" in svc


def test_model_cache_volume(compose):
    svc = compose["services"]["earlytom"]
    mounts = [m.split(":") for m in svc["volumes"]]
    assert ["hf-cache", "/data/hf-cache"] in [m[:2] for m in mounts]
    assert "hf-cache" in compose["volumes"]
    assert "ENV HOME=/home/earlytom" in (REPO / "Dockerfile").read_text()
    assert "HF_HOME=/data/hf-cache" in (REPO / "Dockerfile").read_text()


def test_bind_mounts_exist(compose):
    named = set(compose.get("volumes", {}))
    for name, svc in compose["services"].items():
        for mount in svc.get("volumes", []):
            source = mount.split(":")[0]
            if source in named:
                continue
            assert (DOCKER / source).exists(), f"{name}: bind mount source {source} missing"


def test_ports(compose):
    published = {p.rsplit(":", 1)[-1] for p in compose["services"]["earlytom"]["ports"]}
    assert {"8000", "8001"} <= published


def test_earlytom_settings_are_known(compose, monkeypatch):
    """Every EARLYTOM_* variable set is a Settings field (pydantic-settings ignores unknown ones
    silently), and the interpolated defaults parse."""
    known = settings_env_names()
    env = compose["services"]["earlytom"]["environment"]
    names = {k for k in env if k.startswith("EARLYTOM_")}
    assert names, "no EARLYTOM_* settings in compose"
    assert names <= known, f"unknown settings: {sorted(names - known)}"

    from earlytom_server.settings import Settings

    for key in list(os.environ):
        if key.startswith("EARLYTOM_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        if value is not None and key.startswith("EARLYTOM_"):
            monkeypatch.setenv(key, interpolate_compose(str(value)))
    settings = Settings()
    assert settings.earlytom_config.retain_ratio == pytest.approx(0.1)
    assert settings.model


def test_prometheus_and_grafana_mounts_match_configs(compose):
    prom = compose["services"]["prometheus"]
    assert "./prometheus:/etc/prometheus:ro" in prom["volumes"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prom["command"]
    graf = compose["services"]["grafana"]
    mounts = dict(m.split(":")[:2] for m in graf["volumes"])
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    dash_dir = mounts["./grafana/dashboards"]
    provider = load_yaml(DOCKER / "grafana/provisioning/dashboards/earlytom.yml")["providers"][0]
    assert provider["options"]["path"] == dash_dir
    home = graf["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith(dash_dir + "/") and (DOCKER / "grafana/dashboards" / home.rsplit("/", 1)[1]).is_file()
    assert graf["environment"]["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"


@pytest.mark.parametrize("chosen", [None, "0.33.0", "0.34.0"])
def test_the_vllm_release_is_picked_by_one_variable(compose, chosen):
    """EARLYTOM_VLLM_VERSION is the Dockerfile's VLLM_VERSION build argument and part of the
    image tag (two releases never overwrite each other's image); unset, the Dockerfile's
    default."""
    env = {"EARLYTOM_VLLM_VERSION": chosen} if chosen else {}
    svc = compose["services"]["earlytom"]
    version = interpolate_compose(svc["build"]["args"]["VLLM_VERSION"], env)
    assert version == (chosen or supported_vllm_versions()[0])
    assert version in supported_vllm_versions()
    image = interpolate_compose(svc["image"], env)
    assert image == f"earlytom-vllm:0.1.0-vllm{version}" and PINNED_TAG.match(image)
