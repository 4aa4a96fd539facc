"""Property-based fuzzing of what schemathesis cannot send, against a fake backend, and of the media
parsers directly.

The contract itself (every route, valid and invalid bodies drawn from the published schema, every
answer checked against it) is ``test_frontend_schemathesis.py``'s. Here: bodies drawn from the
same schema by schemathesis' own generator, then broken below the schema's level -- media URLs of
every scheme put in, a subtree replaced by arbitrary JSON, the bytes cut or flipped -- and sent
over HTTP. For every response: no 5xx, an answer within the client timeout (no hang), and a body
that conforms to the schema declared for its status (the completion, server-sent events, or the
OpenAI error). Headers and paths are fuzzed too. Deterministic (derandomized) and bounded:
``FUZZ_EXAMPLES`` (default 120 per test) scales a longer run (``make fuzz-long``; see docs/reliability.md).

The media fuzzer calls the parsers of untrusted strings and bytes (data URLs, base64, ``file://``
paths, http(s) URLs and host names with DNS stubbed out, image and video bytes) and requires that
they either succeed or raise :class:`MediaError` with a 4xx status -- no other exception class.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
from pathlib import Path

import httpx
import jsonschema
import pytest
import schemathesis
from frontend_fakes import jpeg_bytes, png_bytes, write_mp4
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from earlytom_server.media import (
    MediaError,
    MediaPolicy,
    MediaProcessor,
    decode_base64,
    decode_image,
    inspect_video_bytes,
    parse_data_url,
)

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "120"))
CHAT = "/v1/chat/completions"
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                suppress_health_check=list(HealthCheck), database=None)


# -- the schema ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def openapi():
    from earlytom_server.app import create_app
    from earlytom_server.settings import Settings

    return create_app(Settings(backends=["http://127.0.0.1:9"])).openapi()


def component(openapi: dict, ref_or_schema: dict) -> dict:
    """A schema usable on its own: the $refs resolve against the OpenAPI components."""
    return {**ref_or_schema, "components": openapi["components"]}


def bodies_from_the_schema(openapi: dict, path: str) -> st.SearchStrategy[dict]:
    """Request bodies of ``POST path`` that the published schema allows (schemathesis' generator)."""
    operation = schemathesis.openapi.from_dict(openapi)[path]["POST"]
    return operation.as_strategy().map(lambda case: case.body)


def response_validator(openapi: dict, status: int) -> jsonschema.Draft202012Validator:
    responses = openapi["paths"][CHAT]["post"]["responses"]
    entry = responses.get(str(status))
    assert entry is not None, f"status {status} is not declared in the schema"
    schema = entry["content"]["application/json"]["schema"]
    return jsonschema.Draft202012Validator(component(openapi, schema))


def test_the_schema_declares_the_chat_route(openapi):
    post = openapi["paths"][CHAT]["post"]
    assert post["requestBody"]["required"] is True
    assert {"200", "400", "413", "429", "503"} <= set(post["responses"])
    body = post["requestBody"]["content"]["application/json"]
    jsonschema.Draft202012Validator.check_schema(component(openapi, body["schema"]))


# -- strategies -----------------------------------------------------------------------------------------

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12,
)


def _media_urls() -> st.SearchStrategy[str]:
    b64 = st.binary(max_size=64).map(lambda b: base64.b64encode(b).decode())
    good = [
        "data:image/png;base64," + base64.b64encode(png_bytes()).decode(),
        "data:image/jpeg;base64," + base64.b64encode(jpeg_bytes()).decode(),
    ]
    return st.one_of(
        st.sampled_from(good),
        st.builds(lambda m, p: f"data:{m};base64,{p}",
                  st.sampled_from(["video/mp4", "video/jpeg", "image/png", "image/gif", "text/x",
                                   "video/", "VIDEO/MP4", "a/b;c"]), b64),
        st.builds(lambda p: f"file:///{p}", st.text(max_size=30)),
        st.builds(lambda h, p: f"http://{h}/{p}",
                  st.sampled_from(["127.0.0.1", "[::1]", "10.1.2.3", "[fec0::1]", "192.0.0.1",
                                   "169.254.169.254", "[::ffff:10.0.0.1]", "0.0.0.0", "[::]"]),
                  st.text(max_size=10)),
        st.text(max_size=40),
    )


def _with_media(body: dict, urls: list[str]) -> dict:
    """Put drawn media URLs into the drawn body's media parts."""
    it = iter(urls)
    for message in body.get("messages") or []:
        if isinstance(message, dict) and isinstance(message.get("content"), list):
            for part in message["content"]:
                if isinstance(part, dict):
                    for key in ("image_url", "video_url"):
                        if isinstance(part.get(key), dict):
                            part[key]["url"] = next(it, part[key].get("url"))
    return body


