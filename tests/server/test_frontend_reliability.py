"""Hostile and careless input, faults and load limits, against fake backends (no engine).

Each class of input is a parametrized case: the front end answers a 4xx (never a 5xx) with an
OpenAI-style body naming the parameter where there is one, the request id in the header and the
body, and the next request on the SAME connection succeeds. docs/reliability.md counts these cases.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import socket
import threading
import time

import httpx
import pytest
from frontend_fakes import png_bytes, video_message, wait_for, write_mp4

from earlytom_server.guard import RequestIdFilter, request_id_from
from earlytom_server.prepare import MAX_JSON_DEPTH, MAX_JSON_ITEMS

CHAT = "/v1/chat/completions"
VPARAM = "messages[0].content[0].video_url.url"
IPARAM = "messages[0].content[0].image_url.url"


def ok_body(text: str = "hi", **extra) -> dict:
    return {"model": "fake-model", "messages": [{"role": "user", "content": text}], **extra}


def image_body(url: str) -> dict:
    return {"model": "fake-model", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": url}}]}]}


def video_body(url: str) -> dict:
    return {"model": "fake-model", "messages": video_message(url)}


def assert_openai_error(r: httpx.Response, status: int, param="any") -> dict:
    assert r.status_code == status, (r.status_code, r.text[:500])
    body = r.json()
    assert set(body) == {"error", "request_id"}, body
    assert set(body["error"]) == {"message", "type", "param", "code"}, body
    assert body["error"]["message"] and "Traceback" not in r.text
    assert body["request_id"] == r.headers["x-request-id"]
    if param != "any":
        assert body["error"]["param"] == param, body
    return body["error"]


def big_png(width: int, height: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (width, height)).save(buf, "PNG")  # compresses to a few KiB
    return buf.getvalue()


# -- hostile bodies -----------------------------------------------------------------------------------
# (name, raw body or JSON object, expected status, expected param or "any")
RAW_CASES = [
    ("deep JSON array", b"[" * 100_000 + b"]" * 100_000, 400, None),
    ("deep JSON inside a field", json.dumps(ok_body(foo=json.loads(
        "[" * (MAX_JSON_DEPTH + 5) + "]" * (MAX_JSON_DEPTH + 5)))).encode(), 400, None),
    ("NaN", b'{"messages": [{"role": "user", "content": "x"}], "top_k": NaN}', 400, None),
    ("Infinity", b'{"messages": [{"role": "user", "content": "x"}], "x": -Infinity}', 400, None),
    ("float overflow", b'{"messages": [{"role": "user", "content": "x"}], "x": 1e400}', 400,
     None),
    ("int with 5000 digits", b'{"messages": [], "x": ' + b"9" * 5000 + b"}", 400, None),
    ("lone surrogate", b'{"messages": [{"role": "user", "content": "a\\ud800b"}]}', 400,
     "messages[0].content"),
    ("item bomb", b'{"messages": [{"role": "user", "content": "x"}], "x": ['
     + b"{}," * (MAX_JSON_ITEMS + 10) + b"{}]}", 400, None),
    ("invalid UTF-8", b'{"messages": [{"role": "user", "content": "\xff\xfe"}]}', 400, None),
    ("UTF-8 BOM (decoded; then validated)", b"\xef\xbb\xbf{\"messages\": []}", 400, "messages"),
    ("not an object", b"[1, 2, 3]", 400, None),
    ("empty body", b"", 400, None),
    ("truncated JSON", b'{"messages": [{"role": "user", "content": "x"', 400, None),
]

OBJECT_CASES = [
    ("earlytom overflow", ok_body(earlytom={"retain_ratio": 10 ** 400}), 400, "any"),
    ("earlytom huge int", ok_body(earlytom={"prune_layers": [10 ** 30]}), 400, "any"),
    ("earlytom wrong type", ok_body(earlytom={"tau": {"a": 1}}), 400, "any"),
    ("file URL with NUL", video_body("file:///media/a%00b.mp4"), 400, VPARAM),
    ("file URL with invalid UTF-8", video_body("file:///media/%ff%fe.mp4"), 400, VPARAM),
    ("file URL bad IPv6 host", video_body("file://[::1/a.mp4"), 400, VPARAM),
    ("file URL very long", video_body("file:///" + "a" * 5000 + ".mp4"), 400, VPARAM),
    ("http host IDNA label too long", video_body("http://" + "a" * 70 + ".example/v.mp4"), 400,
     VPARAM),
    ("http host non-ASCII IDNA", video_body("http://xn--ls8h\u00e9.example/v.mp4"), 400, VPARAM),
    ("http bad IPv6 literal", video_body("http://[fe80::1%zz/v.mp4"), 400, VPARAM),
    ("http port out of range", video_body("http://example.com:99999/v.mp4"), 400, VPARAM),
    ("http port 65536 on an IP (found by the fuzzer)", video_body("http://1.0.0.0:65536/v.mp4"),
     400, VPARAM),
    ("http host bad punycode (found by the fuzzer)", video_body("http://XN--0/v.mp4"), 400,
     VPARAM),
    ("http site-local v6", video_body("http://[fec0::1]/v.mp4"), 403, VPARAM),
    ("http 192.0.0.0/24", video_body("http://192.0.0.1/v.mp4"), 403, VPARAM),
    ("http NAT64 loopback", video_body("http://[64:ff9b::7f00:1]/v.mp4"), 403, VPARAM),
    ("http v4-mapped loopback", video_body("http://[::ffff:127.0.0.1]/v.mp4"), 403, VPARAM),
    ("data URL odd mime", video_body("data:video/mp4\x00;base64,AAAA"), 400, VPARAM),
    ("data URL non-ASCII base64", video_body("data:video/mp4;base64,\u00e9\u00e9\u00e9\u00e9"),
     400, VPARAM),
    ("image too many pixels", image_body("data:image/png;base64,"
                                         + base64.b64encode(big_png(8000, 8000)).decode()),
     400, IPARAM),
    ("image truncated PNG", image_body("data:image/png;base64,"
                                       + base64.b64encode(png_bytes()[:40]).decode()), 400, IPARAM),
    ("image in an excluded format", image_body(
        "data:image/x-icon;base64," + base64.b64encode(b"\0\0\1\0\1\0" + b"\0" * 40).decode()),
     400, IPARAM),
    ("content part of an unknown type", {"messages": [{"role": "user", "content": [
        {"type": "image_embeds", "image_embeds": "AAAA"}]}]}, 400, "any"),
]


def _send_and_check(c: httpx.Client, raw: bytes, status: int, param) -> None:
    r = c.post(CHAT, content=raw, headers={"content-type": "application/json"})
    assert_openai_error(r, status, param)
    assert c.post(CHAT, json=ok_body()).status_code == 200


@pytest.mark.parametrize("name, raw, status, param", RAW_CASES, ids=[c[0] for c in RAW_CASES])
def test_hostile_bodies_are_4xx_and_the_connection_stays_usable(client, name, raw, status, param):
    _send_and_check(client, raw, status, param)


@pytest.mark.parametrize("name, body, status, param", OBJECT_CASES,
                         ids=[c[0] for c in OBJECT_CASES])
def test_hostile_fields_are_4xx_naming_the_parameter(client, fake_backend, name, body, status,
                                                     param):
    n = len(fake_backend.app.state.received)
    _send_and_check(client, json.dumps(body).encode(), status, param)
    assert len(fake_backend.app.state.received) == n + 1  # only the good request went through


def test_one_frame_mp4_is_forwarded_as_frames_the_engine_reads(client, fake_backend, tmp_path):
    data = write_mp4(tmp_path / "one.mp4", frames=1).read_bytes()
    r = client.post(CHAT, json=video_body("data:video/mp4;base64," + base64.b64encode(data)
                                          .decode()))
    assert r.status_code == 200, r.text
    sent = fake_backend.app.state.received[-1]["messages"][0]["content"][0]["video_url"]["url"]
    assert sent.startswith("data:video/jpeg;base64,") and "," not in sent.split(",", 1)[1]


# -- protocol-level limits ------------------------------------------------------------------------------


def raw_http(url: str, payload: bytes, *, read_until_close: bool = True, timeout: float = 10
             ) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(payload)
        chunks = []
        while True:
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            chunks.append(chunk)
            if not read_until_close:
                break
        return b"".join(chunks)


def test_too_many_headers_is_431(front):
    headers = "".join(f"x-h{i}: v\r\n" for i in range(150))
    out = raw_http(front.url, f"GET /health HTTP/1.1\r\nhost: x\r\n{headers}\r\n".encode())
    assert out.startswith(b"HTTP/1.1 431"), out[:200]
    assert b'"headers_too_large"' in out and b"x-request-id" in out


def test_headers_over_the_size_limit_are_431(front):
    out = raw_http(front.url, b"GET /health HTTP/1.1\r\nhost: x\r\nx-big: "
                   + b"a" * 20_000 + b"\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 431"), out[:200]
    assert json.loads(out.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "headers_too_large"


def test_malformed_request_line_is_an_openai_400(front):
    out = raw_http(front.url, b"GET /\xff HTTP/1.1\r\nhost: x\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 400"), out[:200]
    assert json.loads(out.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "invalid_http"


def test_slow_headers_are_cut_off(make_front, fake_backend):
    front = make_front(backends=[fake_backend.url], header_timeout=0.5)
    t0 = time.monotonic()
    host, port = front.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\n")  # ... and never the blank line
        out = s.recv(65536)
        assert out.startswith(b"HTTP/1.1 408"), out[:200]
        assert s.recv(65536) == b""  # closed
    assert time.monotonic() - t0 < 5
    with socket.create_connection((host, int(port)), timeout=10) as s:  # idle: just closed
        assert s.recv(65536) == b""


def test_slow_body_is_408(make_front, fake_backend):
    front = make_front(backends=[fake_backend.url], body_timeout=0.5)
    out = raw_http(front.url, b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"
                   b"content-type: application/json\r\ncontent-length: 100\r\n\r\n{\"mess")
    assert out.startswith(b"HTTP/1.1 408"), out[:200]
    assert b"connection: close" in out.lower()


def test_bad_content_length_is_400(front):
    out = raw_http(front.url, b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"
                   b"content-length: 1e3\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 400"), out[:200]


# -- unexpected exceptions ---------------------------------------------------------------------------


def two_requests_on_one_connection(url: str, first: bytes, second: bytes) -> list[bytes]:
    """Send two requests on ONE socket; the two raw responses."""
    host, port = url.removeprefix("http://").split(":")
    responses = []
    with socket.create_connection((host, int(port)), timeout=10) as s:
        f = s.makefile("rb")
        for payload in (first, second):
            s.sendall(payload)
            head = b""
            while not head.endswith(b"\r\n\r\n"):
                line = f.readline()
                assert line, f"connection closed; got {head!r}"
                head += line
            length = int(next(ln.split(b":")[1] for ln in head.split(b"\r\n")
                              if ln.lower().startswith(b"content-length")))
            responses.append(head + f.read(length))
    return responses


def post(body: dict) -> bytes:
    data = json.dumps(body).encode()
    return (b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json"
            b"\r\ncontent-length: %d\r\n\r\n" % len(data)) + data


def test_an_unexpected_error_is_a_normal_500_and_keeps_the_connection(front, monkeypatch):
    """A fault injected into the request path: the client gets an OpenAI-style 500 with the
    request id, and its next request on the same connection is answered."""
    real = front.front.resolve_model

    def faulty(requested):
        if requested == "boom":
            raise RuntimeError("injected fault")
        return real(requested)

    monkeypatch.setattr(front.front, "resolve_model", faulty)
    first, second = two_requests_on_one_connection(
        front.url, post({**ok_body(), "model": "boom"}), post(ok_body()))
    assert first.startswith(b"HTTP/1.1 500")
    body = json.loads(first.split(b"\r\n\r\n", 1)[1])
    assert body["error"]["code"] == "internal_error" and body["request_id"]
    assert b"injected fault" not in first and b"Traceback" not in first
    assert b"connection: close" not in first.lower()
    assert second.startswith(b"HTTP/1.1 200"), second[:300]


def test_an_unexpected_error_mid_stream_ends_the_stream_with_an_error_event(front, monkeypatch):
    from earlytom_server import proxy

    real = proxy.relay_sse

    async def faulty(*args, **kwargs):
        async for event in real(*args, **kwargs):
            yield event
            raise RuntimeError("injected fault mid-stream")

    monkeypatch.setattr("earlytom_server.relay.relay_sse", faulty)
    with httpx.Client(base_url=front.url, timeout=30) as c:
        r = c.post(CHAT, json=ok_body(stream=True))
        assert r.status_code == 200
        events = [b.removeprefix("data: ") for b in r.text.strip().split("\n\n")]
        assert events[-1] == "[DONE]"
        assert json.loads(events[-2])["error"]["code"] == "internal_error"
        assert c.post(CHAT, json=ok_body()).status_code == 200


# -- request ids ---------------------------------------------------------------------------------------


def test_request_id_is_kept_forwarded_and_returned(client, fake_backend):
    r = client.post(CHAT, json=ok_body(), headers={"x-request-id": "client-42.a:b"})
    assert r.status_code == 200 and r.headers["x-request-id"] == "client-42.a:b"
    assert fake_backend.app.state.headers[-1]["x-request-id"] == "client-42.a:b"
    r = client.post(CHAT, json=ok_body(), headers={"x-request-id": "bad id\x7f" + "x" * 200})
    generated = r.headers["x-request-id"]
    assert len(generated) == 32 and fake_backend.app.state.headers[-1]["x-request-id"] == generated
    err = assert_openai_error(client.post(CHAT, json={"messages": []},
                                          headers={"x-request-id": "e-1"}), 400)
    assert err["param"] == "messages"
    assert client.get("/health").headers["x-request-id"]


def test_client_request_id_in_the_body_is_not_forwarded(client, fake_backend):
    assert client.post(CHAT, json=ok_body(request_id="someone-else")).status_code == 200
    assert "request_id" not in fake_backend.app.state.received[-1]


def test_request_id_filter_and_parser():
    import logging

    from earlytom_server.errors import REQUEST_ID

    record = logging.LogRecord("x", logging.INFO, __file__, 1, "m", (), None)
    token = REQUEST_ID.set("rid-1")
    try:
        RequestIdFilter().filter(record)
    finally:
        REQUEST_ID.reset(token)
    assert record.request_id == "rid-1"
    assert request_id_from(b"abc") == "abc"
    assert request_id_from(b"\xff") != "\xff" and len(request_id_from(None)) == 32


# -- isolation -----------------------------------------------------------------------------------------


def test_client_multimodal_uuids_are_stripped(client, fake_backend, videos):
    url = "data:video/mp4;base64," + base64.b64encode(videos["good"].read_bytes()).decode()
    body = {"model": "fake-model", "messages": [{"role": "user", "content": [
        {"type": "video_url", "video_url": {"url": url}, "uuid": "victims-video"},
        {"type": "text", "text": "hi", "uuid": "x"}]}]}
    assert client.post(CHAT, json=body).status_code == 200
    for part in fake_backend.app.state.received[-1]["messages"][0]["content"]:
        assert "uuid" not in part


# -- relayed errors ------------------------------------------------------------------------------------


def test_relayed_vllm_validation_error_is_rewritten(client):
    err = assert_openai_error(client.post(CHAT, json=ok_body("[pydantic]")), 400, "top_k")
    assert err["message"] == ("top_k: Input should be a valid integer, unable to parse string "
                              "as an integer")
    assert err["type"] == "invalid_request_error" and err["code"] == "invalid_value"


def test_relayed_param_names_the_field_the_client_sent(client):
    err = assert_openai_error(client.post(CHAT, json=ok_body("[param]",
                                                             earlytom={"tau": 0.5})), 400)
    assert err["param"] == "earlytom.tau"
    err = assert_openai_error(client.post(CHAT, json=ok_body(
        "[param]", mm_processor_kwargs={"earlytom": {"tau": 0.5}})), 400)
    assert err["param"] == "mm_processor_kwargs.earlytom.tau"


def test_relayed_sse_error_event_is_rewritten(client):
    r = client.post(CHAT, json=ok_body("[sse-error]", stream=True),
                    headers={"x-request-id": "sse-1"})
    events = [b.removeprefix("data: ") for b in r.text.strip().split("\n\n")]
    assert events[-1] == "[DONE]"
    body = json.loads(events[-2])
    assert body == {"error": {"message": "the engine refused", "type": "invalid_request_error",
                              "param": None, "code": "invalid_request"}, "request_id": "sse-1"}
    assert 'status="400"' in client.get("/metrics").text


# -- load limits ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def one_stream_held(url: str):
    """A long stream through the front end at ``url``, holding its slot, until the block ends."""
    started, done = threading.Event(), threading.Event()

    def hold() -> None:
        with httpx.Client(base_url=url, timeout=30) as c, \
                c.stream("POST", CHAT, json=ok_body("[slow]", stream=True)) as r:
            for _ in r.iter_lines():
                started.set()
                if done.is_set():
                    break

    t = threading.Thread(target=hold)
    t.start()
    try:
        assert started.wait(10)
        yield
    finally:
        done.set()
        t.join(30)


def test_beyond_in_flight_and_queue_is_429_with_retry_after(make_front, fake_backend):
    front = make_front(backends=[fake_backend.url], max_in_flight=1, max_queued=0,
                       retry_after=7)
    with one_stream_held(front.url), httpx.Client(base_url=front.url, timeout=30) as c:
        r = c.post(CHAT, json=ok_body())
        assert_openai_error(r, 429)
        assert r.headers["retry-after"] == "7"
        assert r.json()["error"]["type"] == "rate_limit_error"
        text = c.get("/metrics").text
        assert 'earlytom_requests_rejected_total{reason="queue_full"} 1.0' in text
    with httpx.Client(base_url=front.url, timeout=30) as c:  # the slot is free again
        assert wait_for(lambda: front.front.admission.in_flight == 0)
        assert c.post(CHAT, json=ok_body()).status_code == 200


def test_queued_request_waits_then_times_out_or_runs(make_front, fake_backend):
    front = make_front(backends=[fake_backend.url], max_in_flight=1, max_queued=1,
                       queue_timeout=0.5)
    with one_stream_held(front.url), httpx.Client(base_url=front.url, timeout=30) as c:
        t0 = time.monotonic()
        r = c.post(CHAT, json=ok_body())
        assert_openai_error(r, 429)
        assert r.json()["error"]["message"].startswith("the server is busy: no capacity")
        assert time.monotonic() - t0 >= 0.4
        assert 'reason="queue_timeout"} 1.0' in c.get("/metrics").text
    # a queued request is admitted as soon as the slot frees (here: its holder hangs up)
    front2 = make_front(backends=[fake_backend.url], max_in_flight=1, max_queued=1,
                        queue_timeout=60)
    result = {}
    with httpx.Client(base_url=front2.url, timeout=30) as c1, \
            c1.stream("POST", CHAT, json=ok_body("[slow]", stream=True)) as r1:
        lines = r1.iter_lines()  # kept: a dropped line iterator closes the connection
        next(lines)
        t2 = threading.Thread(target=lambda: result.setdefault(
            "status", httpx.post(front2.url + CHAT, json=ok_body(), timeout=60).status_code))
        t2.start()
        assert wait_for(lambda: front2.front.admission.queued == 1)
    t2.join(60)
    assert result["status"] == 200


def test_body_byte_budget_queues_large_uploads(make_front, fake_backend):
    """Two bodies that do not fit the byte budget together are served one after the other."""
    front = make_front(backends=[fake_backend.url], max_request_bytes=300_000,
                       max_buffered_bytes=300_000, max_in_flight=8, queue_timeout=20)
    admission = front.front.admission
    peak = {"bytes": 0}
    real = admission._admit

    def spy(weight):
        ticket = real(weight)
        peak["bytes"] = max(peak["bytes"], admission.bytes)
        return ticket

    admission._admit = spy
    body = ok_body("x" * 200_000)
    results = []
    threads = [threading.Thread(target=lambda: results.append(
        httpx.post(front.url + CHAT, json=body, timeout=30).status_code)) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == [200, 200, 200]
    assert peak["bytes"] <= 300_000


def test_total_request_time_cap(make_front, fake_backend):
    front = make_front(backends=[fake_backend.url], max_request_seconds=0.5)
    with httpx.Client(base_url=front.url, timeout=30) as c:
        err = assert_openai_error(c.post(CHAT, json=ok_body("[sleep]")), 504)
        assert err["code"] == "request_timeout"
        r = c.post(CHAT, json=ok_body("[slow]", stream=True))
        events = [b.removeprefix("data: ") for b in r.text.strip().split("\n\n")]
        assert events[-1] == "[DONE]"
        assert json.loads(events[-2])["error"]["code"] == "request_timeout"
        assert len(events) < 100  # cut long before the 600-chunk answer ended
        assert c.post(CHAT, json=ok_body()).status_code == 200


# -- the schema ------------------------------------------------------------------------------------------


def test_openapi_is_served_by_default_unless_turned_off(make_front, fake_backend, front):
    with httpx.Client(base_url=front.url) as c:
        schema = c.get("/openapi.json").json()
    assert schema == json.loads(json.dumps(front.app.openapi()))
    body = schema["paths"][CHAT]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"] == {"$ref": "#/components/schemas/ChatCompletionRequest"}
    hidden = make_front(backends=[fake_backend.url], expose_openapi=False)
    with httpx.Client(base_url=hidden.url) as c:
        assert c.get("/openapi.json").status_code == 404
    assert "429" in schema["paths"][CHAT]["post"]["responses"]
