"""media.py: URL schemes, SSRF guard, size/frame limits, decode checks, frames-as-video."""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import os
from pathlib import Path

import numpy as np
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response, StreamingResponse
from frontend_fakes import ServerThread, jpeg_bytes, png_bytes, write_mp4

from earlytom_server.media import (
    MediaError,
    MediaPolicy,
    MediaProcessor,
    inspect_video_file,
    parse_data_url,
    sample_indices,
)
from earlytom_server.media_sources import address_problem


def run(coro):
    return asyncio.run(coro)


def processor(media_dir: Path | None, **kw) -> MediaProcessor:
    return MediaProcessor(MediaPolicy(media_dir=media_dir, **kw))


async def _video(proc: MediaProcessor, url: str):
    try:
        return await proc.video(url, param="p")
    finally:
        await proc.aclose()


def video(media_dir, url, **kw):
    return run(_video(processor(media_dir, **kw), url))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# -- sampling rule -----------------------------------------------------------------------------------


@pytest.mark.parametrize("total", [1, 2, 5, 31, 32, 33, 100, 997])
@pytest.mark.parametrize("n", [1, 2, 8, 32])
def test_sample_indices_match_vllm_linspace_rule(total, n):
    m = min(n, total)
    expected = list(range(total)) if m == total else \
        np.linspace(0, total - 1, m, dtype=int).tolist()
    assert sample_indices(total, n) == expected


# -- data: URLs --------------------------------------------------------------------------------------


def test_data_url_parsing():
    assert parse_data_url("data:Video/MP4;base64,AAAA", param=None) == ("video/mp4", "AAAA")
    with pytest.raises(MediaError, match="base64"):
        parse_data_url("data:video/mp4,rawbytes", param=None)
    with pytest.raises(MediaError, match="no ','"):
        parse_data_url("data:video/mp4;base64", param=None)


def test_data_video_is_checked_and_forwarded_unchanged(videos, media_dir):
    url = "data:video/mp4;base64," + b64(videos["good"].read_bytes())
    out = video(media_dir, url)
    assert out.frames == 8
    assert out.url == url


def test_frames_capped_at_num_frames(videos, media_dir):
    url = "data:video/mp4;base64," + b64(videos["long"].read_bytes())
    assert video(media_dir, url, num_frames=32).frames == 32
    assert video(media_dir, url, num_frames=16).frames == 16
    assert video(media_dir, url, num_frames=64).frames == 40


@pytest.mark.parametrize("name", ["truncated", "cut_tail", "garbage"])
def test_corrupt_videos_are_rejected(videos, media_dir, name):
    url = "data:video/mp4;base64," + b64(videos[name].read_bytes())
    with pytest.raises(MediaError) as err:
        video(media_dir, url)
    assert err.value.status == 400
    assert err.value.param == "p"
    assert err.value.code == "invalid_video"


def test_invalid_base64_is_rejected(media_dir):
    with pytest.raises(MediaError) as err:
        video(media_dir, "data:video/mp4;base64,@@@not-base64@@@")
    assert err.value.code == "invalid_base64"


def test_non_video_mime_is_rejected(media_dir):
    with pytest.raises(MediaError) as err:
        video(media_dir, "data:image/png;base64," + b64(png_bytes()))
    assert err.value.code == "invalid_media_type"


def test_video_over_size_limit_is_rejected_before_decoding(videos, media_dir):
    url = "data:video/mp4;base64," + b64(videos["good"].read_bytes())
    with pytest.raises(MediaError) as err:
        video(media_dir, url, max_video_bytes=500)
    assert err.value.code == "media_too_large"


def test_video_over_frame_limit_is_rejected(videos, media_dir):
    url = "data:video/mp4;base64," + b64(videos["long"].read_bytes())
    with pytest.raises(MediaError) as err:
        video(media_dir, url, max_video_frames=39)
    assert err.value.code == "too_many_frames"


def test_inspect_video_file_counts_sampled_frames(videos):
    assert inspect_video_file(videos["good"], num_frames=4, max_frames=100) == 4
    assert inspect_video_file(videos["good"], num_frames=100, max_frames=100) == 8


