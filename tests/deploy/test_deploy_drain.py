"""The deployments give earlytom-serve's graceful drain the time it takes: the orchestrator's
grace after SIGTERM covers the drain grace, the backend's stop timeout and uvicorn's last wait."""

from __future__ import annotations

from deploy_support import DOCKER, DOCKERFILE, K8S_DIR, load_yaml, load_yaml_all

from earlytom_server.serving import SHUTDOWN_WAIT
from earlytom_server.settings import Settings


def needed_seconds() -> float:
    fields = Settings.model_fields
    return fields["drain_grace"].default + fields["stop_timeout"].default + SHUTDOWN_WAIT


def test_kubernetes_grace_covers_the_drain():
    docs = load_yaml_all(K8S_DIR / "deployment.yaml")
    deployment = next(d for d in docs if d and d.get("kind") == "Deployment")
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > needed_seconds()


def test_compose_grace_covers_the_drain():
    service = load_yaml(DOCKER / "compose.yaml")["services"]["earlytom"]
    value = service["stop_grace_period"]
    assert value.endswith("s") and float(value[:-1]) > needed_seconds()


def test_image_stops_with_sigterm():
    text = DOCKERFILE.read_text()
    assert "STOPSIGNAL SIGTERM" in text
