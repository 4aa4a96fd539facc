"""The front end over HTTP, against fake vLLM backends (no engine): relaying, the earlytom
extension, media rewriting, bad input, auth, metrics."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from frontend_fakes import PROMPT_TOKENS, jpeg_bytes, png_bytes, video_message, wait_for
from prometheus_client.parser import text_string_to_metric_families

ERROR_KEYS = {"message", "type", "param", "code"}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def data_video(path: Path) -> str:
    return "data:video/mp4;base64," + b64(path.read_bytes())


def assert_error(r: httpx.Response, status: int, param: str | None = "any") -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) >= {"error"}, body
    assert set(body["error"]) == ERROR_KEYS, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert "Traceback" not in r.text
    if param != "any":
        assert body["error"]["param"] == param, body
    return body["error"]


def sse_events(text: str) -> list[Any]:
    out = []
    for block in text.split("\n\n"):
        block = block.strip()
        if not block:
            continue
        assert block.startswith("data: "), block
        payload = block[len("data: "):]
        out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


def metrics(client: httpx.Client) -> dict[str, dict[tuple, float]]:
    r = client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    out: dict[str, dict[tuple, float]] = {}
    for fam in text_string_to_metric_families(r.text):
        for s in fam.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def good_request(client: httpx.Client, **extra: Any) -> httpx.Response:
    return client.post("/v1/chat/completions", json={
        "model": "fake-model", "messages": [{"role": "user", "content": "hi"}], **extra})


# -- relaying -----------------------------------------------------------------------------------------


def test_nonstreaming_chat_is_relayed(client, fake_backend, videos):
    url = data_video(videos["good"])
    r = client.post("/v1/chat/completions", json={
        "model": "fake-model", "messages": video_message(url), "max_tokens": 5,
        "temperature": 0.0, "top_k": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["choices"][0]["message"]["content"] == "Hello world!"
    assert body["usage"]["prompt_tokens"] == PROMPT_TOKENS
    sent = fake_backend.app.state.received[-1]
    assert sent["messages"][0]["content"][0]["video_url"]["url"] == url
    assert sent["top_k"] == 3  # unknown OpenAI/vLLM fields pass through
    assert "earlytom" not in sent and "mm_processor_kwargs" not in sent


def test_model_defaults_to_the_served_one(client, fake_backend):
    r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 200
    assert fake_backend.app.state.received[-1]["model"] == "fake-model"


def test_streaming_relays_sse_and_hides_usage_unless_asked(client, fake_backend):
    r = client.post("/v1/chat/completions", json={
        "model": "fake-model", "stream": True, "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    assert events[-1] == "[DONE]"
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-1])
    assert text == "Hello world!"
    assert all("usage" not in e for e in events[:-1])
    # ... while the backend was asked for usage (the front end counts tokens)
    assert fake_backend.app.state.received[-1]["stream_options"] == {"include_usage": True}


def test_streaming_usage_kept_when_requested(client):
    r = client.post("/v1/chat/completions", json={
        "model": "fake-model", "stream": True, "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": "hi"}]})
    events = sse_events(r.text)
    assert events[-1] == "[DONE]"
    assert events[-2]["usage"]["prompt_tokens"] == PROMPT_TOKENS
    assert events[-2]["choices"] == []


def test_models_and_health(client):
    r = client.get("/v1/models")
    assert r.status_code == 200
    assert [m["id"] for m in r.json()["data"]] == ["fake-model"]
    r = client.get("/health")
    assert r.status_code == 200
    assert r.json()["status"] == "ready"


def test_no_ready_backend_gives_503_everywhere(make_front):
    from frontend_fakes import free_port

    front = make_front(backends=[f"http://127.0.0.1:{free_port()}"])
    with httpx.Client(base_url=front.url) as c:
        assert_error(c.get("/health"), 503)
        assert_error(c.get("/v1/models"), 503)
        err = assert_error(good_request(c), 503)
        assert err["code"] == "backend_unavailable"


def test_backend_rejection_is_relayed(client):
    r = client.post("/v1/chat/completions", json={
        "model": "fake-model", "messages": [{"role": "user", "content": "[reject]"}]})
    err = assert_error(r, 400, "messages")
    assert err["message"] == "rejected by the fake backend"
    r = client.post("/v1/chat/completions", json={
        "model": "fake-model", "stream": True,
        "messages": [{"role": "user", "content": "[reject]"}]})
    assert_error(r, 400)
    assert good_request(client).status_code == 200


# -- the earlytom extension ---------------------------------------------------------------------------


def test_earlytom_settings_forwarded_as_mm_processor_kwargs(client, fake_backend):
    r = good_request(client, earlytom={"retain_ratio": 0.15})
    assert r.status_code == 200
    sent = fake_backend.app.state.received[-1]
    assert sent["mm_processor_kwargs"] == {"earlytom": {"retain_ratio": 0.15}}
    assert "earlytom" not in sent
    r = good_request(client, earlytom={"enabled": False})
    assert fake_backend.app.state.received[-1]["mm_processor_kwargs"] == {
        "earlytom": {"enabled": False}}
    # vLLM's own spelling is accepted too
    r = good_request(client, mm_processor_kwargs={"earlytom": {"retain_ratio": 0.3}})
    assert r.status_code == 200
    assert fake_backend.app.state.received[-1]["mm_processor_kwargs"] == {
        "earlytom": {"retain_ratio": 0.3}}


@pytest.mark.parametrize(("earlytom", "param"), [
    ({"retain_ratio": 0}, "earlytom.retain_ratio"),
    ({"retain_ratio": 1.5}, "earlytom.retain_ratio"),
    ({"retain_ratio": "high"}, "earlytom.retain_ratio"),
    ({"method": "magic"}, "earlytom.method"),
    ({"enabled": "yes"}, "earlytom.enabled"),
    ({"prune_layers": [5, 3]}, "earlytom.prune_layers"),
    ({"tau": -1}, "earlytom.tau"),
    ({"bogus": 1}, "earlytom.bogus"),
    ({"frames_as_video": "yes"}, "earlytom.frames_as_video"),
    ("fast", "earlytom"),
])
def test_invalid_earlytom_values_are_400_naming_the_field(client, earlytom, param):
    err = assert_error(good_request(client, earlytom=earlytom), 400, param)
    assert err["type"] == "invalid_request_error"
    assert good_request(client).status_code == 200


def test_frames_as_video_turns_image_parts_into_one_video(client, fake_backend):
    frames = [f"data:image/png;base64,{b64(png_bytes((i * 30, 0, 0)))}" for i in range(6)]
    content = [{"type": "image_url", "image_url": {"url": u}} for u in frames]
    content.append({"type": "text", "text": "What happens?"})
    r = client.post("/v1/chat/completions", json={
        "model": "fake-model", "messages": [{"role": "user", "content": content}],
        "earlytom": {"frames_as_video": True, "retain_ratio": 0.2}})
    assert r.status_code == 200, r.text
    sent = fake_backend.app.state.received[-1]
    parts = sent["messages"][0]["content"]
    assert [p["type"] for p in parts] == ["video_url", "text"]
    url = parts[0]["video_url"]["url"]
    assert url.startswith("data:video/jpeg;base64,")
    assert len(url.split(",")) == 1 + 6
    assert sent["mm_processor_kwargs"] == {"earlytom": {"retain_ratio": 0.2}}


def test_server_wide_frames_as_video_needs_no_request_field(make_front, fake_backend):
    """--frames-as-video: a plain OpenAI client (lmms-eval's openai_compatible) sends frames as
    image parts and nothing else; they reach vLLM as ONE compressed video. A request can still
    opt out with earlytom.frames_as_video = false."""
    front = make_front(backends=[fake_backend.url], frames_as_video=True)
    frames = [f"data:image/png;base64,{b64(png_bytes((i * 20, 9, 0)))}" for i in range(5)]
    content = [{"type": "image_url", "image_url": {"url": u}} for u in frames]
    content.append({"type": "text", "text": "Answer with the option's letter."})
    with httpx.Client(base_url=front.url) as c:
        r = c.post("/v1/chat/completions", json={
            "model": "fake-model", "messages": [{"role": "user", "content": content}]})
        assert r.status_code == 200, r.text
        sent = fake_backend.app.state.received[-1]
        parts = sent["messages"][0]["content"]
        assert [p["type"] for p in parts] == ["video_url", "text"]
        assert len(parts[0]["video_url"]["url"].split(",")) == 1 + 5
        assert "mm_processor_kwargs" not in sent  # nothing to forward: the switch is ours

        r = c.post("/v1/chat/completions", json={
            "model": "fake-model", "messages": [{"role": "user", "content": content[:1]}],
            "earlytom": {"frames_as_video": False}})
        assert r.status_code == 200, r.text
        parts = fake_backend.app.state.received[-1]["messages"][0]["content"]
        assert [p["type"] for p in parts] == ["image_url"]

        # the same bad-value check applies with the switch on
        assert_error(good_request(c, earlytom={"frames_as_video": 1}), 400,
                     "earlytom.frames_as_video")


def test_images_without_frames_as_video_stay_images(client, fake_backend):
    url = f"data:image/jpeg;base64,{b64(jpeg_bytes())}"
    r = client.post("/v1/chat/completions", json={"model": "fake-model", "messages": [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}]})
    assert r.status_code == 200
    assert fake_backend.app.state.received[-1]["messages"][0]["content"][0] == {
        "type": "image_url", "image_url": {"url": url}}


def test_file_url_forwarding(make_front, fake_backend, media_dir, videos):
    clip = media_dir / "clip.mp4"
    clip.write_bytes(videos["good"].read_bytes())
    req = {"model": "fake-model", "messages": video_message(f"file://{clip}")}
    # proxy mode: the backend may not share our disk -> data URL
    front = make_front(backends=[fake_backend.url])
    with httpx.Client(base_url=front.url) as c:
        assert c.post("/v1/chat/completions", json=req).status_code == 200
    url = fake_backend.app.state.received[-1]["messages"][0]["content"][0]["video_url"]["url"]
    assert url == data_video(clip)
    # a shared directory: forwarded as file:// (the backend's --allowed-local-media-path)
    front = make_front(backends=[fake_backend.url], backend_media_dir=media_dir)
    with httpx.Client(base_url=front.url) as c:
        assert c.post("/v1/chat/completions", json=req).status_code == 200
    url = fake_backend.app.state.received[-1]["messages"][0]["content"][0]["video_url"]["url"]
    assert url == f"file://{clip.resolve()}"


def test_remote_video_downloaded_by_the_front_end(make_front, fake_backend, videos):
    from fastapi import FastAPI
    from fastapi.responses import Response
    from frontend_fakes import ServerThread

    clip = videos["good"].read_bytes()
    media = FastAPI()
    media.get("/v.mp4")(lambda: Response(clip, media_type="video/mp4"))
    server = ServerThread(media).start()
    try:
        req = {"model": "fake-model", "messages": video_message(f"{server.url}/v.mp4")}
        front = make_front(backends=[fake_backend.url])
        with httpx.Client(base_url=front.url) as c:
            err = assert_error(c.post("/v1/chat/completions", json=req), 403)
            assert err["code"] == "url_not_allowed"
        front = make_front(backends=[fake_backend.url], allow_private_urls=True)
        with httpx.Client(base_url=front.url) as c:
            assert c.post("/v1/chat/completions", json=req).status_code == 200
        sent = fake_backend.app.state.received[-1]["messages"][0]["content"][0]
        assert sent["video_url"]["url"] == "data:video/mp4;base64," + b64(clip)
    finally:
        server.stop()


# -- bad input ----------------------------------------------------------------------------------------


def _bad_requests(videos: dict[str, Path], media_dir: Path, tmp: Path) -> list[tuple]:
    outside = tmp / "outside.mp4"
    outside.write_bytes(videos["good"].read_bytes())
    good_msgs = [{"role": "user", "content": "hi"}]

    def with_video(url: str) -> dict[str, Any]:
        return {"model": "fake-model", "messages": video_message(url)}

    vparam = "messages[0].content[0].video_url.url"
    return [
        ("malformed JSON", b'{"model": "fake-model", "messages": [', 400, None),
        ("not an object", b'[1, 2, 3]', 400, None),
        ("empty body", b"", 400, None),
        ("messages not a list", {"model": "fake-model", "messages": "hi"}, 400, "messages"),
        ("empty messages", {"model": "fake-model", "messages": []}, 400, "messages"),
        ("missing messages", {"model": "fake-model"}, 400, "messages"),
        ("bad role", {"messages": [{"role": "robot", "content": "x"}]}, 400,
         "messages[0].role"),
        ("content wrong type", {"messages": [{"role": "user", "content": 5}]}, 400,
         "messages[0].content"),
        ("unknown part type", {"messages": [{"role": "user", "content": [{"type": "audio"}]}]},
         400, "messages[0].content[0]"),
        ("video_url without url", {"messages": [{"role": "user", "content": [
            {"type": "video_url", "video_url": {}}]}]}, 400,
         "messages[0].content[0].video_url.url"),
        ("stream not bool", {"messages": good_msgs, "stream": "yes"}, 400, "stream"),
        ("max_tokens wrong type", {"messages": good_msgs, "max_tokens": "many"}, 400,
         "max_tokens"),
        ("temperature negative", {"messages": good_msgs, "temperature": -1}, 400, "temperature"),
        ("model wrong type", {"messages": good_msgs, "model": 7}, 400, "model"),
        ("unknown model", {"messages": good_msgs, "model": "gpt-5"}, 404, "model"),
        ("media_io_kwargs", {"messages": good_msgs, "media_io_kwargs": {"video": {
            "num_frames": -1}}}, 400, "media_io_kwargs"),
        ("mm_processor_kwargs other key", {"messages": good_msgs, "mm_processor_kwargs": {
            "num_frames": 3}}, 400, "mm_processor_kwargs.num_frames"),
        ("invalid earlytom", {"messages": good_msgs, "earlytom": {"retain_ratio": 7}}, 400,
         "earlytom.retain_ratio"),
        ("not a video", with_video("data:video/mp4;base64," + b64(b"hello" * 100)), 400, vparam),
        ("truncated mp4", with_video(data_video(videos["truncated"])), 400, vparam),
        ("corrupt mp4 tail", with_video(data_video(videos["cut_tail"])), 400, vparam),
        ("invalid base64", with_video("data:video/mp4;base64,!!!!"), 400, vparam),
        ("image mime as video", with_video("data:image/png;base64," + b64(png_bytes())), 400,
         vparam),
        ("non-base64 data URL", with_video("data:video/mp4,abc"), 400, vparam),
        ("video over size limit", with_video(data_video(videos["long"])), 400, vparam),
        ("file outside media dir", with_video(f"file://{outside}"), 403, vparam),
        ("file dotdot escape", with_video(f"file://{media_dir}/../outside.mp4"), 403, vparam),
        ("loopback URL", with_video("http://127.0.0.1:1/v.mp4"), 403, vparam),
        ("localhost URL", with_video("http://localhost/v.mp4"), 403, vparam),
        ("link-local URL", with_video("http://169.254.169.254/latest/meta-data/"), 403, vparam),
        ("private URL", with_video("http://10.0.0.1/v.mp4"), 403, vparam),
        ("private URL v6", with_video("http://[fd00::1]/v.mp4"), 403, vparam),
        ("ftp URL", with_video("ftp://example.com/v.mp4"), 400, vparam),
        ("bad image", {"messages": [{"role": "user", "content": [{"type": "image_url",
            "image_url": {"url": "data:image/png;base64," + b64(b"nope")}}]}]}, 400,
         "messages[0].content[0].image_url.url"),
    ]


def test_bad_input_gives_openai_errors_and_the_server_keeps_serving(
        make_front, fake_backend, videos, media_dir, tmp_path):
    # "long" (40 frames) is over the size limit here; the frame-limit case uses a separate front
    size = len(videos["long"].read_bytes()) - 1
    front = make_front(backends=[fake_backend.url], max_video_bytes=size)
    cases = _bad_requests(videos, media_dir, tmp_path)
    n_before = len(fake_backend.app.state.received)
    with httpx.Client(base_url=front.url, timeout=30) as c:
        for name, body, status, param in cases:
            if isinstance(body, bytes):
                r = c.post("/v1/chat/completions", content=body,
                           headers={"content-type": "application/json"})
            else:
                r = c.post("/v1/chat/completions", json=body)
            try:
                assert_error(r, status, param)
            except AssertionError as exc:
                raise AssertionError(f"case {name!r}: {exc}") from None
            assert good_request(c).status_code == 200, name
    # none of the bad requests reached the backend
    assert len(fake_backend.app.state.received) == n_before + len(cases)
    front = make_front(backends=[fake_backend.url], max_video_frames=39)
    with httpx.Client(base_url=front.url, timeout=30) as c:
        body = {"model": "fake-model", "messages": video_message(data_video(videos["long"]))}
        err = assert_error(c.post("/v1/chat/completions", json=body), 400,
                           "messages[0].content[0].video_url.url")
        assert err["code"] == "too_many_frames"


def test_request_body_limit(make_front, fake_backend):
    front = make_front(backends=[fake_backend.url], max_request_bytes=1000)
    with httpx.Client(base_url=front.url) as c:
        r = c.post("/v1/chat/completions", json={
            "messages": [{"role": "user", "content": "x" * 2000}]})
        assert_error(r, 413)
        assert good_request(c).status_code == 200


def test_unknown_routes_and_methods_are_openai_errors(client):
    assert_error(client.get("/v1/nothing"), 404)
    assert_error(client.get("/v1/chat/completions"), 405)


# -- auth ---------------------------------------------------------------------------------------------


def test_api_key_required_on_v1_only(make_front, fake_backend):
    front = make_front(backends=[fake_backend.url], api_key="s3cret")
    with httpx.Client(base_url=front.url) as c:
        for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": "s3cret"},
                        {"authorization": "Basic s3cret"}):
            r = c.post("/v1/chat/completions", headers=headers,
                       json={"messages": [{"role": "user", "content": "hi"}]})
            err = assert_error(r, 401)
            assert err["code"] == "invalid_api_key"
            assert r.headers["www-authenticate"] == "Bearer"
            assert_error(c.get("/v1/models", headers=headers), 401)
        ok = {"authorization": "Bearer s3cret"}
        assert c.get("/v1/models", headers=ok).status_code == 200
        assert c.post("/v1/chat/completions", headers=ok, json={
            "messages": [{"role": "user", "content": "hi"}]}).status_code == 200
        health = c.get("/health")
        assert health.status_code == 200
        assert health.json() == {"status": "ready"}  # no backend details without the key
        assert "backends" in c.get("/health", headers=ok).json()
        assert c.get("/metrics").status_code == 200


def test_api_key_on_health_and_metrics_when_configured(make_front, fake_backend):
    front = make_front(backends=[fake_backend.url], api_key="k",
                       protect_health_metrics=True)
    with httpx.Client(base_url=front.url) as c:
        assert_error(c.get("/health"), 401)
        assert_error(c.get("/metrics"), 401)
        ok = {"authorization": "Bearer k"}
        assert c.get("/health", headers=ok).status_code == 200
        assert c.get("/metrics", headers=ok).status_code == 200


def test_openai_client_works_with_auth(make_front, fake_backend):
    import openai

    front = make_front(backends=[fake_backend.url], api_key="k")
    good = openai.OpenAI(base_url=f"{front.url}/v1", api_key="k", max_retries=0)
    out = good.chat.completions.create(model="fake-model",
                                       messages=[{"role": "user", "content": "hi"}])
    assert out.choices[0].message.content == "Hello world!"
    bad = openai.OpenAI(base_url=f"{front.url}/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model="fake-model",
                                    messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError) as err:
        good.chat.completions.create(model="fake-model", messages=[
            {"role": "user", "content": "hi"}], extra_body={"earlytom": {"retain_ratio": 2}})
    assert err.value.body["param"] == "earlytom.retain_ratio"


# -- metrics ------------------------------------------------------------------------------------------


def test_metrics_names_types_and_values(client, videos):
    url = data_video(videos["good"])  # 8 frames
    client.post("/v1/chat/completions", json={"model": "fake-model",
                                              "messages": video_message(url)})
    client.post("/v1/chat/completions", json={"model": "fake-model", "stream": True,
                                              "messages": video_message(url),
                                              "earlytom": {"retain_ratio": 0.5}})
    client.post("/v1/chat/completions", json={"model": "fake-model",
                                              "messages": video_message(url),
                                              "earlytom": {"enabled": False}})
    client.post("/v1/chat/completions", json={"model": "fake-model", "messages": []})
    r = client.get("/metrics")
    types = {f.name: f.type for f in text_string_to_metric_families(r.text)}
    assert types["earlytom_time_to_first_token_seconds"] == "histogram"
    assert types["earlytom_request_duration_seconds"] == "histogram"
    for name in ("earlytom_output_tokens", "earlytom_prompt_tokens", "earlytom_requests"):
        assert types[name] == "counter", name
    # Visual tokens are counted by the engine's processor (vLLM's /metrics), not guessed here.
    assert not any(name.startswith("earlytom_visual_tokens") for name in types)
    assert types["earlytom_requests_in_flight"] == "gauge"
    assert types["earlytom_backend_up"] == "gauge"

    m = metrics(client)
    et = (("method", "earlytom"), ("model_name", "fake-model"))
    none = (("method", "none"), ("model_name", "fake-model"))
    assert m["earlytom_requests_total"][(*et, ("status", "200"))] == 2
    assert m["earlytom_requests_total"][(*none, ("status", "200"))] == 1
    assert m["earlytom_requests_total"][(*et, ("status", "400"))] == 1
    assert m["earlytom_prompt_tokens_total"][et] == 2 * PROMPT_TOKENS
    assert m["earlytom_output_tokens_total"][et] == 2 * 3
    # TTFT for the streamed request only; the non-streamed one has its own latency histogram
    assert m["earlytom_time_to_first_token_seconds_count"][et] == 1
    assert m["earlytom_non_streaming_request_latency_seconds_count"][et] == 1
    assert m["earlytom_e2e_request_latency_seconds_count"][et] == 2
    assert m["earlytom_request_duration_seconds_count"][et] == 2
    assert m["earlytom_e2e_request_latency_seconds_count"][none] == 1
    assert m["earlytom_requests_in_flight"][(("model_name", "fake-model"),)] == 0
    (backend_up,) = m["earlytom_backend_up"].values()
    assert backend_up == 1
    buckets = [dict(k)["le"] for k in m["earlytom_time_to_first_token_seconds_bucket"]
               if dict(k)["method"] == "earlytom"]
    assert "0.001" in buckets and "2560.0" in buckets  # vLLM's TTFT range
    from earlytom_server.metrics import TTFT_BUCKETS

    assert [float(b) for b in buckets if b != "+Inf"] == list(TTFT_BUCKETS)
    (build,) = m["earlytom_build_info"]
    assert dict(build)["version"] and dict(build)["vllm_version"]
    assert m["process_resident_memory_bytes"][()] > 0


def test_each_app_has_its_own_registry(make_front, fake_backend):
    a = make_front(backends=[fake_backend.url])
    b = make_front(backends=[fake_backend.url])
    with httpx.Client(base_url=a.url) as ca, httpx.Client(base_url=b.url) as cb:
        good_request(ca)
        ma, mb = metrics(ca), metrics(cb)
    key = (("method", "earlytom"), ("model_name", "fake-model"), ("status", "200"))
    assert ma["earlytom_requests_total"][key] == 1
    assert key not in mb.get("earlytom_requests_total", {})


def test_ttft_measured_at_first_content_chunk(client, fake_backend):
    """The backend holds the stream (at its gate) after the role-only chunk and again after the
    first content chunk: TTFT is observed exactly when the first CONTENT chunk is relayed, while
    the request is still in flight, and the duration only when the stream ends."""
    et = (("method", "earlytom"), ("model_name", "fake-model"))
    gate = fake_backend.app.state.gate

    def observed(name: str) -> float:
        return metrics(client).get(name, {}).get(et, 0.0)

    with client.stream("POST", "/v1/chat/completions", json={
            "model": "fake-model", "stream": True,
            "messages": [{"role": "user", "content": "[gate]"}]}) as r:
        events = (json.loads(line[6:]) for line in r.iter_lines()
                  if line.startswith("data: {"))
        assert next(events)["choices"][0]["delta"] == {"role": "assistant", "content": ""}
        assert wait_for(lambda: gate.waiting == 1)  # held before any content
        assert observed("earlytom_time_to_first_token_seconds_count") == 0
        gate.let(1)
        assert next(events)["choices"][0]["delta"] == {"content": "Hello"}
        assert wait_for(lambda: gate.waiting == 1)  # held again, mid-stream
        assert observed("earlytom_time_to_first_token_seconds_count") == 1
        assert observed("earlytom_request_duration_seconds_count") == 0
        gate.open()
        assert [e["choices"][0]["delta"].get("content") for e in events][:2] == [" world", "!"]
    assert observed("earlytom_request_duration_seconds_count") == 1
    ttft = observed("earlytom_time_to_first_token_seconds_sum")
    assert 0 < ttft < observed("earlytom_request_duration_seconds_sum")


def test_fastapi_validation_errors_use_the_openai_shape(front):
    # a route with FastAPI-validated parameters, added to the real app
    from fastapi import Query

    app = front.app

    @app.get("/v1/_typed")
    async def typed(n: int = Query(...)) -> dict:
        return {"n": n}

    with httpx.Client(base_url=front.url) as c:
        assert c.get("/v1/_typed", params={"n": 3}).json() == {"n": 3}
        err = assert_error(c.get("/v1/_typed", params={"n": "x"}), 400, "n")
        assert err["code"] == "invalid_value"
        assert_error(c.get("/v1/_typed"), 400, "n")
