"""Test helpers: a fake vLLM OpenAI server, a thread-hosted uvicorn, mp4 writers.

The fake backend mimics what the front end uses of vLLM: ``/health``, ``/v1/models``,
``/v1/chat/completions`` (JSON and SSE, usage chunk when ``stream_options.include_usage``) and
``/metrics``. Its behaviour is driven by markers in the last user text:

- ``[reject]``  -> HTTP 400 in vLLM's error shape
- ``[slow]``    -> a long stream, one chunk every 50 ms (records cancellation)
- ``[gate]``    -> waits at ``app.state.gate`` (a :class:`Gate`) until the test lets it pass: a
  non-streamed answer waits once, before it starts; a stream waits before its first content chunk
  and again right after it. ``gate.waiting`` counts the requests waiting there, so a test can wait
  for the state it needs (e.g. every request in flight at once) instead of hoping a sleep is long
  enough.
- ``[sleep]``   -> non-streaming: the body comes after 10 s (``sleeping`` counts the bodies that
  started; records cancellation)
- ``[die]``     -> the connection breaks after the first content chunk (or mid-body)
- ``[exit]``    -> the whole process exits after the first chunk (subprocess mode only)
- ``[badjson]`` -> HTTP 200 whose body (or, streamed, one event) is not JSON
- ``[html500]`` -> HTTP 500 with an HTML page as the body
- ``[medium]``  -> a stream of 39 chunks, one every 50 ms (~2 s)
- ``[sse-error]`` -> streaming: one chunk, then vLLM's error event (code 400) and ``[DONE]``
- ``[param]``   -> HTTP 400 naming ``mm_processor_kwargs.earlytom.tau`` (as the processor does)
- ``[pydantic]`` -> HTTP 400 with vLLM 0.32's raw validation-error message (a pydantic dump)

``app.state.headers`` keeps each chat request's headers (lower-cased names), in order.

Run as a script (``python frontend_fakes.py --port P [--model NAME]``) for a separate process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse

PROMPT_TOKENS = 42
GATE_TIMEOUT = 60.0  # a request at a gate the test never opens goes on after this


def _last_text(body: dict[str, Any]) -> str:
    for message in reversed(body.get("messages") or []):
        content = message.get("content")
        if isinstance(content, str):
            return content
        if isinstance(content, list):
            texts = [p.get("text", "") for p in content if p.get("type") == "text"]
            if texts:
                return " ".join(texts)
    return ""


def make_fake_backend(model: str = "fake-model", words: tuple[str, ...] = ("Hello", " world", "!"),
                      root: str | None = None) -> FastAPI:
    """``root``: the checkpoint ``/v1/models`` names, as vLLM does (unset: none)."""
    app = FastAPI()
    app.state.received = []  # request bodies, in order
    app.state.headers = []  # their headers
    app.state.cancelled = 0  # streams that ended early because the client went away
    app.state.completed = 0
    app.state.healthy = True
    app.state.active = 0
    app.state.max_active = 0
    app.state.gate = Gate()
    app.state.sleeping = 0  # [sleep] bodies that started

    @app.get("/health")
    async def health() -> Any:
        if not app.state.healthy:
            return PlainTextResponse("down", status_code=503)
        return PlainTextResponse("")

    @app.get("/v1/models")
    async def models() -> Any:
        card = {"id": model, "object": "model", "owned_by": "fake", "max_model_len": 4096}
        return {"object": "list", "data": [{**card, "root": root} if root else card]}

    @app.get("/metrics")
    async def metrics() -> Any:
        return PlainTextResponse("vllm:num_requests_running 0\n")

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        body = await request.json()
        app.state.received.append(body)
        app.state.headers.append(dict(request.headers))
        text = _last_text(body)
        if "[param]" in text:
            return JSONResponse({"error": {"message": "tau is out of range", "param":
                                           "mm_processor_kwargs.earlytom.tau",
                                           "type": "BadRequestError", "code": 400}},
                                status_code=400)
        if "[pydantic]" in text:
            message = ("1 validation error:\n  {'type': 'int_parsing', 'loc': ('body', 'top_k'), "
                       "'msg': 'Input should be a valid integer, unable to parse string as an "
                       "integer', 'input': 'x'}")
            return JSONResponse({"error": {"message": message, "type": "Bad Request",
                                           "param": "body.top_k", "code": 400}},
                                status_code=400)
        if "[reject]" in text:
            return JSONResponse({"error": {"message": "rejected by the fake backend",
                                           "type": "BadRequestError", "param": "messages",
                                           "code": 400}}, status_code=400)
        if "[html500]" in text:
            return PlainTextResponse("<html><body><h1>500 Internal Server Error</h1></body></html>",
                                     status_code=500, media_type="text/html")
        rid = f"chatcmpl-{len(app.state.received)}"
        created = int(time.time())
        n_out = len(words)
        usage = {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": n_out,
                 "total_tokens": PROMPT_TOKENS + n_out}

        if not body.get("stream"):
            if "[gate]" in text:
                await app.state.gate.wait()
            if "[badjson]" in text:
                return PlainTextResponse('{"id": "' + rid + '", "choices": [', status_code=200,
                                         media_type="application/json")
            if "[sleep]" in text:  # a long non-streamed generation (records cancellation)
                async def sleepy() -> Any:
                    app.state.sleeping += 1
                    try:
                        await asyncio.sleep(10)
                        yield json.dumps({"id": rid, "choices": []}).encode()
                    finally:
                        app.state.cancelled += 1
                return StreamingResponse(sleepy(), media_type="application/json")
            if "[die]" in text:
                async def broken() -> Any:
                    yield b'{"id": "' + rid.encode() + b'", "choi'
                    raise RuntimeError("fake backend dies mid-body")
                return StreamingResponse(broken(), media_type="application/json")
            app.state.completed += 1
            return {
                "id": rid, "object": "chat.completion", "created": created, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant",
                                                      "content": "".join(words)},
                             "finish_reason": "stop"}],
                "usage": usage,
            }

        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        slow = "[slow]" in text or "[medium]" in text
        pieces = list(words) * (200 if "[slow]" in text else 13 if "[medium]" in text else 1)

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            data = {"id": rid, "object": "chat.completion.chunk", "created": created,
                    "model": model, "choices": [{"index": 0, "delta": delta,
                                                 "finish_reason": finish}]}
            return f"data: {json.dumps(data)}\n\n".encode()

        async def events() -> Any:
            app.state.active += 1
            app.state.max_active = max(app.state.max_active, app.state.active)
            finished = False
            try:
                yield chunk({"role": "assistant", "content": ""})
                for i, piece in enumerate(pieces):
                    if slow:
                        await asyncio.sleep(0.05)
                    if i == 0 and "[gate]" in text:
                        await app.state.gate.wait()
                    yield chunk({"content": piece})
                    if i == 0 and "[gate]" in text:
                        await app.state.gate.wait()
                    if i == 0 and "[badjson]" in text:
                        yield b"data: {this is not json\n\n"
                    if i == 0 and "[sse-error]" in text:
                        err = {"error": {"object": "error", "message": "the engine refused",
                                         "type": "BadRequestError", "param": None, "code": 400}}
                        yield f"data: {json.dumps(err)}\n\n".encode() + b"data: [DONE]\n\n"
                        finished = True
                        return
                    if i == 0 and "[die]" in text:
                        raise RuntimeError("fake backend dies mid-stream")
                    if i == 0 and "[exit]" in text:
                        await asyncio.sleep(0.05)
                        os._exit(3)
                yield chunk({}, "stop")
                if include_usage:
                    data = {"id": rid, "object": "chat.completion.chunk", "created": created,
                            "model": model, "choices": [], "usage": usage}
                    yield f"data: {json.dumps(data)}\n\n".encode()
                yield b"data: [DONE]\n\n"
                finished = True
                app.state.completed += 1
            finally:
                app.state.active -= 1
                if not finished:
                    app.state.cancelled += 1

        return StreamingResponse(events(), media_type="text/event-stream")

    add_fake_relay_routes(app, model, words)
    return app


def add_fake_relay_routes(app: FastAPI, model: str, words: tuple[str, ...]) -> None:
    """vLLM's other OpenAI routes, as the front end relays them: ``/v1/completions`` (JSON and
    SSE; ``[reject]`` in the prompt -> HTTP 400), ``/tokenize`` (one token per character of the
    prompt, or per message part), ``/detokenize`` and ``/version``. Bodies are kept in
    ``app.state.relayed`` as (path, body)."""
    app.state.relayed = []

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        body = await request.json()
        app.state.relayed.append(("/v1/completions", body))
        prompt = body.get("prompt")
        if "[reject]" in str(prompt):
            return JSONResponse({"error": {"message": "rejected by the fake backend",
                                           "type": "BadRequestError", "param": "prompt",
                                           "code": 400}}, status_code=400)
        rid = f"cmpl-{len(app.state.relayed)}"
        created = int(time.time())
        usage = {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": len(words),
                 "total_tokens": PROMPT_TOKENS + len(words)}
        if not body.get("stream"):
            return {"id": rid, "object": "text_completion", "created": created, "model": model,
                    "choices": [{"index": 0, "text": "".join(words), "finish_reason": "stop",
                                 "logprobs": None}], "usage": usage}
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        def chunk(text: str, finish: str | None = None) -> bytes:
            data = {"id": rid, "object": "text_completion", "created": created, "model": model,
                    "choices": [{"index": 0, "text": text, "finish_reason": finish,
                                 "logprobs": None}]}
            return f"data: {json.dumps(data)}\n\n".encode()

        async def events() -> Any:
            for piece in words:
                await asyncio.sleep(0.01)
                yield chunk(piece)
            yield chunk("", "stop")
            if include_usage:
                data = {"id": rid, "object": "text_completion", "created": created,
                        "model": model, "choices": [], "usage": usage}
                yield f"data: {json.dumps(data)}\n\n".encode()
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.post("/tokenize")
    async def tokenize(request: Request) -> Any:
        body = await request.json()
        app.state.relayed.append(("/tokenize", body))
        messages, prompt = body.get("messages"), body.get("prompt")
        if isinstance(messages, list):
            n = sum(len(m["content"]) if isinstance(m.get("content"), list) else 1
                    for m in messages)
        elif isinstance(prompt, str):
            n = len(prompt)
        else:  # vLLM's own answer to a body that is neither form
            return JSONResponse({"error": {"message": "prompt: Field required",
                                           "type": "BadRequestError", "param": "prompt",
                                           "code": 400}}, status_code=400)
        return {"count": n, "max_model_len": 4096, "tokens": list(range(n))}

    @app.post("/detokenize")
    async def detokenize(request: Request) -> Any:
        body = await request.json()
        app.state.relayed.append(("/detokenize", body))
        tokens = body.get("tokens")
        if not isinstance(tokens, list) or not all(isinstance(t, int) for t in tokens):
            return JSONResponse({"error": {"message": "tokens: Field required",
                                           "type": "BadRequestError", "param": "tokens",
                                           "code": 400}}, status_code=400)
        return {"prompt": "".join(chr(97 + t % 26) for t in tokens)}

    @app.get("/version")
    async def version() -> Any:
        return {"version": "0.32.0"}


class Gate:
    """Where ``[gate]`` requests wait: ``let(n)`` lets n waits pass, ``open()`` all from now on.
    A wait the test never releases goes on after ``GATE_TIMEOUT`` (a failing test must not hang
    the run)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open = False
        self._passes = 0
        self.waiting = 0  # requests waiting now
        self.passed = 0  # waits that ended

    def open(self) -> None:
        with self._lock:
            self._open = True

    def let(self, n: int = 1) -> None:
        with self._lock:
            self._passes += n

    def _try_pass(self) -> bool:
        with self._lock:
            if self._open:
                return True
            if self._passes:
                self._passes -= 1
                return True
            return False

    async def wait(self) -> None:
        self.waiting += 1
        try:
            deadline = time.monotonic() + GATE_TIMEOUT
            while not self._try_pass() and time.monotonic() < deadline:
                await asyncio.sleep(0.005)
        finally:
            self.waiting -= 1
            self.passed += 1


