"""promtool on the shipped Prometheus configuration, rules and rule unit tests."""

from __future__ import annotations

import subprocess

import pytest
from deploy_support import DATA, PROM_CONFIG, PROM_DIR, RULES_DIR, load_yaml, require_binary


def promtool(*args: str, cwd=None) -> subprocess.CompletedProcess[str]:
    exe = require_binary("promtool")
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=120, cwd=cwd)


def rule_files() -> list:
    files = sorted(RULES_DIR.glob("*.yml"))
    assert files, "no rule files under docker/prometheus/rules"
    return files


def test_check_config():
    # rule_files and file_sd files are resolved relative to prometheus.yml, as in the container
    result = promtool("check", "config", str(PROM_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(rule_files())} rule files found" in result.stdout + result.stderr


@pytest.mark.parametrize("path", rule_files(), ids=lambda p: p.name)
def test_check_rules(path):
    result = promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_rule_unit_tests():
    result = promtool("test", "rules", str(DATA / "alerts_test.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_every_alert_has_unit_test():
    tested = set()
    for case in load_yaml(DATA / "alerts_test.yml")["tests"]:
        for check in case.get("alert_rule_test", []):
            if check.get("exp_alerts"):
                tested.add(check["alertname"])
    alerts = {
        rule["alert"]
        for path in rule_files()
        for group in load_yaml(path)["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }
    untested = sorted(alerts - tested - {"EarlyTomFrontendDown", "VLLMRequestsQueueing"})
    assert not untested, f"alerts without a firing unit test: {untested}"


def test_config_shape():
    cfg = load_yaml(PROM_CONFIG)
    jobs = {c["job_name"]: c for c in cfg["scrape_configs"]}
    assert {"earlytom", "vllm"} <= set(jobs)
    assert cfg["rule_files"] == ["rules/*.yml"]
    # targets: the compose service, front end on 8000 and engine on 8001
    targets = {}
    for job in ("earlytom", "vllm"):
        [sd] = jobs[job]["file_sd_configs"]
        for f in sd["files"]:
            for group in load_yaml(PROM_DIR / f):
                targets.setdefault(job, []).extend(group["targets"])
    assert targets == {"earlytom": ["earlytom:8000"], "vllm": ["earlytom:8001"]}
    for job in ("earlytom", "vllm"):
        assert jobs[job].get("metrics_path", "/metrics") == "/metrics"
