"""Refusals that only the REAL engine can make, seen through ``earlytom-serve`` by the client.

Everything here passes the front end's own checks and is refused by vLLM (CPU, the EarlyTom
plugin, the tiny checkpoint): what the client receives must still be an OpenAI error with the right
status, and the next request must be served. One server for the module (its start dominates).

- prune layers past the encoder's depth (the tiny checkpoint's SigLIP has 26 layers): the front
  end, which reads the served checkpoint's family and config, refuses them before vLLM with the
  engine's own check (``Family.request_config``; the engine's side: tests/vllm/test_plugin.py);
- a video the engine will not decode: its frames are larger than vLLM's frame-pixel limit
  (``VLLM_MAX_IMAGE_PIXELS``, checked by vLLM's video decoder and not by the front end), lowered for
  this server to 5000 pixels so that an ordinary 96x64 clip exceeds it while a 64x48 one does not;
- an image the engine cannot decode: Radiance HDR, which OpenCV reads and PIL (the engine) does
  not; the front end decodes images as the engine does (PIL), so it refuses it itself;
- the engine core killed while a response streams: the client gets vLLM's SSE error event and the
  end of the stream, not a hang (last: it takes the engine down).

Tried for "a video the engine cannot decode but the front end accepts", none of which the engine
refused: frames of 64x1, 1x64, 2x2, 64x2, 64x3, 3x64 pixels (mp4v and MJPG/AVI), a PNG sent as
``data:video/mp4`` (the front end refuses it), truncated files (the front end refuses them). Both
decode with OpenCV and sample frames by the same rule, so a video one decodes the other decodes.
"""

from __future__ import annotations

import base64
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from frontend_fakes import free_port, group_members, write_mp4
from test_engine_e2e import Served, data_url, start_serve, stop_serve, video_content

pytestmark = pytest.mark.engine

PIXEL_LIMIT = 5000  # VLLM_MAX_IMAGE_PIXELS for this module's engine
DEPTH = 26  # the tiny checkpoint's SigLIP layers


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    from earlytom_vllm.checkpoints import ensure_tiny_checkpoint

    ensure_tiny_checkpoint()
    tmp = tmp_path_factory.mktemp("refusals")
    media_dir = tmp / "media"
    media_dir.mkdir()
    small = write_mp4(media_dir / "small.mp4", frames=8, size=(64, 48))  # 3072 px: decodes
    write_mp4(media_dir / "large.mp4", frames=8, size=(96, 64))  # 6144 px: over the limit
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp / "earlytom-serve.log"
    with pytest.MonkeyPatch.context() as mp:  # the spawned vLLM inherits the environment
        mp.setenv("VLLM_MAX_IMAGE_PIXELS", str(PIXEL_LIMIT))
        proc = start_serve(["--port", str(port), "--media-dir", str(media_dir),
                            "--health-interval", "0.5"], log, url, timeout=600)
    health = httpx.get(f"{url}/health").json()
    sup = health["supervisor"]
    served = Served(url=url, proc=proc, log=log, model=health["backends"][0]["models"][0],
                    media_dir=media_dir, video=small, backend_url=sup["url"],
                    backend_pid=sup["pid"])
    yield served
    stop_serve(proc)


def post(engine: Served, content: list[dict[str, Any]], **extra: Any) -> httpx.Response:
    body = {"model": engine.model, "max_tokens": 1, "temperature": 0,
            "messages": [{"role": "user", "content": content}], **extra}
    return httpx.post(f"{engine.url}/v1/chat/completions", json=body, timeout=300)