def test_jpeg_frame_list_is_resampled_to_num_frames(media_dir):
    frames = [b64(jpeg_bytes((i * 20, 0, 0))) for i in range(10)]
    out = video(media_dir, "data:video/jpeg;base64," + ",".join(frames), num_frames=4)
    assert out.frames == 4
    assert out.url.startswith("data:video/jpeg;base64,")
    assert len(out.url.split(",")) == 1 + 4


def test_jpeg_frame_list_with_bad_frame_is_rejected(media_dir):
    frames = [b64(jpeg_bytes()), b64(b"not an image")]
    with pytest.raises(MediaError) as err:
        video(media_dir, "data:video/jpeg;base64," + ",".join(frames))
    assert err.value.code == "invalid_image"


# -- frames as video ---------------------------------------------------------------------------------


def test_frames_as_video_builds_one_jpeg_video(media_dir):
    import cv2

    urls = [(f"data:image/png;base64,{b64(png_bytes((i, 2 * i, 3 * i), (40, 30)))}", f"f{i}")
            for i in range(5)]
    # a frame of another size is resized to the first frame's size
    urls.append((f"data:image/jpeg;base64,{b64(jpeg_bytes((9, 9, 9), (80, 60)))}", "f5"))

    async def go():
        proc = processor(media_dir, num_frames=32)
        try:
            return await proc.frames_as_video(urls)
        finally:
            await proc.aclose()

    out = run(go())
    assert out.frames == 6
    header, _, rest = out.url.partition(",")
    assert header == "data:video/jpeg;base64"
    parts = rest.split(",")
    assert len(parts) == 6
    shapes = {cv2.imdecode(np.frombuffer(base64.b64decode(p), np.uint8), 1).shape for p in parts}
    assert shapes == {(30, 40, 3)}


def test_frames_as_video_samples_uniformly(media_dir):
    urls = [(f"data:image/png;base64,{b64(png_bytes((i, 0, 0)))}", None) for i in range(50)]

    async def go():
        proc = processor(media_dir, num_frames=8)
        try:
            return await proc.frames_as_video(urls)
        finally:
            await proc.aclose()

    assert run(go()).frames == 8


# -- file:// -----------------------------------------------------------------------------------------


def test_file_inside_media_dir_is_accepted(videos, media_dir):
    path = media_dir / "clip.mp4"
    path.write_bytes(videos["good"].read_bytes())
    out = video(media_dir, f"file://{path}")
    assert out.frames == 8
    assert out.url.startswith("data:video/mp4;base64,")  # backend cannot read the media dir
    out = video(media_dir, f"file://{path}", backend_media_dir=media_dir)
    assert out.url == f"file://{path.resolve()}"


@pytest.mark.parametrize("how", ["outside", "dotdot", "symlink", "missing-outside", "host"])
def test_file_outside_media_dir_is_refused(videos, media_dir, tmp_path, how):
    outside = tmp_path / "secret.mp4"
    outside.write_bytes(videos["good"].read_bytes())
    if how == "outside":
        url = f"file://{outside}"
    elif how == "dotdot":
        url = f"file://{media_dir}/../secret.mp4"
    elif how == "symlink":
        link = media_dir / "link.mp4"
        os.symlink(outside, link)
        url = f"file://{link}"
    elif how == "missing-outside":
        url = f"file://{media_dir}/../nothing.mp4"
    else:
        url = f"file://evil.example{outside}"
    with pytest.raises(MediaError) as err:
        video(media_dir, url)
    assert err.value.code == "url_not_allowed"
    assert 400 <= err.value.status < 500


def test_missing_file_in_media_dir_is_404(media_dir):
    with pytest.raises(MediaError) as err:
        video(media_dir, f"file://{media_dir}/nope.mp4")
    assert err.value.status == 404


def test_file_urls_disabled_without_media_dir(videos):
    with pytest.raises(MediaError) as err:
        video(None, f"file://{videos['good']}")
    assert err.value.code == "url_not_allowed"


def test_unknown_scheme_is_rejected(media_dir):
    with pytest.raises(MediaError) as err:
        video(media_dir, "ftp://example.com/a.mp4")
    assert err.value.code == "unsupported_url"


