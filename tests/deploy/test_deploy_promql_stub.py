"""Every dashboard query and every rule, run by a real Prometheus (Debian's binary, scraping every
second) against stub exporters: the front end's real ``earlytom_server.metrics.Metrics`` registry
and a vLLM-shaped registry with vLLM 0.32's metric names and labels, both fed continuously.

Fast (about 20 s), no engine. The engine-backed twin is test_dashboard_live.py.
"""

from __future__ import annotations

import random
import threading
import time

import pytest
from deploy_support import (
    RULES_DIR,
    Prometheus,
    finite_samples,
    label_values_as_promql,
    panel_targets,
    scrape_configs_for,
    substitute,
    template_variables,
    variable_query,
)
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

MODEL = "stub-model"
METHODS = ("earlytom", "none")
RATE_INTERVAL = "15s"


class EngineStub:
    """The vLLM series the dashboard reads, named and labelled as vLLM 0.32 exposes them
    (test_deploy_dashboard.py checks these names against vLLM's source)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        labels = ["model_name", "engine"]
        self.hist = {
            name: Histogram(name, name, labels, registry=r,
                            buckets=(0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0))
            for name in ("vllm:time_to_first_token_seconds", "vllm:request_queue_time_seconds",
                         "vllm:request_prefill_time_seconds", "vllm:request_decode_time_seconds",
                         "vllm:e2e_request_latency_seconds", "vllm:inter_token_latency_seconds")
        }
        self.prompt_hist = Histogram("vllm:request_prompt_tokens", "p", labels, registry=r,
                                     buckets=(100, 500, 1000, 5000, 10000))
        self.generation = Counter("vllm:generation_tokens", "g", labels, registry=r)
        self.prompt = Counter("vllm:prompt_tokens", "p", labels, registry=r)
        self.running = Gauge("vllm:num_requests_running", "r", labels, registry=r)
        self.waiting = Gauge("vllm:num_requests_waiting", "w", labels, registry=r)
        self.kv = Gauge("vllm:kv_cache_usage_perc", "k", labels, registry=r)
        self.caches = {name: (Counter(f"vllm:{name}_queries", "q", labels, registry=r),
                              Counter(f"vllm:{name}_hits", "h", labels, registry=r))
                       for name in ("mm_cache", "prefix_cache")}
        from earlytom_vllm.metrics import VisualTokenCounters

        self.visual = VisualTokenCounters(r)  # the EarlyTom processor's, on vLLM's /metrics

    def tick(self, rng: random.Random) -> None:
        lv = (MODEL, "0")
        for h in self.hist.values():
            h.labels(*lv).observe(rng.uniform(0.02, 3.0))
        self.prompt_hist.labels(*lv).observe(rng.randint(200, 2000))
        self.generation.labels(*lv).inc(rng.randint(1, 40))
        self.prompt.labels(*lv).inc(rng.randint(200, 2000))
        self.running.labels(*lv).set(rng.randint(0, 4))
        self.waiting.labels(*lv).set(rng.randint(0, 2))
        self.kv.labels(*lv).set(rng.uniform(0.05, 0.6))
        for queries, hits in self.caches.values():
            asked = rng.randint(1, 10)
            queries.labels(*lv).inc(asked)
            hits.labels(*lv).inc(rng.randint(0, asked))


def frontend_tick(metrics, rng: random.Random) -> None:
    for method in METHODS:
        metrics.ttft.labels(MODEL, method).observe(rng.uniform(0.05, 2.0))
        metrics.duration.labels(MODEL, method).observe(rng.uniform(0.5, 6.0))
        metrics.e2e.labels(MODEL, method).observe(rng.uniform(0.5, 6.0))
        metrics.non_streaming.labels(MODEL, method).observe(rng.uniform(0.5, 6.0))
        metrics.output_tokens.labels(MODEL, method).inc(rng.randint(1, 64))
        metrics.prompt_tokens.labels(MODEL, method).inc(rng.randint(300, 3000))
        metrics.requests.labels(MODEL, method, "200").inc()
        if rng.random() < 0.3:
            metrics.requests.labels(MODEL, method, "500").inc()
        if rng.random() < 0.3:
            metrics.requests.labels(MODEL, method, "400").inc()
    metrics.in_flight.labels(MODEL).set(rng.randint(0, 3))
    metrics.backend_up.labels("http://127.0.0.1:8001").set(1)


@pytest.fixture(scope="module")
def prom(tmp_path_factory):
    from earlytom_server.metrics import Metrics

    front = Metrics()
    engine = EngineStub()
    stop = threading.Event()
    rng = random.Random(0)

    def feed() -> None:
        while not stop.is_set():
            frontend_tick(front, rng)
            engine.tick(rng)
            for method in METHODS:
                before = 196 * 32 + 1
                engine.visual.add(MODEL, method, before, 628 if method == "earlytom" else before)
            stop.wait(0.2)

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    servers = []
    try:
        fe_server, _ = start_http_server(0, addr="127.0.0.1", registry=front.registry)
        servers.append(fe_server)
        en_server, _ = start_http_server(0, addr="127.0.0.1", registry=engine.registry)
        servers.append(en_server)
        configs = scrape_configs_for({
            "earlytom": [f"127.0.0.1:{fe_server.server_port}"],
            "vllm": [f"127.0.0.1:{en_server.server_port}"],
        })
        rules = sorted(RULES_DIR.glob("*.yml"))
        with Prometheus(tmp_path_factory.mktemp("prometheus"), configs, rule_files=rules) as p:
            # enough scrapes for rate() over RATE_INTERVAL on both jobs
            p.wait_for(f"sum(rate(earlytom_requests_total[{RATE_INTERVAL}]))")
            p.wait_for(f"sum(rate(vllm:generation_tokens_total[{RATE_INTERVAL}]))")
            p.wait_for("count_over_time(up{job=\"vllm\"}[1m]) >= 5")
            yield p
    finally:
        stop.set()
        feeder.join(timeout=5)
        for s in servers:
            s.shutdown()
            s.server_close()


TARGETS = panel_targets()


def test_relabelling_gives_one_instance_per_host(prom):
    result = prom.query('up{job=~"earlytom|vllm"}')
    assert result["status"] == "success"
    got = {(r["metric"]["job"], r["metric"]["instance"]) for r in result["data"]["result"]}
    assert got == {("earlytom", "127.0.0.1"), ("vllm", "127.0.0.1")}


def test_variables(prom):
    expected = {"model_name": MODEL, "instance": "127.0.0.1"}
    for name, var in template_variables().items():
        query, label = label_values_as_promql(variable_query(var))
        result = prom.query(query)
        assert result["status"] == "success", (name, result)
        values = {r["metric"].get(label) for r in result["data"]["result"]}
        assert expected[name] in values, (name, values)


@pytest.mark.parametrize("target", TARGETS, ids=[t.label for t in TARGETS])
@pytest.mark.parametrize("selection", ["all", "one"])
def test_panel_query(prom, target, selection):
    values = ({"model_name": ".*", "instance": ".*"} if selection == "all"
              else {"model_name": MODEL, "instance": "127\\\\.0\\\\.0\\\\.1"})
    expr = substitute(target.expr, values, rate_interval=RATE_INTERVAL)
    result = prom.query(expr)
    assert result["status"] == "success", f"{target.label}: {expr}\n{result}"
    assert finite_samples(result), f"{target.label} returned no finite sample: {expr}\n{result}"


def test_rules_evaluate(prom):
    deadline = time.monotonic() + 30
    while True:
        groups = prom.api("rules")["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        if rules and all(r["health"] != "unknown" for r in rules):
            break
        assert time.monotonic() < deadline, rules
        time.sleep(0.5)
    bad = [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"]
    assert not bad, bad
    shipped = {r["name"] for r in rules}
    assert {"earlytom:time_to_first_token_seconds:p95_5m", "EarlyTomTTFTP95High",
            "EarlyTomBackendDown"} <= shipped
    for record in ("earlytom:time_to_first_token_seconds:p95_5m",
                   "earlytom:visual_tokens_retained:ratio_rate5m",
                   "model_name:vllm_time_to_first_token_seconds:p95_5m"):
        prom.wait_for(record, timeout=30)


def test_vllm_names_restored(prom):
    """The shipped metric_relabel_configs undo prometheus_client's colon escaping."""
    assert prom.query('count({__name__=~"vllm_.+"})')["data"]["result"] == []
    assert finite_samples(prom.query('count({__name__=~"vllm:.+"})'))


def test_bad_query_is_reported(prom):
    """Control: the API check above really distinguishes accepted from rejected PromQL."""
    assert prom.query("sum(rate(earlytom_requests_total[$__rate_interval]))")["status"] == "error"
    assert prom.query("histogram_quantile(0.9, ")["status"] == "error"