def openai_error(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error", "request_id"}, body  # request_id: issue 11 item 7
    assert body["request_id"] == r.headers["x-request-id"]
    assert set(body["error"]) == {"message", "type", "param", "code"}, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body["error"]


def assert_serves(engine: Served) -> None:
    """The next request is served (the refusal did not break the engine)."""
    out = engine.client().chat.completions.create(
        model=engine.model, max_tokens=1, temperature=0,
        messages=[{"role": "user", "content": video_content(data_url(engine.video))}])
    assert out.usage.prompt_tokens > 0 and out.choices[0].finish_reason in ("length", "stop")


# -- a setting only the engine can judge -----------------------------------------------------------


@pytest.mark.parametrize("prune_layers", [[DEPTH + 4], [3, DEPTH]])
def test_prune_layers_past_the_encoder_depth_are_a_400_from_the_engine(engine, prune_layers):
    r = post(engine, video_content(data_url(engine.video)),
             earlytom={"prune_layers": prune_layers})
    err = openai_error(r, 400)
    assert f"depth {DEPTH}" in err["message"]  # the served model's depth
    assert err["param"] is not None and err["param"].endswith("earlytom.prune_layers")
    assert_serves(engine)


def test_prune_layers_past_the_depth_refused_on_a_streamed_request_too(engine):
    client = engine.client()
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(
            model=engine.model, max_tokens=1, stream=True,
            messages=[{"role": "user", "content": video_content(data_url(engine.video))}],
            extra_body={"earlytom": {"prune_layers": [DEPTH + 4]}})
    assert exc.value.status_code == 400
    assert f"depth {DEPTH}" in exc.value.body["message"]
    assert_serves(engine)


def test_the_deepest_valid_prune_layer_is_served(engine):
    r = post(engine, video_content(data_url(engine.video)),
             earlytom={"prune_layers": [DEPTH - 1]})
    assert r.status_code == 200, r.text


def test_engine_refusal_names_the_field_as_the_client_sent_it(engine):
    r = post(engine, video_content(data_url(engine.video)),
             earlytom={"prune_layers": [DEPTH + 4]})
    assert openai_error(r, 400)["param"] == "earlytom.prune_layers"


def test_engine_refusal_names_mm_processor_kwargs_when_the_client_used_it(engine):
    r = post(engine, video_content(data_url(engine.video)),
             mm_processor_kwargs={"earlytom": {"prune_layers": [DEPTH + 4]}})
    assert openai_error(r, 400)["param"] == "mm_processor_kwargs.earlytom.prune_layers"


# -- media the engine will not decode ----------------------------------------------------------------


@pytest.mark.parametrize("how", ["data", "file"])
def test_video_over_the_engines_frame_pixel_limit_is_a_400(engine, how):
    large = engine.media_dir / "large.mp4"
    url = data_url(large) if how == "data" else f"file://{large}"
    err = openai_error(post(engine, video_content(url)), 400)
    assert f"exceed the maximum of {PIXEL_LIMIT} pixels" in err["message"]  # vLLM's decoder
    assert_serves(engine)  # the 64x48 clip: under the limit


def test_video_over_the_pixel_limit_refused_on_a_streamed_request_too(engine):
    large = engine.media_dir / "large.mp4"
    r = post(engine, video_content(data_url(large)), stream=True)
    err = openai_error(r, 400)  # refused before the stream starts: a JSON error, not SSE
    assert "VLLM_MAX_IMAGE_PIXELS" in err["message"]
    assert_serves(engine)


def test_image_the_engine_cannot_decode_is_refused_by_the_front_end(engine):
    import cv2
    import numpy as np

    hdr = np.full((48, 64, 3), 0.5, np.float32)
    ok, buf = cv2.imencode(".hdr", hdr)  # Radiance HDR: OpenCV reads it, PIL does not
    assert ok and cv2.imdecode(buf, cv2.IMREAD_COLOR) is not None
    url = "data:image/png;base64," + base64.b64encode(buf.tobytes()).decode()
    err = openai_error(post(engine, [{"type": "image_url", "image_url": {"url": url}},
                                     {"type": "text", "text": "What is this?"}]), 400)
    # the front end reads images the way the engine does: what the engine cannot decode is
    # refused before it gets there, naming the part
    assert err["code"] == "invalid_image"
    assert err["param"] == "messages[0].content[0].image_url.url"
    assert_serves(engine)


# -- the engine dies while streaming (last: it takes the engine down) ---------------------------------


def engine_core_pid(engine: Served) -> int:
    backend = httpx.get(f"{engine.url}/health").json()["supervisor"]["pid"]
    for pid in group_members(backend):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if cmdline.startswith(b"VLLM::EngineCore"):
            return pid
    raise AssertionError(f"no VLLM::EngineCore process in the backend's group {backend}")


def test_engine_core_killed_mid_stream_reaches_the_client_as_an_sse_error(engine):
    """SIGKILL vLLM's engine core (the API server's child) during a stream: the API server emits
    an error event, the front end relays it and ends the stream. A hang would raise ReadTimeout."""
    core = engine_core_pid(engine)
    body = {"model": engine.model, "stream": True, "max_tokens": 4000, "ignore_eos": True,
            "messages": [{"role": "user", "content": "Count to one thousand."}]}
    events: list[str] = []
    with httpx.Client(base_url=engine.url, timeout=httpx.Timeout(120, read=60)) as c, \
            c.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: "):
                events.append(line[6:])
                if len(events) == 3:
                    os.kill(core, signal.SIGKILL)
    assert len(events) > 3 and events[-1] == "[DONE]"
    err = json.loads(events[-2])["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert str(err["code"]) in ("500", "502", "backend_error"), err
    content = [json.loads(e) for e in events[:-2]]
    assert all("choices" in e for e in content)  # the tokens before the failure were relayed
