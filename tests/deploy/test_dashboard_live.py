"""The dashboard against the real thing: a real Prometheus (Debian's binary, 1 s scrapes) scraping a
running ``earlytom-serve`` (front end, :P/metrics) and the vLLM engine it spawns (:B/metrics) on
the tiny checkpoint, after a few video requests (mp4 as a data URL, streaming and not, EarlyTom on
and off). Every panel query must be accepted; the TTFT, throughput and compression panels must
return data.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from deploy_support import (
    REPO,
    RULES_DIR,
    Prometheus,
    free_port,
    label_values_as_promql,
    panel_targets,
    require_binary,
    scrape_configs_for,
    substitute,
    template_variables,
    variable_query,
)

pytestmark = [pytest.mark.engine, pytest.mark.timeout(1800)]

NUM_FRAMES = 8
#: Rate windows wide enough to hold every request of the test.
RATE_INTERVAL = "10m"
#: Panels that must show data once requests went through (every target of each).
MUST_HAVE_DATA = {
    # TTFT
    "TTFT p95",
    "TTFT p50 / p95 / p99 (front end)",
    "TTFT p50 / p95 / p99 (engine)",
    # throughput
    "Requests / s",
    "Output tokens / s",
    "Prompt tokens per request",
    # compression
    "Visual tokens kept",
    "Visual tokens before vs after compression",
    "Compression ratio (kept / produced)",
    "Visual tokens per request",
    # caches and latency (the same video is asked about six times: the multimodal cache answers)
    "Multimodal cache hit rate (engine)",
    "Prefix cache hit rate (engine)",
    "Inter-token latency p50 / p95 / p99 (engine)",
    "End-to-end latency p50 / p95 / p99",
}


def _ready():
    missing = [p for p in ("server/cli.py", "server/app.py", "earlytom_vllm/vllm/plugin.py")
               if not (REPO / p).is_file()]
    if missing:
        pytest.skip(f"front end / plugin not there yet: {missing}")


def _serve_command(port: int, backend_port: int) -> list[str]:
    exe = Path(sys.executable).with_name("earlytom-serve")
    base = [str(exe)] if exe.is_file() else [sys.executable, "-m", "earlytom_server.cli"]
    return [*base, "--host", "127.0.0.1", "--port", str(port), "--backend-port", str(backend_port),
            "--num-frames", str(NUM_FRAMES), "--log-level", "warning"]


def _get(url: str, timeout: float = 5.0):
    import httpx

    return httpx.get(url, timeout=timeout)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    _ready()
    require_binary("prometheus")
    work = tmp_path_factory.mktemp("earlytom-serve")
    port, backend_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("EARLYTOM_")}
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    env.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    env["EARLYTOM_MEDIA_DIR"] = str(work / "media")
    log_path = work / "serve.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(_serve_command(port, backend_port), stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                cwd=work, start_new_session=True)

    def tail() -> str:
        return log_path.read_text(errors="replace")[-6000:]

    try:
        deadline = time.monotonic() + 900
        while True:
            if proc.poll() is not None:
                pytest.fail(f"earlytom-serve exited with {proc.returncode}:\n{tail()}")
            with contextlib.suppress(Exception):
                if _get(f"http://127.0.0.1:{port}/health").status_code == 200:
                    break
            if time.monotonic() > deadline:
                pytest.fail(f"earlytom-serve not healthy after 900 s:\n{tail()}")
            time.sleep(1.0)
        # the engine's own /metrics answers on the backend port
        r = _get(f"http://127.0.0.1:{backend_port}/metrics")
        assert r.status_code == 200 and "vllm:" in r.text, r.text[:500]
        yield {"url": f"http://127.0.0.1:{port}", "port": port, "backend_port": backend_port,
               "log": tail}
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


def _mp4(path: Path, frames: int = 16) -> bytes:
    import cv2
    import numpy as np

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 8, (192, 144))
    assert writer.isOpened()
    for i in range(frames):
        img = np.full((144, 192, 3), (30 + 10 * i, 90, 160), np.uint8)
        cv2.rectangle(img, (10 + 9 * i, 50), (40 + 9 * i, 80), (255, 255, 255), -1)
        writer.write(img)
    writer.release()
    return path.read_bytes()


def _chat(url: str, model: str, video_url: str, *, stream: bool, earlytom: dict | None) -> dict:
    import httpx

    body = {
        "model": model,
        "max_tokens": 8,
        "temperature": 0,
        "messages": [{"role": "user", "content": [
            {"type": "video_url", "video_url": {"url": video_url}},
            {"type": "text", "text": "What happens in this video?"},
        ]}],
    }
    if earlytom is not None:
        body["earlytom"] = earlytom
    if not stream:
        r = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=600)
        assert r.status_code == 200, r.text
        return r.json()
    body["stream"] = True
    chunks = []
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=600) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunks.append(json.loads(line[6:]))
    assert chunks and not any("error" in c for c in chunks), chunks[-3:]
    return {"chunks": chunks}


@pytest.fixture(scope="module")
def prom(server, tmp_path_factory):
    configs = scrape_configs_for({
        "earlytom": [f"127.0.0.1:{server['port']}"],
        "vllm": [f"127.0.0.1:{server['backend_port']}"],
    })
    rules = sorted(RULES_DIR.glob("*.yml"))
    with Prometheus(tmp_path_factory.mktemp("prometheus"), configs, rule_files=rules) as p:
        # a few scrapes before any request, so that the first request shows up as an increase
        p.wait_for('count_over_time(up{job="vllm"}[1m]) >= 3 and up{job="vllm"} == 1')
        p.wait_for('count_over_time(up{job="earlytom"}[1m]) >= 3 and up{job="earlytom"} == 1')

        import httpx

        models = httpx.get(f"{server['url']}/v1/models", timeout=30).json()["data"]
        model = models[0]["id"]
        video = _mp4(tmp_path_factory.mktemp("video") / "clip.mp4")
        video_url = "data:video/mp4;base64," + base64.b64encode(video).decode()
        sent = 0
        # two label sets (method earlytom / none), each requested several times, each request
        # scraped (front end and engine) before the next is sent, so every labelled series has an
        # increase inside the rate window whatever the machine's load. TTFT is recorded for
        # streaming requests only and non-streaming latency in its own histogram: two of each, as
        # a series' first sample is not an increase to rate()
        for earlytom in (None, {"method": "none"}):
            for stream in (True, False, True, False):
                _chat(server["url"], model, video_url, stream=stream, earlytom=earlytom)
                sent += 1
                p.wait_for(f'sum(earlytom_requests_total{{status="200"}}) >= {sent}', timeout=60)
                p.wait_for(f"sum(vllm:request_success_total) >= {sent}", timeout=60)
        # a rejected request, for the errors-by-status panel
        bad = httpx.post(f"{server['url']}/v1/chat/completions", timeout=60, json={
            "model": model, "max_tokens": 4, "messages": [{"role": "user", "content": [
                {"type": "video_url", "video_url": {"url": "data:video/mp4;base64,AAAA"}}]}]})
        assert 400 <= bad.status_code < 500, bad.text
        p.wait_for('sum(earlytom_requests_total{status!="200"}) >= 1', timeout=60)
        yield {"prometheus": p, "model": model}


TARGETS = panel_targets()


def test_variables(prom):
    p, model = prom["prometheus"], prom["model"]
    expected = {"model_name": model, "instance": "127.0.0.1"}
    for name, var in template_variables().items():
        query, label = label_values_as_promql(variable_query(var))
        result = p.query(query)
        assert result["status"] == "success", (name, result)
        values = {r["metric"].get(label) for r in result["data"]["result"]}
        assert expected[name] in values, (name, values)


@pytest.mark.parametrize("target", TARGETS, ids=[t.label for t in TARGETS])
def test_panel_query(prom, target):
    p = prom["prometheus"]
    expr = substitute(target.expr, {"model_name": ".*", "instance": ".*"},
                      rate_interval=RATE_INTERVAL)
    result = p.query(expr)
    assert result["status"] == "success", f"{target.label}: {expr}\n{result}"
    if target.panel in MUST_HAVE_DATA:  # waits for the scrapes / rule runs it needs (or fails)
        assert p.wait_for(expr, timeout=60), f"{target.label} returned no data: {expr}"


def test_must_have_data_panels_exist():
    titles = {t.panel for t in TARGETS}
    assert titles >= MUST_HAVE_DATA, sorted(MUST_HAVE_DATA - titles)


def test_compression_visible(prom):
    """EarlyTom requests keep ~10% of the visual tokens; method none keeps them all."""
    p = prom["prometheus"]
    ratio = p.query(
        f"sum by (method) (increase(earlytom_visual_tokens_after_total[{RATE_INTERVAL}])) / "
        f"sum by (method) (increase(earlytom_visual_tokens_before_total[{RATE_INTERVAL}]))")
    by_method = {r["metric"]["method"]: float(r["value"][1]) for r in ratio["data"]["result"]}
    assert 0 < by_method["earlytom"] < 0.5, by_method
    assert by_method["none"] == pytest.approx(1.0), by_method


def test_rules_healthy(prom):
    p = prom["prometheus"]
    rules = [r for g in p.api("rules")["data"]["groups"] for r in g["rules"]]
    bad = [(r["name"], r.get("lastError")) for r in rules if r["health"] == "err"]
    assert rules and not bad, bad
    p.wait_for("earlytom:time_to_first_token_seconds:p95_5m", timeout=30)
    p.wait_for("model_name:vllm_time_to_first_token_seconds:p95_5m", timeout=30)
    assert p.query("ALERTS{alertname=~\"EarlyTomBackendDown|EarlyTomEngineMetricsDown\"}")[
        "data"]["result"] == []