@st.composite
def chat_bodies(draw, bodies: st.SearchStrategy[dict]) -> bytes:
    body = draw(bodies)
    body = _with_media(body, draw(st.lists(_media_urls(), max_size=3)))
    body.pop("stream", None) if draw(st.booleans()) else None
    mode = draw(st.sampled_from(["as is", "as is", "subtree", "bytes"]))
    if mode == "subtree" and body:
        key = draw(st.sampled_from(sorted(body)))
        body[key] = draw(_JSON)
    raw = json.dumps(body).encode()
    if mode == "bytes" and raw:
        at = draw(st.integers(0, len(raw) - 1))
        raw = raw[:at] + draw(st.binary(max_size=4)) + raw[at + 1:]
    return raw


# -- the API fuzzer ---------------------------------------------------------------------------------


def check_response(openapi: dict, r: httpx.Response) -> None:
    assert r.status_code < 500, (r.status_code, r.text[:300])
    if r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream"):
        blocks = [b for b in r.text.split("\n\n") if b.strip()]
        assert blocks[-1] == "data: [DONE]"
        for block in blocks[:-1]:
            assert block.startswith("data: ")
            event = json.loads(block[6:])
            assert "error" not in event, event
        return
    response_validator(openapi, r.status_code).validate(r.json())
    assert r.headers["x-request-id"]


def fuzz_route(c: httpx.Client, openapi: dict, path: str, check) -> dict[int, int]:
    """POST fuzzed bodies drawn from the schema of ``path``; ``check(response)`` each answer;
    how many answers of each status."""
    seen: dict[int, int] = {}

    @FUZZ
    @given(chat_bodies(bodies_from_the_schema(openapi, path)))
    def send(raw: bytes) -> None:
        r = c.post(path, content=raw, headers={"content-type": "application/json"})
        check(r)
        seen[r.status_code] = seen.get(r.status_code, 0) + 1

    send()
    return seen


def test_fuzz_chat_from_the_openapi_schema(openapi, front, fake_backend):
    with httpx.Client(base_url=front.url, timeout=15) as c:
        seen = fuzz_route(c, openapi, CHAT, lambda r: check_response(openapi, r))
        assert c.post(CHAT, json={"messages": [{"role": "user", "content": "hi"}]}
                      ).status_code == 200
    assert 200 in seen and 400 in seen, seen  # the fuzzer reached both sides


@pytest.mark.parametrize(("path", "schema_name"), [
    ("/v1/completions", "CompletionRequest"),
    ("/tokenize", "TokenizeRequest"),
    ("/detokenize", "DetokenizeRequest"),
])
def test_fuzz_relayed_routes_from_the_openapi_schema(openapi, front, fake_backend, path,
                                                     schema_name):
    """The other relayed routes: bodies drawn from their declared schemas (and mangled) never get
    a 5xx, and every answer that is not vLLM's own is an OpenAI error body."""
    post = openapi["paths"][path]["post"]
    ref = post["requestBody"]["content"]["application/json"]["schema"]
    assert ref == {"$ref": f"#/components/schemas/{schema_name}"}
    schema = component(openapi, ref)
    jsonschema.Draft202012Validator.check_schema(schema)

    def check(r: httpx.Response) -> None:
        assert r.status_code < 500, (r.status_code, r.text[:300])
        if r.status_code != 200:
            response_validator(openapi, r.status_code).validate(r.json())

    with httpx.Client(base_url=front.url, timeout=15) as c:
        seen = fuzz_route(c, openapi, path, check)
    assert 400 in seen, seen


def test_fuzz_headers_and_paths(front):
    names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=20)
    # (httpx itself refuses values with surrounding blanks)
    values = st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=80)

    with httpx.Client(base_url=front.url, timeout=15) as c:

        @FUZZ
        @given(st.dictionaries(names, values, max_size=6),
               st.sampled_from(["/v1/chat/completions", "/v1/models", "/health", "/metrics",
                                "/v1/x", "/%00", "/%ff", "/v1/chat/completions/"]),
               st.sampled_from(["GET", "POST", "PUT", "DELETE", "OPTIONS"]))
        def send(headers: dict, path: str, method: str) -> None:
            headers.pop("content-length", None)
            headers.pop("transfer-encoding", None)
            headers.pop("host", None)
            r = c.request(method, path, headers=headers, content=b'{"messages": []}')
            assert r.status_code < 500, (r.status_code, r.text[:300])
            if r.headers.get("content-type", "").startswith("application/json") and \
                    r.status_code >= 400:
                body = r.json()
                assert set(body["error"]) == {"message", "type", "param", "code"}

        send()


# -- the media fuzzer -------------------------------------------------------------------------------


