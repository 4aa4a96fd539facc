"""Routing and faults against fake backends: fewest-in-flight, health, retries, client
disconnects, backends dying mid-request."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest
from frontend_fakes import ServerThread, free_port, make_fake_backend, wait_for

HERE = Path(__file__).parent




def sse_payloads(text: str) -> list:
    out = []
    for block in text.split("\n\n"):
        block = block.strip()
        if block.startswith("data: "):
            payload = block[6:]
            out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


def chat(text: str, **extra) -> dict:
    return {"model": "fake-model", "messages": [{"role": "user", "content": text}], **extra}


@pytest.fixture
def two_backends():
    a = ServerThread(make_fake_backend()).start()
    b = ServerThread(make_fake_backend()).start()
    yield a, b
    a.stop()
    b.stop()


def test_fewest_in_flight_routing(make_front, two_backends):
    a, b = two_backends
    front = make_front(backends=[a.url, b.url])
    with httpx.Client(base_url=front.url, timeout=30) as c:
        # occupy one backend with a long stream ...
        with c.stream("POST", "/v1/chat/completions", json=chat("[slow]", stream=True)) as r:
            it = r.iter_lines()
            next(it)
            busy, idle = (a, b) if a.app.state.active else (b, a)
            assert busy.app.state.active == 1
            n_idle = len(idle.app.state.received)
            # ... then every new request goes to the other one
            for _ in range(4):
                assert c.post("/v1/chat/completions", json=chat("hi")).status_code == 200
            assert len(idle.app.state.received) == n_idle + 4
            assert len(busy.app.state.received) == 1
        # with equal load, ties rotate
        na, nb = len(a.app.state.received), len(b.app.state.received)
        for _ in range(4):
            assert c.post("/v1/chat/completions", json=chat("hi")).status_code == 200
        assert len(a.app.state.received) - na == 2
        assert len(b.app.state.received) - nb == 2


def test_concurrent_requests_spread_over_backends(make_front, two_backends):
    """Six requests all in flight at once (both backends hold them at a gate until all six have
    arrived) are routed three and three, whatever order they come in."""
    a, b = two_backends
    front = make_front(backends=[a.url, b.url])
    results = []

    def one():
        with httpx.Client(base_url=front.url, timeout=60) as c:
            results.append(c.post("/v1/chat/completions", json=chat("[gate]")).status_code)

    threads = [threading.Thread(target=one) for _ in range(6)]
    for t in threads:
        t.start()
    try:
        assert wait_for(lambda: a.app.state.gate.waiting + b.app.state.gate.waiting == 6,
                        timeout=30)
        # every routing decision saw all earlier requests still in flight
        assert (a.app.state.gate.waiting, b.app.state.gate.waiting) == (3, 3)
    finally:
        a.app.state.gate.open()
        b.app.state.gate.open()
        for t in threads:
            t.join()
    assert results == [200] * 6
    assert len(a.app.state.received) == 3
    assert len(b.app.state.received) == 3


def test_unhealthy_backend_is_skipped_and_health_follows(make_front, two_backends):
    a, b = two_backends
    front = make_front(backends=[a.url, b.url])
    with httpx.Client(base_url=front.url, timeout=30) as c:
        a.app.state.healthy = False
        assert wait_for(lambda: not front.front.pool.backends[0].healthy)
        n = len(a.app.state.received)
        for _ in range(3):
            assert c.post("/v1/chat/completions", json=chat("hi")).status_code == 200
        assert len(a.app.state.received) == n
        health = c.get("/health")
        assert health.status_code == 200
        assert [x["ready"] for x in health.json()["backends"]] == [False, True]
        b.app.state.healthy = False
        assert wait_for(lambda: c.get("/health").status_code == 503)
        r = c.post("/v1/chat/completions", json=chat("hi"))
        assert r.status_code == 503
        assert r.json()["error"]["code"] == "backend_unavailable"
        a.app.state.healthy = True
        assert wait_for(lambda: c.get("/health").status_code == 200)
        assert c.post("/v1/chat/completions", json=chat("hi")).status_code == 200
        up = [line for line in c.get("/metrics").text.splitlines()
              if line.startswith("earlytom_backend_up{")]
        assert sorted(line.rsplit(" ", 1)[1] for line in up) == ["0.0", "1.0"]


def test_unreachable_backend_is_retried_elsewhere(make_front, two_backends):
    a, b = two_backends
    front = make_front(backends=[a.url, b.url], health_interval=60)
    with httpx.Client(base_url=front.url, timeout=30) as c:
        a.stop()  # dies between two health checks: still marked ready
        for _ in range(3):
            r = c.post("/v1/chat/completions", json=chat("hi"))
            assert r.status_code == 200, r.text
        assert not front.front.pool.backends[0].healthy  # marked down by the failed connect


def test_client_disconnect_cancels_the_upstream_request(front, fake_backend):
    with httpx.Client(base_url=front.url, timeout=30) as c, \
            c.stream("POST", "/v1/chat/completions", json=chat("[slow]", stream=True)) as r:
        lines = r.iter_lines()
        got = [next(lines) for _ in range(3)]
        assert any(line.startswith("data: ") for line in got)
    # the client hung up after a few chunks of a 600-chunk stream
    assert wait_for(lambda: fake_backend.app.state.cancelled == 1)
    assert fake_backend.app.state.completed == 0
    assert wait_for(lambda: front.front.pool.backends[0].in_flight == 0)
    with httpx.Client(base_url=front.url) as c:
        text = c.get("/metrics").text
        assert 'earlytom_requests_total{method="earlytom",model_name="fake-model",status="499"} 1.0' \
            in text
        assert 'earlytom_requests_in_flight{model_name="fake-model"} 0.0' in text
        assert c.post("/v1/chat/completions", json=chat("hi")).status_code == 200


def test_client_disconnect_cancels_a_non_streaming_request(front, fake_backend):
    """The client hangs up once the backend is generating (not after a fixed client timeout, which
    on a loaded machine may fire before the request even reached the backend)."""
    body = json.dumps(chat("[sleep]")).encode()
    with socket.create_connection(("127.0.0.1", front.port)) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: test\r\n"
                     b"Content-Type: application/json\r\n"
                     b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        assert wait_for(lambda: fake_backend.app.state.sleeping == 1)
        assert fake_backend.app.state.cancelled == 0
    assert wait_for(lambda: fake_backend.app.state.cancelled == 1)
    assert wait_for(lambda: front.front.pool.backends[0].in_flight == 0)
    with httpx.Client(base_url=front.url, timeout=30) as c:
        # counted once the front end has finished with the request (it may still be unwinding)
        assert wait_for(lambda: 'status="499"} 1.0' in c.get("/metrics").text)
        assert c.post("/v1/chat/completions", json=chat("hi")).status_code == 200


def test_backend_breaking_mid_stream_gives_an_sse_error(front, fake_backend):
    with httpx.Client(base_url=front.url, timeout=30) as c:
        r = c.post("/v1/chat/completions", json=chat("[die]", stream=True))
        assert r.status_code == 200
        events = sse_payloads(r.text)
        assert events[-1] == "[DONE]"
        err = events[-2]["error"]
        assert err["code"] == "backend_error"
        assert set(err) == {"message", "type", "param", "code"}
        assert any(e != "[DONE]" and "choices" in e for e in events)  # partial output relayed
        text = c.get("/metrics").text
        assert 'status="502"} 1.0' in text
        # the (living) backend is back after the next health check
        assert wait_for(lambda: c.get("/health").status_code == 200)
        assert c.post("/v1/chat/completions", json=chat("hi")).status_code == 200


def test_backend_breaking_mid_body_gives_502(front):
    with httpx.Client(base_url=front.url, timeout=30) as c:
        r = c.post("/v1/chat/completions", json=chat("[die]"))
        assert r.status_code == 502
        assert r.json()["error"]["code"] == "backend_error"
        assert wait_for(lambda: c.get("/health").status_code == 200)
        assert c.post("/v1/chat/completions", json=chat("hi")).status_code == 200


@pytest.fixture
def backend_process():
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(HERE / "frontend_fakes.py"), "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    assert wait_for(lambda: _up(url), timeout=30)
    yield proc, url
    proc.kill()
    proc.wait()


def _up(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_backend_process_dying_mid_stream(make_front, backend_process):
    proc, url = backend_process
    front = make_front(backends=[url])
    with httpx.Client(base_url=front.url, timeout=30) as c:
        assert c.get("/health").status_code == 200
        r = c.post("/v1/chat/completions", json=chat("[exit]", stream=True))
        events = sse_payloads(r.text)
        assert events[-1] == "[DONE]"
        assert "error" in events[-2]
        assert proc.wait(timeout=10) == 3
        # /health turns unready at once, and stays so after the next health check (which finds
        # nothing listening; the stream's failure was recorded first)
        assert c.get("/health").status_code == 503
        backend = front.front.pool.backends[0]
        assert wait_for(lambda: "ConnectError" in (backend.last_error or ""), timeout=30)
        assert c.get("/health").status_code == 503
        r = c.post("/v1/chat/completions", json=chat("hi"))
        assert r.status_code == 503
        assert r.json()["error"]["code"] == "backend_unavailable"
