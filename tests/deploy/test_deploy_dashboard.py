"""The Grafana dashboard and its provisioning, statically: JSON shape, PromQL per panel, template
variables, datasource uid; metric names checked against the front end's registry and vLLM 0.32's
own metric definitions."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
from deploy_support import (
    DASHBOARD_PROVIDERS_DIR,
    DATASOURCES_DIR,
    ENGINE_METRICS,
    FRONTEND_METRICS,
    METRIC_TOKEN,
    RULES_DIR,
    data_panels,
    iter_panels,
    label_values_as_promql,
    load_dashboard,
    load_yaml,
    panel_targets,
    substitute,
    template_variables,
    variable_query,
)


@pytest.fixture(scope="module")
def dashboard():
    return load_dashboard()


@pytest.fixture(scope="module")
def datasource_uid():
    sources = []
    for path in sorted(DATASOURCES_DIR.glob("*.yml")):
        sources += load_yaml(path)["datasources"]
    [prom] = [s for s in sources if s["type"] == "prometheus"]
    assert prom["url"] == "http://prometheus:9090"
    return prom["uid"]


def test_identity(dashboard):
    assert dashboard["uid"] and dashboard["title"]
    assert isinstance(dashboard["schemaVersion"], int)
    ids = [p["id"] for p in iter_panels(dashboard)]
    assert len(ids) == len(set(ids)), "duplicate panel ids"


def test_every_panel_has_promql(dashboard):
    panels = data_panels(dashboard)
    assert len(panels) >= 15
    for panel in panels:
        targets = panel.get("targets")
        assert targets, f"panel {panel['title']!r} has no targets"
        for t in targets:
            assert t.get("expr", "").strip(), f"{panel['title']!r} target {t.get('refId')} has no expr"
            assert t.get("refId")
        ref_ids = [t["refId"] for t in targets]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]


def test_layout(dashboard):
    for panel in iter_panels(dashboard):
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        assert pos["h"] > 0


def test_datasource_uid_matches_provisioning(dashboard, datasource_uid):
    for panel in data_panels(dashboard):
        assert panel["datasource"]["uid"] == datasource_uid, panel["title"]
        for t in panel["targets"]:
            assert t.get("datasource", panel["datasource"])["uid"] == datasource_uid
    for var in template_variables(dashboard).values():
        if var["type"] == "query":
            assert var["datasource"]["uid"] == datasource_uid


def test_template_variables(dashboard):
    variables = template_variables(dashboard)
    assert {"model_name", "instance"} <= set(variables)
    for name in ("model_name", "instance"):
        var = variables[name]
        assert var["type"] == "query"
        _query, label = label_values_as_promql(variable_query(var))
        assert label == name
        assert var.get("includeAll") and var.get("allValue") == ".*"
    # every variable used by a panel is defined (or built in)
    used = set()
    for t in panel_targets(dashboard):
        used |= set(re.findall(r"\$\{?(\w+)", t.expr))
    builtins = {"__rate_interval", "__interval", "__range"}
    assert used - builtins <= set(variables), used
    # ... and panels use them: front end and engine alike by model_name (vLLM's label) / instance
    for t in panel_targets(dashboard):
        assert 'model=~' not in t.expr and "by (model)" not in t.expr, t.label
        for metric in t.metrics:
            # per-backend series carry no model label
            if metric.startswith(("earlytom_", "vllm:")) and \
                    not metric.startswith("earlytom_backend_"):
                assert 'model_name=~"$model_name"' in t.expr and \
                    'instance=~"$instance"' in t.expr, t.label


def test_rates_use_rate_interval(dashboard):
    for t in panel_targets(dashboard):
        for window in re.findall(r"\[([^\]]+)\]", t.expr):
            assert window == "$__rate_interval", t.label


def test_substitution_leaves_valid_looking_promql(dashboard):
    for t in panel_targets(dashboard):
        expr = substitute(t.expr, {"model_name": ".*", "instance": ".*"})
        assert "$" not in expr and expr.count("(") == expr.count(")"), t.label


def test_required_views(dashboard):
    """The issue's list: each view is backed by the metric that measures it."""
    metrics_by_title = {}
    for t in panel_targets(dashboard):
        metrics_by_title.setdefault(t.panel, set()).update(t.metrics)
    allm = set().union(*metrics_by_title.values())

    def panel_with(*metrics):
        return [title for title, ms in metrics_by_title.items() if set(metrics) <= ms]

    assert panel_with("earlytom_time_to_first_token_seconds_bucket")
    assert panel_with("vllm:time_to_first_token_seconds_bucket")
    assert panel_with("earlytom_output_tokens_total")
    assert panel_with("earlytom_requests_total")
    assert panel_with("earlytom_visual_tokens_before_total", "earlytom_visual_tokens_after_total")
    assert panel_with("earlytom_prompt_tokens_total", "earlytom_requests_total")
    assert panel_with("vllm:request_queue_time_seconds_sum", "vllm:request_prefill_time_seconds_sum",
                      "vllm:request_decode_time_seconds_sum")
    assert panel_with("earlytom_requests_in_flight")
    assert panel_with("vllm:kv_cache_usage_perc")
    assert panel_with("earlytom_backend_up")
    # caches and latency, by vLLM's own series (issue 14)
    assert panel_with("vllm:mm_cache_hits_total", "vllm:mm_cache_queries_total")
    assert panel_with("vllm:prefix_cache_hits_total", "vllm:prefix_cache_queries_total")
    assert panel_with("vllm:inter_token_latency_seconds_bucket")
    assert panel_with("earlytom_e2e_request_latency_seconds_bucket",
                      "vllm:e2e_request_latency_seconds_bucket")
    assert panel_with("earlytom_non_streaming_request_latency_seconds_bucket")
    assert {"vllm:generation_tokens_total", "vllm:num_requests_running",
            "vllm:num_requests_waiting", "vllm:request_prompt_tokens_sum"} <= allm
    quantiles = {q for t in panel_targets(dashboard) if "time_to_first_token" in t.expr
                 for q in re.findall(r"histogram_quantile\((0\.\d+)", t.expr)}
    assert {"0.5", "0.95", "0.99"} <= quantiles
    status_panels = [t for t in panel_targets(dashboard) if "by (status)" in t.expr]
    assert status_panels, "errors by status"