def only_media_errors(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except MediaError as exc:
        assert 400 <= exc.status < 500 and exc.message
        return None


@FUZZ
@given(st.text(max_size=200))
def test_fuzz_data_urls(tail):
    parsed = only_media_errors(parse_data_url, "data:" + tail, param="p")
    if parsed is not None:
        only_media_errors(decode_base64, parsed[1], param="p", limit=10_000, what="x")


@FUZZ
@given(st.one_of(st.text(max_size=100), st.binary(max_size=100).map(
    lambda b: b.decode("latin-1"))))
def test_fuzz_base64(payload):
    only_media_errors(decode_base64, payload, param="p", limit=1000, what="image")


@pytest.fixture(scope="module")
def media_root(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("fuzzmedia")
    (d / "ok.png").write_bytes(png_bytes())
    (d / "sub").mkdir()
    (d / "loop").symlink_to(d / "loop")
    return d


def test_fuzz_file_urls(media_root):
    proc = MediaProcessor(MediaPolicy(media_dir=media_root))
    segments = st.one_of(st.text(max_size=12), st.sampled_from(
        ["..", ".", "ok.png", "sub", "loop", "%00", "%ff", "%2e%2e", "%2F", "\x00", "\udcff"]))

    @FUZZ
    @given(st.lists(segments, max_size=5), st.sampled_from(["", "localhost", "x", "[::1", "a:b"]))
    def check(parts, host):
        url = f"file://{host}{media_root}/" + "/".join(parts)
        only_media_errors(proc.local_path, url, param="p", limit=10_000, what="image")

    check()


def test_fuzz_http_urls_and_host_names(monkeypatch):
    """URL parsing, IDNA, address checks and redirects' parsing, with DNS stubbed (no network):
    every name resolves to a private address, so nothing is ever fetched."""
    async def fake_getaddrinfo(host, port, **kw):
        host.encode("idna")  # what the real resolver does first (UnicodeError on bad labels)
        if "\x00" in host:
            raise ValueError("embedded null character")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.1", port))]

    async def no_network(request, **kw):
        # A URL that passes every check would be fetched here: refuse like an unreachable host
        # (the fuzzer must never connect anywhere).
        raise httpx.ConnectError("no network in the fuzzer", request=request)

    async def run(url: str) -> None:
        proc = MediaProcessor(MediaPolicy(media_dir=None, download_timeout=2))
        monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", fake_getaddrinfo)
        monkeypatch.setattr(proc._client, "send", no_network)
        try:
            await proc.fetch(url, limit=1000, param="p", what="video")
        except MediaError as exc:
            assert 400 <= exc.status < 500
        else:  # pragma: no cover - send() always fails
            raise AssertionError(f"fetched {url!r}")
        finally:
            await proc.aclose()

    hosts = st.one_of(
        st.text(max_size=30),
        st.text(alphabet="ab\u00e9\u00df\u2603.-", max_size=70),
        st.builds(lambda n: "a" * n + ".com", st.integers(60, 70)),
        st.sampled_from(["[::1", "[fe80::1%eth0]", "1.2.3.4:99999", "[64:ff9b::a00:1]",
                         "xn--", "xn--zz.com", "..", "a..b", "\x00", "[fec0::1]"]),
    )

    @FUZZ
    @given(st.sampled_from(["http", "https", "HTTP"]), hosts, st.text(max_size=20))
    def check(scheme, host, path):
        asyncio.run(run(f"{scheme}://{host}/{path}"))

    check()


@pytest.fixture(scope="module")
def media_samples(tmp_path_factory) -> dict[str, bytes]:
    d = tmp_path_factory.mktemp("fuzzvideo")
    return {"png": png_bytes(), "jpeg": jpeg_bytes(),
            "mp4-1": write_mp4(d / "a.mp4", frames=1).read_bytes(),
            "mp4-6": write_mp4(d / "b.mp4", frames=6).read_bytes()}


@st.composite
def mutated(draw, samples: dict[str, bytes], kinds: tuple[str, ...]) -> bytes:
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=300))
    data = bytearray(samples[draw(st.sampled_from(kinds))])
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, len(data) - 1))
        op = draw(st.sampled_from(["flip", "cut", "insert", "dup"]))
        if op == "flip":
            data[at] ^= draw(st.integers(1, 255))
        elif op == "cut":
            del data[at:at + draw(st.integers(1, 200))]
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        else:
            data[at:at] = data[at:at + 64]
        if not data:
            data = bytearray(b"\0")
    return bytes(data)


def test_fuzz_image_bytes(media_samples):
    @FUZZ
    @given(mutated(media_samples, ("png", "jpeg")))
    def check(data):
        only_media_errors(decode_image, data, param="p", max_pixels=4096 * 4096)

    check()


def test_fuzz_video_bytes(media_samples):
    @settings(max_examples=max(20, EXAMPLES // 3), deadline=None, derandomize=True,
              suppress_health_check=list(HealthCheck), database=None)
    @given(mutated(media_samples, ("mp4-1", "mp4-6")))
    def check(data):
        only_media_errors(inspect_video_bytes, data, num_frames=4, max_frames=1000,
                          max_pixels=4096 * 4096, param="p")

    check()