class ServerThread:
    """A uvicorn server for ``app`` on 127.0.0.1 (random port) in a daemon thread; ``config``:
    a ``uvicorn.Config`` for it (default: plain uvicorn, as the fake backends use)."""

    def __init__(self, app: Any, *, port: int = 0, config: Any = None) -> None:
        self.app = app
        # IPPROTO_TCP: asyncio sets TCP_NODELAY only then (else ~40 ms per response)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        if config is None:
            config = uvicorn.Config(app, log_level="warning", lifespan="on",
                                    timeout_graceful_shutdown=1)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.run(self.server.serve(sockets=[self.sock]))

    def start(self, timeout: float = 30.0) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("server thread did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


def wait_for(predicate, timeout: float = 20.0, interval: float = 0.05) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds pass; its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def health_ok(url: str) -> bool:
    """``GET {url}/health`` answers 200 (False while it cannot be reached)."""
    import httpx

    try:
        return httpx.get(f"{url}/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of process group ``pgid``, from /proc."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().split(")")[-1].split()  # state, ppid, pgrp, ...
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                found.append(int(entry))
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_mp4(path: Path, frames: int = 8, size: tuple[int, int] = (64, 48), fps: int = 8
              ) -> Path:
    """An mp4 (mp4v) with ``frames`` distinct frames; verified readable with OpenCV."""
    import cv2
    import numpy as np

    width, height = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    assert writer.isOpened(), "cv2 cannot write mp4v here"
    for i in range(frames):
        img = np.zeros((height, width, 3), np.uint8)
        img[:, :] = ((i * 37) % 256, (i * 91) % 256, (i * 53) % 256)
        x = (i * 5) % max(1, width - 8)
        img[10:20, x:x + 8] = 255
        writer.write(img)
    writer.release()
    cap = cv2.VideoCapture(str(path))
    count = 0
    while cap.read()[0]:
        count += 1
    cap.release()
    assert count == frames, f"wrote {frames} frames, read back {count}"
    return path


def video_message(url: str, text: str = "Describe the video.") -> list[dict[str, Any]]:
    return [{"role": "user", "content": [
        {"type": "video_url", "video_url": {"url": url}},
        {"type": "text", "text": text},
    ]}]


def png_bytes(color: tuple[int, int, int] = (10, 200, 30), size: tuple[int, int] = (32, 24)
              ) -> bytes:
    import cv2
    import numpy as np

    img = np.zeros((size[1], size[0], 3), np.uint8)
    img[:, :] = color
    ok, buf = cv2.imencode(".png", img)
    assert ok
    return buf.tobytes()


def jpeg_bytes(color: tuple[int, int, int] = (10, 200, 30), size: tuple[int, int] = (32, 24)
               ) -> bytes:
    import cv2
    import numpy as np

    img = np.zeros((size[1], size[0], 3), np.uint8)
    img[:, :] = color
    ok, buf = cv2.imencode(".jpg", img)
    assert ok
    return buf.tobytes()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", default="fake-model")
    args = parser.parse_args()
    uvicorn.run(make_fake_backend(args.model), host="127.0.0.1", port=args.port,
                log_level="warning")
    sys.exit(0)
