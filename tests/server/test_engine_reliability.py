"""Reliability through the REAL engine: ``earlytom-serve`` (tiny checkpoint, vLLM CPU) with small
limits (2 in flight, 2 queued).

- what the front end accepts the engine encodes: a 1-frame mp4 (which vLLM's in-memory loader
  reads as empty) and an mp4 with an edit list answer 200;
- ``X-Request-Id`` reaches vLLM as its request id (vLLM names the completion after it);
- a request vLLM's own validation refuses comes back in the front end's shape, readable;
- the load ramp (loopback, bounded): 0 errors up to in-flight + queue, only 429s beyond, the
  front end's RSS bounded, TTFT p50/p99 per level (``python -m benchmarks.load`` runs it larger).
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from frontend_fakes import write_mp4
from mp4_edits import hide_leading_frames

from benchmarks.harness import Server, launch_serve, served_model, wait_ready
from benchmarks.load import RssSampler, mib, ramp_level, video_body

pytestmark = pytest.mark.engine

IN_FLIGHT, QUEUED = 2, 2


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[tuple[Server, str, Path]]:
    from earlytom_vllm.checkpoints import ensure_tiny_checkpoint

    ensure_tiny_checkpoint()
    work = tmp_path_factory.mktemp("reliability")
    media = work / "media"
    media.mkdir()
    server = launch_serve(
        ["--media-dir", str(media), "--health-interval", "0.5", "--num-frames", "8",
         "--max-in-flight", str(IN_FLIGHT), "--max-queued", str(QUEUED), "--queue-timeout",
         "120", "--quiet-backend", "--log-level", "info"], work / "serve.log")
    try:
        wait_ready(server, 600, "none")
        yield server, served_model(server.url, "none"), media
    finally:
        server.stop()


def video_request(model: str, url: str, **extra) -> dict:
    return {"model": model, "max_tokens": 2, "temperature": 0, **extra, "messages": [
        {"role": "user", "content": [{"type": "video_url", "video_url": {"url": url}},
                                     {"type": "text", "text": "Describe the video."}]}]}


def as_data(data: bytes) -> str:
    return "data:video/mp4;base64," + base64.b64encode(data).decode()


def test_videos_the_front_end_accepts_are_encoded(served, tmp_path):
    server, model, _ = served
    one = write_mp4(tmp_path / "one.mp4", frames=1).read_bytes()
    edited = hide_leading_frames(write_mp4(tmp_path / "e.mp4", frames=20).read_bytes(), 6)
    with httpx.Client(base_url=server.url, timeout=300) as c:
        for name, data in (("1-frame", one), ("edit list", edited)):
            r = c.post("/v1/chat/completions", json=video_request(model, as_data(data)))
            assert r.status_code == 200, (name, r.text)
            assert r.json()["usage"]["prompt_tokens"] > 0


def test_request_id_is_the_engines(served):
    server, model, _ = served
    r = httpx.post(f"{server.url}/v1/chat/completions", timeout=300,
                   headers={"x-request-id": "rel-test-7"},
                   json={"model": model, "max_tokens": 1,
                         "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200 and r.headers["x-request-id"] == "rel-test-7"
    assert r.json()["id"] == "chatcmpl-rel-test-7"  # vLLM: chatcmpl-<X-Request-Id>
    assert "[rel-test-7]" in server.log.read_text()  # the front end's lines carry it


def test_engine_validation_errors_are_readable(served):
    server, model, _ = served
    r = httpx.post(f"{server.url}/v1/chat/completions", timeout=300,
                   json={"model": model, "max_tokens": 1, "top_k": "many",
                         "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 400, r.text
    body = r.json()
    assert set(body) == {"error", "request_id"}
    err = body["error"]
    assert err["param"] == "top_k" and err["type"] == "invalid_request_error"
    assert err["message"].startswith("top_k: ") and "{'type'" not in err["message"]


def test_load_ramp_is_bounded_with_429s_beyond_the_limit(served):
    server, model, media = served
    assert server.proc is not None
    body = video_body(model, media, 8)
    report = []
    with RssSampler(server.proc.pid) as sampler:
        baseline = sampler.rss()
        for c in (1, 2, 4, 8):
            level = asyncio.run(ramp_level(server.url, body, c, 2))
            level["within_limit"] = c <= IN_FLIGHT + QUEUED
            report.append(level)
    print(json.dumps({"baseline_rss_mib": mib(baseline), "peak_rss_mib": mib(sampler.peak),
                      "levels": report}, indent=1))
    for level in report:
        statuses = level["statuses"]
        if level["within_limit"]:
            assert statuses == {"200": level["requests"]}, level
        else:
            assert set(statuses) <= {"200", "429"} and statuses.get("429"), level
        assert level["ttft_p50_s"] is not None
    assert sampler.peak - baseline < 64 * 2**20, (mib(baseline), mib(sampler.peak))
