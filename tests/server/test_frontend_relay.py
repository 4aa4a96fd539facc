"""The rest of vLLM's OpenAI surface through the front end (fake backends): /v1/completions
(JSON and SSE), /tokenize, /detokenize and /version, with chat's auth, limits, media rules, error
bodies and metrics."""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx
import pytest
from frontend_fakes import PROMPT_TOKENS, png_bytes, video_message

ERROR_KEYS = {"message", "type", "param", "code"}


def openai_error(r: httpx.Response, status: int, param: str | None = "any") -> dict[str, Any]:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == ERROR_KEYS, err
    assert "Traceback" not in r.text
    if param != "any":
        assert err["param"] == param, err
    return err


def samples(client: httpx.Client) -> str:
    return client.get("/metrics").text


def test_completion_is_relayed(client, fake_backend):
    r = client.post("/v1/completions", json={"model": "fake-model", "prompt": "Once",
                                              "max_tokens": 3, "top_k": 2})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "text_completion"
    assert body["choices"][0]["text"] == "Hello world!"
    path, sent = fake_backend.app.state.relayed[-1]
    assert path == "/v1/completions" and sent["top_k"] == 2 and sent["prompt"] == "Once"
    assert fake_backend.app.state.headers == []  # nothing went to the chat route
    r = client.post("/v1/completions", json={"prompt": "default model"})
    assert r.status_code == 200
    assert fake_backend.app.state.relayed[-1][1]["model"] == "fake-model"


def test_streamed_completion_hides_usage_unless_asked(client, fake_backend):
    def stream(**extra: Any) -> list[Any]:
        r = client.post("/v1/completions", json={"model": "fake-model", "prompt": "Once",
                                                  "stream": True, **extra})
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [b[6:] for b in r.text.split("\n\n") if b.startswith("data: ")]
        assert events[-1] == "[DONE]"
        return [json.loads(e) for e in events[:-1]]

    events = stream()
    assert "".join(e["choices"][0]["text"] for e in events if e["choices"]) == "Hello world!"
    assert not any("usage" in e for e in events)
    sent = fake_backend.app.state.relayed[-1][1]
    assert sent["stream_options"] == {"include_usage": True}  # the front end counts tokens
    events = stream(stream_options={"include_usage": True})
    assert events[-1]["usage"]["prompt_tokens"] == PROMPT_TOKENS


def test_completion_metrics_are_chat_s(client):
    client.post("/v1/completions", json={"model": "fake-model", "prompt": "a", "stream": True})
    client.post("/v1/completions", json={"model": "fake-model", "prompt": "b"})
    client.post("/v1/completions", json={"model": "fake-model", "prompt": "[reject]"})
    text = samples(client)
    lab = 'method="none",model_name="fake-model"'
    assert f'earlytom_requests_total{{{lab},status="200"}} 2.0' in text
    assert f'earlytom_requests_total{{{lab},status="400"}} 1.0' in text
    assert f"earlytom_time_to_first_token_seconds_count{{{lab}}} 1.0" in text
    assert f"earlytom_non_streaming_request_latency_seconds_count{{{lab}}} 1.0" in text
    assert f"earlytom_e2e_request_latency_seconds_count{{{lab}}} 2.0" in text
    assert f"earlytom_prompt_tokens_total{{{lab}}} {2 * PROMPT_TOKENS}.0" in text


@pytest.mark.parametrize(("body", "status", "param"), [
    ({"model": "fake-model"}, 400, "prompt"),
    ({"model": "fake-model", "prompt": {"a": 1}}, 400, "prompt"),
    ({"model": "fake-model", "prompt": "x", "stream": "yes"}, 400, "stream"),
    ({"model": "fake-model", "prompt": "x", "max_tokens": -1}, 400, "max_tokens"),
    ({"model": "nope", "prompt": "x"}, 404, "model"),
    ({"model": "fake-model", "prompt": "x", "prompt_embeds": "AAAA"}, 400, "prompt_embeds"),
    ({"model": "fake-model", "prompt": "x", "earlytom": {"retain_ratio": 0.2}}, 400, "earlytom"),
    ({"model": "fake-model", "prompt": "x", "mm_processor_kwargs": {}}, 400,
     "mm_processor_kwargs"),
    ({"model": "fake-model", "prompt": "x", "media_io_kwargs": {}}, 400, "media_io_kwargs"),
])
def test_bad_completions_are_openai_4xx(client, body, status, param):
    openai_error(client.post("/v1/completions", json=body), status, param)


@pytest.mark.parametrize("raw", [b"", b"{", b"[1]", b'{"prompt": NaN}'])
def test_malformed_bodies_are_400_on_every_post_route(client, raw):
    for path in ("/v1/completions", "/tokenize", "/detokenize"):
        openai_error(client.post(path, content=raw,
                                 headers={"content-type": "application/json"}), 400)


