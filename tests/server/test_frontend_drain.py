"""Graceful drain: SIGTERM on ``earlytom-serve`` (run as a process, with a supervised fake vLLM
backend) lets the stream in flight finish, refuses new requests with 503 + Retry-After, stops the
backend and exits 0."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from frontend_fakes import free_port, group_members, health_ok, wait_for

HERE = Path(__file__).parent
FAKE = str(HERE / "frontend_fakes.py")


def start(tmp_path: Path, **settings) -> tuple[subprocess.Popen, str, Path]:
    port = free_port()
    kwargs = {"port": port, "health_interval": 0.2, "media_dir": str(tmp_path),
              "log_level": "info", **settings}
    code = (
        "import sys\n"
        "from earlytom_server.app import create_app\n"
        "from earlytom_server.cli import serve\n"
        "from earlytom_server.settings import Settings\n"
        f"settings = Settings(**{kwargs!r})\n"
        f"cmd = lambda p: [sys.executable, {FAKE!r}, '--port', str(p)]\n"
        "sys.exit(serve(settings, create_app(settings, command_factory=cmd)))\n"
    )
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=out,
                                stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    if not wait_for(lambda: health_ok(url), timeout=60):
        proc.kill()
        pytest.fail("earlytom-serve did not start:\n" + log.read_text()[-3000:])
    return proc, url, log


def chat(text: str, **extra) -> dict:
    return {"messages": [{"role": "user", "content": text}], "stream": True, **extra}


def stream_in_thread(url: str, text: str, got_first: threading.Event, out: dict) -> threading.Thread:
    def run() -> None:
        with httpx.Client(timeout=60) as c, c.stream(
                "POST", f"{url}/v1/chat/completions", json=chat(text),
                headers={"x-request-id": "drain-stream-1"}) as r:
            out["status"] = r.status_code
            events = []
            for line in r.iter_lines():
                if line.startswith("data: "):
                    events.append(line[6:])
                    got_first.set()
            out["events"] = events

    t = threading.Thread(target=run)
    t.start()
    return t


def test_sigterm_drains_streams_refuses_new_requests_and_exits_0(tmp_path):
    proc, url, log = start(tmp_path, drain_grace=30, retry_after=3)
    try:
        backend_pid = httpx.get(f"{url}/health").json()["supervisor"]["pid"]
        got_first, out = threading.Event(), {}
        t = stream_in_thread(url, "[medium]", got_first, out)  # ~2 s of chunks
        assert got_first.wait(20)
        t_term = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert wait_for(lambda: httpx.get(f"{url}/health", timeout=2).status_code == 503, 10)
        health = httpx.get(f"{url}/health", timeout=2)
        assert health.json()["status"] == "draining"
        r = httpx.post(f"{url}/v1/chat/completions", json=chat("hi", stream=False), timeout=10)
        assert r.status_code == 503 and r.headers["retry-after"] == "3"
        assert r.json()["error"]["code"] == "server_draining"
        assert r.headers["connection"] == "close"
        t.join(30)
        assert out["status"] == 200 and out["events"][-1] == "[DONE]"
        assert not any('"error"' in e for e in out["events"]), out["events"][-3:]
        assert len(out["events"]) > 30  # the whole answer
        assert proc.wait(timeout=30) == 0
        took = time.monotonic() - t_term
        assert wait_for(lambda: not group_members(backend_pid), 10), "backend left behind"
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert "SIGTERM: draining" in text and "drained in" in text
    assert "Traceback" not in text
    stream_lines = [ln for ln in text.splitlines() if "[drain-stream-1]" in ln]
    assert stream_lines and all("drain-stream-1" in ln for ln in stream_lines)
    assert any('"POST /v1/chat/completions" 200' in ln for ln in stream_lines)
    print(json.dumps({"sigterm_to_exit_s": round(took, 2)}))


def test_streams_past_the_grace_end_with_an_error_event(tmp_path):
    proc, url, log = start(tmp_path, drain_grace=0.5)
    try:
        got_first, out = threading.Event(), {}
        t = stream_in_thread(url, "[slow]", got_first, out)  # 30 s of chunks
        assert got_first.wait(20)
        proc.send_signal(signal.SIGTERM)
        t.join(30)
        assert out["events"][-1] == "[DONE]"
        assert json.loads(out["events"][-2])["error"]["code"] == "server_draining"
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "drain grace (0.5 s) over" in log.read_text()


def test_a_second_sigterm_stops_at_once(tmp_path):
    proc, url, _ = start(tmp_path, drain_grace=60)
    try:
        got_first, out = threading.Event(), {}
        t = stream_in_thread(url, "[slow]", got_first, out)
        assert got_first.wait(20)
        proc.send_signal(signal.SIGTERM)
        assert wait_for(lambda: httpx.get(f"{url}/health", timeout=2).status_code == 503, 10)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        assert time.monotonic() - t0 < 20
        t.join(30)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
