"""Security and robustness paths of the front end that no other test reaches: redirects into the
private network, redirect limits, ``file://`` and http(s) images, the size and count limits of frame
lists and frames-as-video, a backend that times out, and a backend that answers garbage."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response, StreamingResponse
from frontend_fakes import ServerThread, jpeg_bytes, png_bytes, wait_for, write_mp4

from earlytom_server.media import MediaError, MediaPolicy, MediaProcessor
from earlytom_server.media_sources import MAX_REDIRECTS

PNG = png_bytes((10, 20, 30), (32, 24))
JPEG = jpeg_bytes((200, 10, 10), (32, 24))


def noisy_jpeg(side: int = 160) -> bytes:
    """A JPEG of random pixels: tens of kB, far larger than PNG / JPEG above."""
    import cv2
    import numpy as np

    img = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
    ok, buf = cv2.imencode(".jpg", img)
    assert ok
    return buf.tobytes()


BIG = noisy_jpeg()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# --------------------------------------------------------------------------------------------------
# A local web server (loopback) and processors


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Any:
    clip = write_mp4(tmp_path_factory.mktemp("web") / "clip.mp4", frames=4).read_bytes()
    app = FastAPI()
    app.state.hits = {}

    def hit(name: str) -> None:
        app.state.hits[name] = app.state.hits.get(name, 0) + 1

    @app.get("/clip.mp4")
    async def get_clip() -> Response:
        hit("clip")
        return Response(clip, media_type="video/mp4")

    @app.get("/image.png")
    async def get_png() -> Response:
        hit("png")
        return Response(PNG, media_type="image/png")

    @app.get("/image.jpg")
    async def get_jpeg() -> Response:  # served with a wrong type: the bytes decide
        hit("jpeg")
        return Response(JPEG, media_type="application/octet-stream")

    @app.get("/not-an-image")
    async def not_image() -> Response:
        return Response(b"<html>hello</html>" * 10, media_type="image/png")

    @app.get("/chunked.png")
    async def chunked() -> StreamingResponse:  # no content-length: the cap is on the stream
        async def body():
            for i in range(0, len(PNG), 64):
                yield PNG[i:i + 64]
        return StreamingResponse(body(), media_type="image/png")

    @app.get("/missing.png")
    async def missing() -> Response:
        return Response("no", status_code=404)

    @app.get("/to")
    async def to(url: str) -> RedirectResponse:  # an open redirect, as found on many sites
        hit("to")
        return RedirectResponse(url, status_code=302)

    @app.get("/hops/{n}")
    async def hops(n: int, kind: str = "png") -> RedirectResponse:
        hit(f"hops/{n}")
        if n == 0:
            return RedirectResponse("/image.png" if kind == "png" else "/clip.mp4")
        return RedirectResponse(f"/hops/{n - 1}?kind={kind}", status_code=307)

    @app.get("/loop")
    async def loop(request: Request) -> RedirectResponse:
        hit("loop")
        return RedirectResponse(str(request.url), status_code=301)

    server = ServerThread(app).start()
    server.clip = clip
    yield server
    server.stop()


class FirstHopAllowed(MediaProcessor):
    """The private-address check is skipped for the FIRST host only (the loopback test server
    stands in for a public site); every later hop is checked as in production."""

    def __init__(self, policy: MediaPolicy) -> None:
        super().__init__(policy)
        self.checked: list[str] = []

    async def check_host(self, host: str, port: int, *, param: str | None) -> list[str]:
        self.checked.append(host)
        if len(self.checked) == 1:
            return [host.strip("[]")]
        return await super().check_host(host, port, param=param)


class Counting(MediaProcessor):
    def __init__(self, policy: MediaPolicy) -> None:
        super().__init__(policy)
        self.checked: list[str] = []

    async def check_host(self, host: str, port: int, *, param: str | None) -> list[str]:
        self.checked.append(host)
        return await super().check_host(host, port, param=param)


def run(proc: MediaProcessor, method: str, *args: Any, **kwargs: Any) -> Any:
    async def go() -> Any:
        try:
            return await getattr(proc, method)(*args, **kwargs)
        finally:
            await proc.aclose()

    return asyncio.run(go())


def policy(media_dir: Path | None = None, **kw: Any) -> MediaPolicy:
    kw.setdefault("download_timeout", 30.0)
    return MediaPolicy(media_dir=media_dir, **kw)


def refused(proc: MediaProcessor, method: str, *args: Any, **kwargs: Any) -> MediaError:
    with pytest.raises(MediaError) as err:
        run(proc, method, *args, **kwargs)
    return err.value


# --------------------------------------------------------------------------------------------------
# Redirects


SECOND_HOPS = {
    "same server by IP": "http://127.0.0.1:{port}/clip.mp4",
    "localhost": "http://localhost:{port}/clip.mp4",
    "IPv6 loopback": "http://[::1]:{port}/clip.mp4",
    "IPv4-mapped loopback": "http://[::ffff:127.0.0.1]:{port}/clip.mp4",
    "cloud metadata": "http://169.254.169.254/latest/meta-data/",
    "private network": "http://10.0.0.1/clip.mp4",
    "unspecified": "http://0.0.0.0:{port}/clip.mp4",
    "https private": "https://192.168.1.10/clip.mp4",
}


@pytest.mark.parametrize("what", ["video", "image"])
@pytest.mark.parametrize("hop", sorted(SECOND_HOPS))
def test_redirect_to_a_private_address_is_refused_at_the_second_hop(web, hop, what):
    target = SECOND_HOPS[hop].format(port=web.port)
    proc = FirstHopAllowed(policy())
    before = dict(web.app.state.hits)
    method = "video" if what == "video" else "image_bytes"
    err = refused(proc, method, f"{web.url}/to?url={quote(target, safe='')}", param="p")
    assert err.code == "url_not_allowed" and err.status == 403 and err.param == "p"
    assert "such URLs are not fetched" in err.message
    # the first hop was fetched, the second was checked and never requested
    assert len(proc.checked) == 2 and proc.checked[0] == "127.0.0.1"
    assert web.app.state.hits.get("to", 0) == before.get("to", 0) + 1
    assert web.app.state.hits.get("clip", 0) == before.get("clip", 0)


def test_the_same_redirect_is_followed_when_private_urls_are_allowed(web):
    """The control for the test above: with the check off, the second hop is fetched."""
    target = f"http://127.0.0.1:{web.port}/clip.mp4"
    proc = Counting(policy(allow_private_urls=True))
    out = run(proc, "video", f"{web.url}/to?url={quote(target, safe='')}", param="p")
    assert out.frames == 4 and out.url == "data:video/mp4;base64," + b64(web.clip)
    assert proc.checked == ["127.0.0.1", "127.0.0.1"]  # every hop is checked


@pytest.mark.parametrize("kind", ["png", "video"])
def test_redirects_up_to_the_limit_are_followed_and_each_hop_is_checked(web, kind):
    proc = Counting(policy(allow_private_urls=True))
    url = f"{web.url}/hops/{MAX_REDIRECTS - 1}?kind={kind}"  # MAX_REDIRECTS redirects in all
    if kind == "png":
        assert run(proc, "image_bytes", url, param="p") == PNG
    else:
        assert run(proc, "video", url, param="p").frames == 4
    assert len(proc.checked) == MAX_REDIRECTS + 1


def test_one_redirect_more_than_the_limit_is_refused(web):
    proc = Counting(policy(allow_private_urls=True))
    hits = dict(web.app.state.hits)
    err = refused(proc, "image_bytes", f"{web.url}/hops/{MAX_REDIRECTS}", param="p")
    assert err.code == "fetch_failed" and "too many redirects" in err.message
    assert err.param == "p"
    assert len(proc.checked) == MAX_REDIRECTS + 1  # the request after the last hop is not sent
    assert web.app.state.hits.get("png", 0) == hits.get("png", 0)


def test_a_redirect_loop_ends_at_the_limit(web):
    hits = web.app.state.hits.get("loop", 0)
    err = refused(Counting(policy(allow_private_urls=True)), "video", f"{web.url}/loop")
    assert err.code == "fetch_failed" and "too many redirects" in err.message
    assert web.app.state.hits["loop"] - hits == MAX_REDIRECTS + 1


# --------------------------------------------------------------------------------------------------
# http(s) images


@pytest.mark.parametrize("url", ["http://127.0.0.1:{port}/image.png", "http://localhost:{port}/x.png",
                                 "https://10.1.2.3/x.png", "http://[::1]/x.png",
                                 "http://169.254.169.254/x.png"])
def test_private_image_urls_are_refused(web, url):
    err = refused(MediaProcessor(policy()), "image", url.format(port=web.port), param="img")
    assert (err.code, err.status, err.param) == ("url_not_allowed", 403, "img")


def test_remote_images_are_downloaded_and_forwarded_as_data_urls(web):
    png = run(MediaProcessor(policy(allow_private_urls=True)), "image", f"{web.url}/image.png")
    assert png == "data:image/png;base64," + b64(PNG)
    jpeg = run(MediaProcessor(policy(allow_private_urls=True)), "image", f"{web.url}/image.jpg")
    assert jpeg == "data:image/jpeg;base64," + b64(JPEG)  # the bytes decide, not the header


@pytest.mark.parametrize(("path", "limit", "code"), [
    ("/not-an-image", 10_000, "invalid_image"),
    ("/image.png", len(PNG) - 1, "media_too_large"),    # declared length over the limit
    ("/chunked.png", len(PNG) - 1, "media_too_large"),  # streamed past the limit
    ("/missing.png", 10_000, "fetch_failed"),
])
def test_remote_image_refusals(web, path, limit, code):
    err = refused(MediaProcessor(policy(allow_private_urls=True, max_image_bytes=limit)), "image",
                  f"{web.url}{path}", param="img")
    assert err.code == code and err.param == "img" and err.status == 400


def test_remote_image_at_the_size_limit_is_accepted(web):
    proc = MediaProcessor(policy(allow_private_urls=True, max_image_bytes=len(PNG)))
    assert run(proc, "image_bytes", f"{web.url}/chunked.png") == PNG


def test_https_to_a_plain_http_server_fails_cleanly(web):
    err = refused(MediaProcessor(policy(allow_private_urls=True)), "image",
                  f"https://127.0.0.1:{web.port}/image.png", param="img")
    assert err.code == "fetch_failed" and err.param == "img"


# --------------------------------------------------------------------------------------------------
# file:// images


@pytest.fixture
def image_files(media_dir: Path, tmp_path: Path) -> dict[str, Path]:
    (media_dir / "a.png").write_bytes(PNG)
    (media_dir / "b.jpg").write_bytes(JPEG)
    (media_dir / "text.png").write_bytes(b"not an image at all")
    secret = tmp_path / "secret.png"
    secret.write_bytes(PNG)
    (media_dir / "link.png").symlink_to(secret)
    return {"png": media_dir / "a.png", "jpeg": media_dir / "b.jpg",
            "text": media_dir / "text.png", "secret": secret, "link": media_dir / "link.png"}


def test_file_images_in_the_media_dir_are_forwarded(media_dir, image_files):
    png = run(MediaProcessor(policy(media_dir)), "image", f"file://{image_files['png']}")
    assert png == "data:image/png;base64," + b64(PNG)
    jpeg = run(MediaProcessor(policy(media_dir)), "image", f"file://{image_files['jpeg']}")
    assert jpeg == "data:image/jpeg;base64," + b64(JPEG)
    # the backend can read the media directory itself: the path is forwarded, not the bytes
    shared = run(MediaProcessor(policy(media_dir, backend_media_dir=media_dir)), "image",
                 f"file://{image_files['png']}")
    assert shared == f"file://{image_files['png'].resolve()}"


@pytest.mark.parametrize(("which", "code", "status"), [
    ("secret", "url_not_allowed", 403),     # outside the media directory
    ("link", "url_not_allowed", 403),       # a symlink out of it
    ("dotdot", "url_not_allowed", 403),
    ("missing", "file_not_found", 404),
    ("text", "invalid_image", 400),
    ("host", "url_not_allowed", 400),
])
def test_file_image_refusals(media_dir, image_files, which, code, status):
    url = {"dotdot": f"file://{media_dir}/../secret.png",
           "missing": f"file://{media_dir}/nope.png",
           "host": f"file://example.com{image_files['png']}"}.get(which)
    url = url or f"file://{image_files[which]}"
    err = refused(MediaProcessor(policy(media_dir)), "image", url, param="img")
    assert (err.code, err.status, err.param) == (code, status, "img")


def test_file_image_over_the_size_limit_is_refused_before_reading(media_dir, image_files):
    err = refused(MediaProcessor(policy(media_dir, max_image_bytes=len(PNG) - 1)), "image",
                  f"file://{image_files['png']}", param="img")
    assert err.code == "media_too_large"


def test_file_images_are_refused_without_a_media_dir(image_files):
    err = refused(MediaProcessor(policy(None)), "image", f"file://{image_files['png']}")
    assert (err.code, err.status) == ("url_not_allowed", 403)


# --------------------------------------------------------------------------------------------------
# Frame lists (data:video/jpeg) and frames-as-video: count and size limits


def frame_list(frames: list[bytes]) -> str:
    return "data:video/jpeg;base64," + ",".join(b64(f) for f in frames)


def test_frame_list_over_the_frame_limit_is_refused_before_decoding():
    url = "data:video/jpeg;base64," + ",".join(["@@not-base64@@"] * 6)
    err = refused(MediaProcessor(policy(max_video_frames=5)), "video", url, param="v")
    assert (err.code, err.param) == ("too_many_frames", "v")
    assert run(MediaProcessor(policy(max_video_frames=6)), "video",
               frame_list([JPEG] * 6)).frames == 6


def test_frame_list_frame_over_the_image_limit_is_refused():
    err = refused(MediaProcessor(policy(max_image_bytes=len(BIG) - 1)), "video",
                  frame_list([JPEG, BIG, JPEG]), param="v")
    assert (err.code, err.param) == ("media_too_large", "v")


def test_frame_list_size_limit_counts_the_frames_the_backend_gets():
    """num_frames 4 of 10 frames are sampled and forwarded; the byte limit is on those 4."""
    frames = [JPEG] * 10
    at_limit = policy(num_frames=4, max_video_bytes=4 * len(JPEG))
    out = run(MediaProcessor(at_limit), "video", frame_list(frames))
    assert out.frames == 4
    err = refused(MediaProcessor(policy(num_frames=4, max_video_bytes=4 * len(JPEG) - 1)),
                  "video", frame_list(frames), param="v")
    assert (err.code, err.param) == ("media_too_large", "v")


def image_parts(n: int, data: bytes = PNG) -> list[tuple[str, str]]:
    return [(f"data:image/png;base64,{b64(data)}", f"messages[0].content[{i}].image_url.url")
            for i in range(n)]


def test_frames_as_video_over_the_frame_limit_is_refused():
    err = refused(MediaProcessor(policy(max_video_frames=3)), "frames_as_video", image_parts(4))
    assert (err.code, err.param) == ("too_many_frames", "earlytom.frames_as_video")
    assert run(MediaProcessor(policy(max_video_frames=4)), "frames_as_video",
               image_parts(4)).frames == 4


def test_frames_as_video_total_size_names_the_frame_that_crossed_the_limit():
    err = refused(MediaProcessor(policy(max_video_bytes=2 * len(PNG) + 1)), "frames_as_video",
                  image_parts(3))
    assert (err.code, err.param) == ("media_too_large", "messages[0].content[2].image_url.url")


def test_frames_as_video_image_over_the_image_limit_is_refused():
    parts = [*image_parts(2),
             (f"data:image/jpeg;base64,{b64(BIG)}", "messages[0].content[2].image_url.url")]
    err = refused(MediaProcessor(policy(max_image_bytes=len(BIG) - 1)), "frames_as_video", parts)
    assert (err.code, err.param) == ("media_too_large", "messages[0].content[2].image_url.url")


def test_frames_as_video_checks_each_frame_url(web, media_dir, image_files):
    parts = [(f"file://{image_files['png']}", "f0"), (f"{web.url}/image.png", "f1")]
    err = refused(MediaProcessor(policy(media_dir)), "frames_as_video", parts)
    assert (err.code, err.status, err.param) == ("url_not_allowed", 403, "f1")
    out = run(MediaProcessor(policy(media_dir, allow_private_urls=True)), "frames_as_video", parts)
    assert out.frames == 2 and out.url.startswith("data:video/jpeg;base64,")


# --------------------------------------------------------------------------------------------------
# The same limits through the HTTP API: status, OpenAI body, param; nothing reaches the backend


def chat_body(content: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"model": "fake-model", "messages": [{"role": "user", "content": content}], **extra}


def image_content(urls: list[str]) -> list[dict[str, Any]]:
    return [{"type": "image_url", "image_url": {"url": u}} for u in urls]


def assert_openai_error(r: httpx.Response, status: int, code: str, param: str | None) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error", "request_id"}  # request_id: issue 11 item 7
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert (body["error"]["code"], body["error"]["param"]) == (code, param)


def test_api_refuses_media_limits_before_the_backend(make_front, fake_backend, media_dir,
                                                     image_files, web):
    front = make_front(backends=[fake_backend.url], max_video_frames=3, max_image_bytes=10_000)
    png = f"data:image/png;base64,{b64(PNG)}"
    with httpx.Client(base_url=front.url, timeout=30) as c:
        assert_openai_error(
            c.post("/v1/chat/completions", json=chat_body(
                image_content([png] * 4), earlytom={"frames_as_video": True})),
            400, "too_many_frames", "earlytom.frames_as_video")
        assert_openai_error(
            c.post("/v1/chat/completions", json=chat_body([
                {"type": "video_url", "video_url": {"url": frame_list([JPEG] * 4)}}])),
            400, "too_many_frames", "messages[0].content[0].video_url.url")
        assert_openai_error(
            c.post("/v1/chat/completions", json=chat_body(
                image_content([f"file://{image_files['secret']}"]))),
            403, "url_not_allowed", "messages[0].content[0].image_url.url")
        assert_openai_error(
            c.post("/v1/chat/completions", json=chat_body(
                image_content([f"{web.url}/image.png"]))),
            403, "url_not_allowed", "messages[0].content[0].image_url.url")
        assert len(BIG) > 10_000
        assert_openai_error(
            c.post("/v1/chat/completions", json=chat_body(image_content(
                [png, f"data:image/jpeg;base64,{b64(BIG)}"]), earlytom={"frames_as_video": True})),
            400, "media_too_large", "messages[0].content[1].image_url.url")
        assert fake_backend.app.state.received == []
        ok = c.post("/v1/chat/completions", json=chat_body(
            image_content([f"file://{image_files['png']}"])))
        assert ok.status_code == 200, ok.text
        forwarded = fake_backend.app.state.received[-1]["messages"][0]["content"][0]
        assert forwarded["image_url"]["url"].startswith("data:image/png;base64,")


# --------------------------------------------------------------------------------------------------
# A backend that times out or answers garbage


REQUEST_TIMEOUT = 2.0  # the backend holds its answer at a gate that only opens at the end


def test_backend_timeout_is_a_504_and_the_backend_stays_in_service(make_front, fake_backend):
    front = make_front(backends=[fake_backend.url], request_timeout=REQUEST_TIMEOUT)
    gate = fake_backend.app.state.gate
    try:
        with httpx.Client(base_url=front.url, timeout=60) as c:
            r = c.post("/v1/chat/completions", json=chat_body("[gate]"))
            assert_openai_error(r, 504, "backend_timeout", None)
            assert r.json()["error"]["type"] == "timeout_error"
            assert gate.waiting == 1  # still held: the front end gave up, not the backend
            # a timeout is not a dead backend: it stays ready and takes the next request
            assert front.front.pool.backends[0].healthy
            assert c.post("/v1/chat/completions", json=chat_body("hi")).status_code == 200
            assert wait_for(lambda: 'status="504"} 1.0' in c.get("/metrics").text)
    finally:
        gate.open()


def test_backend_silent_mid_stream_ends_the_stream_with_a_timeout_event(make_front,
                                                                       fake_backend):
    front = make_front(backends=[fake_backend.url], request_timeout=REQUEST_TIMEOUT)
    gate = fake_backend.app.state.gate
    try:
        with httpx.Client(base_url=front.url, timeout=60) as c:
            r = c.post("/v1/chat/completions", json=chat_body("[gate]", stream=True))
            assert r.status_code == 200
            events = [b[6:] for b in r.text.split("\n\n") if b.startswith("data: ")]
            assert events[-1] == "[DONE]"
            first = json.loads(events[0])
            assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
            err = json.loads(events[-2])["error"]
            assert err["code"] == "backend_timeout" and err["type"] == "timeout_error"
            assert front.front.pool.backends[0].healthy
            assert c.post("/v1/chat/completions", json=chat_body("hi")).status_code == 200
    finally:
        gate.open()


def test_invalid_json_from_the_backend_is_a_502(client, front, fake_backend):
    r = client.post("/v1/chat/completions", json=chat_body("[badjson]"))
    assert_openai_error(r, 502, "backend_error", None)
    assert "invalid JSON" in r.json()["error"]["message"]
    assert front.front.pool.backends[0].healthy
    assert client.post("/v1/chat/completions", json=chat_body("hi")).status_code == 200


def test_a_non_json_event_in_a_stream_is_relayed_and_the_stream_still_ends(client):
    r = client.post("/v1/chat/completions", json=chat_body("[badjson]", stream=True))
    assert r.status_code == 200
    events = [b[6:] for b in r.text.split("\n\n") if b.startswith("data: ")]
    assert "{this is not json" in events
    assert events[-1] == "[DONE]"
    assert json.loads(events[-2])["choices"][0]["finish_reason"] == "stop"


def test_an_html_error_page_from_the_backend_becomes_an_openai_error(client):
    r = client.post("/v1/chat/completions", json=chat_body("[html500]"))
    assert r.status_code == 502
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["type"] == "upstream_error" and "500 Internal Server Error" in err["message"]
