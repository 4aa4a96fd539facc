"""Equal settings, equal cache keys: vLLM hashes a request's ``mm_processor_kwargs`` into its
multimodal cache key as sent, so the front end forwards one canonical form (fake backends)."""

from __future__ import annotations

import base64
from typing import Any

import httpx
import pytest
from frontend_fakes import png_bytes, video_message

from earlytom_server.prepare import canonical_earlytom, encode_upstream
from earlytom_vllm import EarlyTomConfig
from earlytom_vllm.config import request_config


def forwarded(client: httpx.Client, backend: Any, body: dict[str, Any]) -> bytes:
    """The ``mm_processor_kwargs`` the backend received, as the bytes vLLM would hash."""
    r = client.post("/v1/chat/completions", json={"model": "fake-model", **body})
    assert r.status_code == 200, r.text
    sent = backend.app.state.received[-1]
    return encode_upstream({"k": sent.get("mm_processor_kwargs")})


@pytest.fixture
def video_url(videos) -> str:
    return "data:video/mp4;base64," + base64.b64encode(videos["good"].read_bytes()).decode()


EQUAL = [
    ({"earlytom": {"retain_ratio": 0.1, "tau": 0.5}}, {"earlytom": {"tau": 0.5, "retain_ratio": 0.1}}),
    ({"earlytom": {"retain_ratio": 1, "prune_layers": [10, 21, 23]}},
     {"earlytom": {"prune_layers": [10, 21, 23], "retain_ratio": 1.0}}),
    ({"earlytom": {"tau": 0.5, "ema": 0.9}},
     {"mm_processor_kwargs": {"earlytom": {"ema": 0.9, "tau": 0.5}}}),
    ({"earlytom": {"tau": 0.5}, "mm_processor_kwargs": {"earlytom": {"ema": 0.9}}},
     {"earlytom": {"ema": 0.9, "tau": 0.5}}),
]


@pytest.mark.parametrize(("a", "b"), EQUAL)
def test_equal_settings_are_forwarded_byte_identical(client, fake_backend, video_url, a, b):
    messages = video_message(video_url)
    first = forwarded(client, fake_backend, {"messages": messages, **a})
    second = forwarded(client, fake_backend, {"messages": messages, **b})
    assert first == second
    assert b'"earlytom"' in first


def test_different_settings_are_forwarded_different(client, fake_backend, video_url):
    messages = video_message(video_url)
    seen = {forwarded(client, fake_backend, {"messages": messages, "earlytom": e})
            for e in ({"retain_ratio": 0.1}, {"retain_ratio": 0.2}, {"tau": 0.4},
                      {"retain_ratio": 0.1, "tau": 0.4}, {"enabled": False})}
    assert len(seen) == 5
    sent = fake_backend.app.state.received[-1]["mm_processor_kwargs"]
    assert sent == {"earlytom": {"enabled": False}}


def test_settings_equal_to_the_server_wide_ones_are_dropped(make_front, fake_backend, video_url):
    """With --retain-ratio 0.2 (sent to the backends as their default), a request asking for
    0.2 is the default request: same key as one that asks for nothing."""
    front = make_front(backends=[fake_backend.url], compression={"retain_ratio": 0.2})
    messages = video_message(video_url)
    with httpx.Client(base_url=front.url, timeout=30) as c:
        plain = forwarded(c, fake_backend, {"messages": messages})
        same = forwarded(c, fake_backend, {"messages": messages,
                                           "earlytom": {"retain_ratio": 0.2}})
        other = forwarded(c, fake_backend, {"messages": messages,
                                            "earlytom": {"retain_ratio": 0.3, "tau": 0.5}})
    assert plain == same == encode_upstream({"k": None})
    # tau is not configured server-wide: kept (a family's own default may differ)
    assert fake_backend.app.state.received[-1]["mm_processor_kwargs"] == {
        "earlytom": {"retain_ratio": 0.3, "tau": 0.5}}
    assert other != plain


def test_image_only_requests_carry_no_video_settings(client, fake_backend):
    url = "data:image/png;base64," + base64.b64encode(png_bytes()).decode()
    content = [{"type": "image_url", "image_url": {"url": url}},
               {"type": "text", "text": "What is it?"}]
    for earlytom in ({"retain_ratio": 0.3}, {"tau": 0.2, "enabled": False}, None):
        body: dict[str, Any] = {"messages": [{"role": "user", "content": content}]}
        if earlytom:
            body["earlytom"] = earlytom
        assert forwarded(client, fake_backend, body) == encode_upstream({"k": None})
    # still validated: a bad setting is the client's error even without a video
    r = client.post("/v1/chat/completions", json={
        "model": "fake-model", "messages": [{"role": "user", "content": content}],
        "earlytom": {"retain_ratio": 3}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "earlytom.retain_ratio"


def test_canonical_form_uses_the_library_normalisation():
    defaults = EarlyTomConfig(retain_ratio=0.2)
    overrides = {"tau": 1, "retain_ratio": 0.2, "prune_layers": (1, 2)}
    cfg = request_config(defaults, overrides)
    assert canonical_earlytom(overrides, cfg, defaults, {"retain_ratio"}) == {
        "prune_layers": [1, 2], "tau": 1.0}
    assert canonical_earlytom(overrides, cfg, defaults, ()) == {
        "prune_layers": [1, 2], "retain_ratio": 0.2, "tau": 1.0}