def test_tokenize_detokenize_version(client, fake_backend):
    r = client.post("/tokenize", json={"model": "fake-model", "prompt": "hello"})
    assert r.status_code == 200 and r.json()["count"] == 5
    r = client.post("/detokenize", json={"model": "fake-model", "tokens": [0, 1, 2]})
    assert r.status_code == 200 and r.json() == {"prompt": "abc"}
    openai_error(client.post("/detokenize", json={"model": "fake-model"}), 400, "tokens")
    r = client.get("/version")
    assert r.status_code == 200 and r.json() == {"version": "0.32.0"}
    text = samples(client)
    for endpoint, status in (("tokenize", "200"), ("detokenize", "200"),
                             ("detokenize", "400"), ("version", "200")):
        assert f'earlytom_utility_requests_total{{endpoint="{endpoint}",status="{status}"}}' \
            in text
    # utility calls are not generation requests
    assert 'earlytom_requests_total{' not in text


def test_chat_form_tokenize_follows_the_media_rules(client, fake_backend, videos):
    url = "data:video/mp4;base64," + base64.b64encode(videos["good"].read_bytes()).decode()
    messages = video_message(url)
    messages[0]["content"][0]["uuid"] = "someone-elses"
    r = client.post("/tokenize", json={"model": "fake-model", "messages": messages,
                                       "earlytom": {"tau": 0.5, "retain_ratio": 0.2}})
    assert r.status_code == 200, r.text
    path, sent = fake_backend.app.state.relayed[-1]
    assert path == "/tokenize"
    part = sent["messages"][0]["content"][0]
    assert part["video_url"]["url"] == url and "uuid" not in part
    # the settings travel as chat's do (canonical), so the count is the compressed prompt's
    assert list(sent["mm_processor_kwargs"]["earlytom"]) == ["retain_ratio", "tau"]
    assert "earlytom" not in sent
    bad = video_message("data:video/mp4;base64,AAAA")
    openai_error(client.post("/tokenize", json={"model": "fake-model", "messages": bad}), 400,
                 "messages[0].content[0].video_url.url")
    openai_error(client.post("/tokenize", json={
        "model": "fake-model", "messages": video_message("http://127.0.0.1:1/v.mp4")}), 403)
    openai_error(client.post("/tokenize", json={
        "model": "fake-model", "messages": messages, "earlytom": {"retain_ratio": 7}}), 400,
        "earlytom.retain_ratio")
    openai_error(client.post("/tokenize", json={
        "model": "fake-model", "prompt": "x", "earlytom": {"tau": 0.5}}), 400, "earlytom")
    openai_error(client.post("/tokenize", json={
        "model": "fake-model", "messages": messages, "media_io_kwargs": {}}), 400,
        "media_io_kwargs")
    png = "data:image/png;base64," + base64.b64encode(png_bytes()).decode()
    r = client.post("/tokenize", json={"model": "fake-model", "messages": [{
        "role": "user", "content": [{"type": "image_url", "image_url": {"url": png}}]}]})
    assert r.status_code == 200, r.text


def test_auth_covers_every_relayed_route(make_front, fake_backend):
    front = make_front(backends=[fake_backend.url], api_key="sekret")
    calls = [("POST", "/v1/completions", {"model": "fake-model", "prompt": "x"}),
             ("POST", "/tokenize", {"model": "fake-model", "prompt": "x"}),
             ("POST", "/detokenize", {"model": "fake-model", "tokens": [1]}),
             ("GET", "/version", None)]
    with httpx.Client(base_url=front.url, timeout=30) as c:
        for method, path, body in calls:
            err = openai_error(c.request(method, path, json=body), 401)
            assert err["code"] == "invalid_api_key"
            r = c.request(method, path, json=body, headers={"authorization": "Bearer sekret"})
            assert r.status_code == 200, (path, r.text)
        text = samples(c)
    assert 'earlytom_utility_requests_total{endpoint="tokenize",status="401"} 1.0' in text


def test_admission_limits_cover_completions(make_front, fake_backend):
    front = make_front(backends=[fake_backend.url], max_request_bytes=2048)
    with httpx.Client(base_url=front.url, timeout=30) as c:
        for path in ("/v1/completions", "/tokenize"):
            openai_error(c.post(path, json={"model": "fake-model", "prompt": "x" * 4096}), 413)


def test_no_backend_is_503(make_front):
    front = make_front(backends=["http://127.0.0.1:9"])
    with httpx.Client(base_url=front.url, timeout=30) as c:
        for method, path, body in (("POST", "/v1/completions", {"prompt": "x"}),
                                   ("POST", "/tokenize", {"prompt": "x"}),
                                   ("GET", "/version", None)):
            openai_error(c.request(method, path, json=body), 503)


def test_openai_client_completions(front):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{front.url}/v1", api_key="none", max_retries=0)
    out = client.completions.create(model="fake-model", prompt="Once", max_tokens=3)
    assert out.choices[0].text == "Hello world!"
    text = "".join(c.choices[0].text for c in client.completions.create(
        model="fake-model", prompt="Once", max_tokens=3, stream=True) if c.choices)
    assert text == "Hello world!"
