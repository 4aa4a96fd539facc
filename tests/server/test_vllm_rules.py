"""Which engine rules the front end follows (server/vllm_rules.py): chosen by the backends' vLLM
release, read from their ``GET /version`` when they become ready. (That each release's rules
agree with that release's engine: test_video_agreement.py, test_image_agreement.py.)"""

from __future__ import annotations

import asyncio

import httpx
import pytest
from prometheus_client import CollectorRegistry

from earlytom_server.media import MediaPolicy, MediaProcessor
from earlytom_server.metrics import Metrics
from earlytom_server.proxy import BackendPool
from earlytom_server.vllm_rules import DEFAULT, RULES, RULES_032, RULES_033, rules_for
from earlytom_vllm.vllm.compat import SUPPORTED_VLLM


@pytest.mark.parametrize(("version", "rules"), [
    ("0.32.0", RULES_032), ("0.33.0", RULES_033), ("0.34.0", RULES_033),
    ("0.34.1.dev3+g1234", RULES_033),
    (None, DEFAULT), ("", DEFAULT), ("dev", DEFAULT), ("0.35.0", DEFAULT),
])
def test_rules_follow_the_release(version, rules):
    assert rules_for(version) is rules


def test_every_supported_release_has_rules():
    low, high = SUPPORTED_VLLM
    assert sorted(RULES) == [(0, m) for m in range(low[1], high[1])]
    assert DEFAULT is RULES[low]  # the CPU engine's, until a backend says


def _pool(versions: dict[str, object]) -> BackendPool:
    """A pool over fake backends: ``url -> /version body`` (an int: that HTTP status)."""
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        base = f"{request.url.scheme}://{request.url.host}:{request.url.port}"
        calls.append(f"{base}{request.url.path}")
        if request.url.path == "/health":
            return httpx.Response(200)
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": "m"}]})
        body = versions[base]
        return httpx.Response(body) if isinstance(body, int) else httpx.Response(200, json=body)

    pool = BackendPool(list(versions), metrics=Metrics(CollectorRegistry()))
    pool._client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    pool.calls = calls
    return pool


def test_the_media_rules_are_the_ready_backends_release():
    async def scenario() -> None:
        pool = _pool({"http://a:1": {"version": "0.34.0"}, "http://b:2": 404})
        media = MediaProcessor(MediaPolicy(media_dir=None), vllm_version=pool.vllm_version)
        assert media.rules is DEFAULT  # nothing ready yet
        await pool.poll_once()
        assert [b.vllm_version for b in pool.backends] == ["0.34.0", None]
        assert pool.vllm_version() == "0.34.0" and media.rules is RULES_033
        await pool.poll_once()  # read once per transition to ready, not at every poll
        assert sum(c.endswith("/version") for c in pool.calls) == 2
        pool.set_health(pool.backends[0], False, "gone")
        assert pool.vllm_version() is None and media.rules is DEFAULT
        await media.aclose()
        await pool.stop()

    asyncio.run(scenario())


def test_mixed_backends_use_the_oldest_release():
    async def scenario() -> None:
        pool = _pool({"http://a:1": {"version": "0.34.0"}, "http://b:2": {"version": "0.32.0"},
                      "http://c:3": {"version": "not a version"}})
        await pool.poll_once()
        assert pool.vllm_version() == "0.32.0"
        await pool.stop()

    asyncio.run(scenario())