def test_dashboard_provider():
    [path] = sorted(DASHBOARD_PROVIDERS_DIR.glob("*.yml"))
    cfg = load_yaml(path)
    assert cfg["apiVersion"] == 1
    [provider] = cfg["providers"]
    assert provider["type"] == "file" and provider["options"]["path"]


# ------------------------------------------------------------------------------------------------
# metric names
# ------------------------------------------------------------------------------------------------
def exposed_names(kind: str, name: str) -> set[str]:
    if kind == "histogram":
        return {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    if kind == "counter":
        base = name[:-6] if name.endswith("_total") else name
        return {f"{base}_total"}
    return {name}


def vllm_metric_definitions() -> dict[str, str]:
    """name -> kind, read from the installed vLLM's v1/metrics/loggers.py (not imported)."""
    spec = importlib.util.find_spec("vllm")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("vllm is not installed")
    source = Path(next(iter(spec.submodule_search_locations))) / "v1" / "metrics" / "loggers.py"
    text = source.read_text(encoding="utf-8")
    found = dict(
        (m.group(2), m.group(1))
        for m in re.finditer(r"self\._(gauge|counter|histogram)_cls\(\s*name=\"(vllm:[\w:]+)\"", text)
    )
    assert len(found) > 20, f"could not read vLLM's metric definitions from {source}"
    return found


def vllm_exposed() -> set[str]:
    return set().union(*(exposed_names(k, n) for n, k in vllm_metric_definitions().items()))


def frontend_exposed() -> set[str]:
    from earlytom_server.metrics import Metrics

    names = set()
    for family in Metrics().registry.collect():
        kind = family.type
        names |= exposed_names(kind, family.name)
    return names


def engine_exposed() -> set[str]:
    from prometheus_client import CollectorRegistry

    from earlytom_vllm.metrics import VisualTokenCounters

    registry = CollectorRegistry()
    VisualTokenCounters(registry)
    return set().union(*(exposed_names(f.type, f.name) for f in registry.collect()))


def shipped_exprs() -> list[tuple[str, str]]:
    exprs = [(t.label, t.expr) for t in panel_targets()]
    exprs += [(f"variable {n}", variable_query(v)) for n, v in template_variables().items()]
    for path in sorted(RULES_DIR.glob("*.yml")):
        for group in load_yaml(path)["groups"]:
            for rule in group["rules"]:
                exprs.append((f"{path.name}:{rule.get('record') or rule.get('alert')}", rule["expr"]))
    return exprs


def test_frontend_contract_matches_server():
    exposed = frontend_exposed()
    for name, kind in FRONTEND_METRICS.items():
        assert exposed_names(kind, name) <= exposed, name
    engine = engine_exposed()
    for name, kind in ENGINE_METRICS.items():
        assert exposed_names(kind, name) <= engine, name
        assert not exposed_names(kind, name) & exposed, f"{name} is counted twice"


def test_frontend_names_used_exist():
    exposed = frontend_exposed() | engine_exposed()
    for where, expr in shipped_exprs():
        for metric in METRIC_TOKEN.findall(expr):
            if metric.startswith("earlytom_"):
                assert metric in exposed, f"{where}: {metric} is exposed by neither earlytom-serve " \
                    "nor the EarlyTom processor"


def test_vllm_names_used_exist():
    exposed = vllm_exposed()
    used = set()
    for where, expr in shipped_exprs():
        # recording-rule outputs look like metric names too (model_name:vllm_...): skip them
        for metric in METRIC_TOKEN.findall(expr):
            if metric.startswith("vllm:"):
                used.add(metric)
                assert metric in exposed, f"{where}: {metric} is not a vLLM 0.32 metric"
    assert "vllm:kv_cache_usage_perc" in used


def test_vllm_labels():
    """The dashboard filters engine series by model_name; vLLM 0.32 labels them so."""
    spec = importlib.util.find_spec("vllm")
    if spec is None:
        pytest.skip("vllm is not installed")
    source = Path(next(iter(spec.submodule_search_locations))) / "v1" / "metrics" / "loggers.py"
    assert 'labelnames = ["model_name", "engine"]' in source.read_text(encoding="utf-8")