# -- SSRF --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("addr", [
    "127.0.0.1", "127.5.5.5", "::1", "0.0.0.0", "::", "10.1.2.3", "172.16.0.1", "192.168.1.1",
    "169.254.169.254", "fe80::1", "fc00::1", "224.0.0.1", "ff02::1", "240.0.0.1",
    "100.64.0.1", "::ffff:127.0.0.1", "::ffff:10.0.0.1", "2002:7f00:1::1", "198.18.0.1",
])
def test_address_problem_blocks_non_public(addr):
    assert address_problem(ipaddress.ip_address(addr)) is not None


@pytest.mark.parametrize("addr", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111"])
def test_address_problem_allows_public(addr):
    assert address_problem(ipaddress.ip_address(addr)) is None


@pytest.mark.parametrize("url", [
    "http://127.0.0.1/v.mp4", "http://localhost:8000/v.mp4", "http://[::1]/v.mp4",
    "http://169.254.169.254/latest/meta-data", "https://10.0.0.5/v.mp4",
    "http://192.168.0.10/v.mp4", "http://0.0.0.0/v.mp4", "http://[::ffff:127.0.0.1]/v.mp4",
])
def test_private_urls_are_refused(media_dir, url):
    with pytest.raises(MediaError) as err:
        video(media_dir, url)
    assert err.value.code == "url_not_allowed"


# -- remote downloads (a local server, private URLs allowed) -----------------------------------------


@pytest.fixture(scope="module")
def media_server(tmp_path_factory):
    d = tmp_path_factory.mktemp("remote")
    clip = write_mp4(d / "clip.mp4", frames=8).read_bytes()
    app = FastAPI()
    app.state.hits = 0

    @app.get("/clip.mp4")
    async def get_clip(request: Request):
        app.state.hits += 1
        return Response(clip, media_type="video/mp4")

    @app.get("/chunked.mp4")
    async def chunked():
        async def body():
            for i in range(0, len(clip), 256):
                yield clip[i:i + 256]
        return StreamingResponse(body(), media_type="video/mp4")

    @app.get("/endless")
    async def endless():
        async def body():
            while True:
                yield b"\0" * 65536
                await asyncio.sleep(0.001)
        return StreamingResponse(body(), media_type="video/mp4")

    @app.get("/slow")
    async def slow():
        async def body():
            yield b"\0"
            await asyncio.sleep(30)
        return StreamingResponse(body(), media_type="video/mp4")

    @app.get("/redirect")
    async def redirect():
        return RedirectResponse("/clip.mp4")

    @app.get("/missing")
    async def missing():
        return Response("no", status_code=404)

    server = ServerThread(app).start()
    server.clip = clip
    yield server
    server.stop()


def test_remote_video_is_downloaded_and_forwarded_as_data(media_server, media_dir):
    out = video(media_dir, f"{media_server.url}/clip.mp4", allow_private_urls=True)
    assert out.frames == 8
    assert out.url == "data:video/mp4;base64," + b64(media_server.clip)


def test_remote_redirect_is_followed_and_rechecked(media_server, media_dir):
    out = video(media_dir, f"{media_server.url}/redirect", allow_private_urls=True)
    assert out.frames == 8
    with pytest.raises(MediaError) as err:  # without the allow flag the first hop is refused
        video(media_dir, f"{media_server.url}/redirect")
    assert err.value.code == "url_not_allowed"


@pytest.mark.parametrize("path", ["/chunked.mp4", "/endless", "/clip.mp4"])
def test_remote_size_cap(media_server, media_dir, path):
    with pytest.raises(MediaError) as err:
        video(media_dir, f"{media_server.url}{path}", allow_private_urls=True,
              max_video_bytes=1000)
    assert err.value.code == "media_too_large"


def test_remote_timeout(media_server, media_dir):
    with pytest.raises(MediaError) as err:
        video(media_dir, f"{media_server.url}/slow", allow_private_urls=True,
              download_timeout=0.5)
    assert err.value.code == "fetch_timeout"


def test_remote_http_error(media_server, media_dir):
    with pytest.raises(MediaError) as err:
        video(media_dir, f"{media_server.url}/missing", allow_private_urls=True)
    assert err.value.code == "fetch_failed"


def test_remote_connection_refused(media_dir):
    from frontend_fakes import free_port

    with pytest.raises(MediaError) as err:
        video(media_dir, f"http://127.0.0.1:{free_port()}/x.mp4", allow_private_urls=True)
    assert err.value.code == "fetch_failed"
