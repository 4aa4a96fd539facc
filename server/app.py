"""``create_app(settings)``: the OpenAI-compatible front end.

Routes:

- ``POST /v1/chat/completions`` -- checked, media rewritten, forwarded to a backend; JSON or SSE
  (a request about a video goes to the backend its content hashes to: see ``proxy.py``)
- ``POST /v1/completions``      -- a text/token prompt, relayed with the same limits; JSON or SSE
- ``POST /tokenize``, ``/detokenize`` -- relayed (a chat-form ``/tokenize`` is checked as chat is)
- ``GET /version``              -- the version of a ready backend's vLLM
- ``GET /v1/models``            -- the models of the ready backends
- ``GET /health``               -- 200 when a backend is ready, else 503
- ``GET /metrics``              -- Prometheus text format (``earlytom_*``)

With ``api_key`` set, ``/v1/*`` needs ``Authorization: Bearer <key>`` (``/health`` and ``/metrics``
too if ``protect_health_metrics``). Every error is an OpenAI error body; user input never causes a
500 or a stack trace.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Collection, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from earlytom_server import openapi as api
from earlytom_server.admission import Admission, Overloaded, Ticket
from earlytom_server.errors import REQUEST_ID, APIError, error_body, normalize_error_body
from earlytom_server.guard import RequestGuard
from earlytom_server.media import MediaError, MediaPolicy, MediaProcessor, PreparedVideo
from earlytom_server.metrics import CONTENT_TYPE, Metrics
from earlytom_server.proxy import (
    Backend,
    BackendFailed,
    BackendPool,
    BackendUnavailable,
    StreamState,
    backend_error,
    relay_sse,
)
from earlytom_server.schemas import (
    COMPLETION_REJECTED_FIELDS,
    REJECTED_FIELDS,
    TOKENIZE_PROMPT_REJECTED_FIELDS,
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    TokenizeChatRequest,
    TokenizePromptRequest,
)
from earlytom_server.settings import Settings
from earlytom_server.supervisor import BackendSupervisor, CommandFactory
from earlytom_vllm import EarlyTomConfig, __version__
from earlytom_vllm.config import EarlyTomConfigError, request_config

log = logging.getLogger("earlytom_server.app")

CHAT_PATH = "/v1/chat/completions"
COMPLETIONS_PATH = "/v1/completions"
TOKENIZE_PATH = "/tokenize"
DETOKENIZE_PATH = "/detokenize"
VERSION_PATH = "/version"

#: Deepest nesting of objects/arrays a request body may have (vLLM's own requests nest < 10).
MAX_JSON_DEPTH = 64
#: Most JSON objects, arrays and items (commas) a request body may have. A base64 video is one
#: string, so this only bounds bodies built to blow up when parsed (``[{},{},...]`` turns 100 MiB
#: into ~2 GiB of Python objects); counted only for bodies that could exceed it.
MAX_JSON_ITEMS = 200_000


# --------------------------------------------------------------------------------------------------
# Helpers


def _clean_loc(loc: Sequence[Any]) -> list[Any]:
    out: list[Any] = []
    for item in loc:
        if isinstance(item, str) and ("[" in item or item.startswith("constrained-") or item in {
                "str", "int", "float", "bool", "list", "dict", "none"}):
            continue  # union-branch labels
        if out and isinstance(item, str) and out[-1] == item:
            continue  # discriminator tag followed by the field of the same name
        out.append(item)
    return out


def loc_to_param(loc: Sequence[Any]) -> str | None:
    param = ""
    for item in loc:
        if isinstance(item, int):
            param += f"[{item}]"
        else:
            param += ("." if param else "") + str(item)
    return param or None


def validation_error(errors: Sequence[dict[str, Any]], *, drop_prefix: int = 0) -> APIError:
    if not errors:
        return APIError(400, "invalid request", code="invalid_request")
    cleaned = [(_clean_loc(list(e.get("loc", ()))[drop_prefix:]), e) for e in errors]
    best = max(len(loc) for loc, _ in cleaned)
    top = [(loc, e) for loc, e in cleaned if len(loc) == best]
    loc = top[0][0]
    param = loc_to_param(loc)
    msgs = list(dict.fromkeys(str(e.get("msg", "invalid value")) for _, e in top))
    msg = msgs[0] if len(msgs) == 1 else "invalid value (" + "; or ".join(msgs) + ")"
    return APIError(400, f"{param}: {msg}" if param else msg, param=param,
                    code="invalid_value")


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a valid JSON number")


def _json_number(text: str) -> float | int:
    """A JSON number with a fraction or exponent. JSON has one number type: ``2.0`` is the
    integer 2 (as JSON Schema's ``integer`` says), so an integral value is an int here and
    integer fields accept it, as vLLM's do."""
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"the number {text[:40]} is out of range")
    return int(value) if value.is_integer() else value


def json_depth_exceeds(value: Any, limit: int) -> bool:
    """True if ``value`` nests objects/arrays deeper than ``limit`` (iterative: no recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children
                     if isinstance(child, (dict, list)))
    return False


def parse_json_body(raw: bytes | bytearray) -> dict[str, Any]:
    """The request body as a JSON object, or an APIError naming what is wrong with it. Refuses
    what a standard JSON parser accepts but the rest of the path cannot carry: NaN/Infinity,
    numbers that overflow a double, nesting deeper than MAX_JSON_DEPTH, more than MAX_JSON_ITEMS
    containers/items."""
    if not raw.strip():
        raise APIError(400, "empty request body: a JSON object is expected",
                       code="invalid_json")
    if len(raw) > MAX_JSON_ITEMS and (
            raw.count(b"{") + raw.count(b"[") + raw.count(b",")) > MAX_JSON_ITEMS:
        raise APIError(400, f"the request body has more than {MAX_JSON_ITEMS} JSON objects, "
                       "arrays or items", code="invalid_json")
    try:
        body = json.loads(raw, parse_constant=_refuse_constant, parse_float=_json_number)
    except RecursionError:
        raise APIError(400, f"the request body nests objects/arrays deeper than "
                       f"{MAX_JSON_DEPTH} levels", code="invalid_json") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, int digit limit, ...
        raise APIError(400, f"malformed JSON in the request body: {exc}",
                       code="invalid_json") from None
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object", code="invalid_json")
    if json_depth_exceeds(body, MAX_JSON_DEPTH):
        raise APIError(400, f"the request body nests objects/arrays deeper than "
                       f"{MAX_JSON_DEPTH} levels", code="invalid_json")
    return body


def first_lone_surrogate(value: Any, path: str = "") -> str | None:
    """The parameter path of the first string holding a lone UTF-16 surrogate (``"\\ud800"``
    parses, but cannot be encoded as UTF-8 to forward)."""
    stack = [(value, path)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return where or None
        elif isinstance(item, dict):
            stack.extend((v, f"{where}.{k}" if where else str(k)) for k, v in item.items())
        elif isinstance(item, list):
            stack.extend((v, f"{where}[{i}]") for i, v in enumerate(item))
    return None


def encode_upstream(body: dict[str, Any]) -> bytes:
    """The body to forward, as UTF-8 JSON (one encode; the front end sends these bytes)."""
    try:
        return json.dumps(body, ensure_ascii=False, separators=(",", ":"),
                          allow_nan=False).encode("utf-8")
    except UnicodeEncodeError:
        param = first_lone_surrogate(body)
        raise APIError(400, f"{param + ': ' if param else ''}the text contains a lone UTF-16 "
                       "surrogate (an unpaired \\ud800-\\udfff escape), which is not valid "
                       "Unicode", param=param, code="invalid_value") from None


def strip_client_uuids(messages: list[dict[str, Any]]) -> int:
    """Remove client-supplied multimodal ``uuid``s from content parts, in place; how many.

    vLLM uses a part's ``uuid`` as the multimodal cache key when given (and then trusts it over
    the content), so a client that knows or guesses another client's uuid could plant or read
    that client's cached video features. Without it vLLM hashes the content itself."""
    removed = 0
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and "uuid" in part:
                    del part["uuid"]
                    removed += 1
    return removed


def canonical_earlytom(overrides: dict[str, Any], cfg: EarlyTomConfig, defaults: EarlyTomConfig,
                       server_keys: Collection[str]) -> dict[str, Any]:
    """The request's ``earlytom`` settings in one canonical form, for ``mm_processor_kwargs``.

    vLLM's multimodal cache key hashes the request's ``mm_processor_kwargs`` as given (key order
    and number spelling included), so equal settings sent differently would never share cached
    video features. The form sent: the keys the request set, sorted, each with its *effective*
    value (``request_config`` already validated and normalised it: ``1`` -> ``1.0``, a list of
    layers), minus the keys whose value equals the server-wide setting. Only keys configured
    server-wide (``server_keys``: ``--compression`` and its shortcuts, which the backends run) are
    dropped when equal: for the others the engine's family defaults may differ from the front
    end's (Qwen2.5-VL prunes after other layers), so they are kept."""
    effective = cfg.to_dict()
    server = defaults.to_dict()
    return {key: effective[key] for key in sorted(overrides)
            if not (key in server_keys and effective[key] == server[key])}


def ask_for_usage(body: dict[str, Any], upstream: dict[str, Any], *, stream: bool) -> bool:
    """Make a streamed request ask the backend for usage (the front end counts tokens from it);
    True when the client did not ask for it (the relay then drops the usage-only chunk)."""
    if not stream:
        return False
    client_opts = body.get("stream_options") or {}
    upstream["stream_options"] = {**client_opts, "include_usage": True}
    return not client_opts.get("include_usage")


@dataclass
class Upstream:
    """What is sent to the backend: the encoded body, and how to route and relay it."""

    content: bytes
    strip_usage: bool = False
    key: str | None = None  # media affinity key (see proxy.py)


@dataclass
class Labels:
    model: str = "unknown"
    method: str = "earlytom"


@dataclass
class Prepared:
    body: dict[str, Any]
    frames: list[int] = field(default_factory=list)  # frames of each checked video
    images: int = 0  # image parts forwarded as images
    media_keys: list[str] = field(default_factory=list)  # content digest of each video


# --------------------------------------------------------------------------------------------------
# The app


class ClientGone(Exception):
    """The client disconnected before the response started."""


class RelayResponse(StreamingResponse):
    """A streaming response with a cleanup hook that always runs (shielded from cancellation),
    and the admission tickets it releases when it is over."""

    def __init__(self, content: AsyncIterator[bytes], *, on_close: Any,
                 tickets: list[Ticket] | None = None, **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self._on_close = on_close
        self.tickets: list[Ticket] = tickets if tickets is not None else []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                try:
                    await self._on_close()
                finally:
                    for ticket in self.tickets:
                        ticket.release()


class FrontEnd:
    """State and request handling behind the routes."""

    def __init__(
        self,
        settings: Settings,
        *,
        command_factory: CommandFactory | None = None,
        supervisor_env: dict[str, str] | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.default_cfg = settings.earlytom_config
        self.pool = BackendPool(
            settings.backends,
            metrics=self.metrics,
            health_interval=settings.health_interval,
            health_timeout=settings.backend_health_timeout,
            request_timeout=settings.request_timeout,
            api_key=(settings.backend_api_key.get_secret_value()
                     if settings.backend_api_key else None),
            max_in_flight=settings.max_in_flight,
            backend_max_in_flight=settings.backend_max_in_flight,
        )
        self.media = MediaProcessor(MediaPolicy.from_settings(settings))
        self.supervisor: BackendSupervisor | None = None
        if settings.spawns_backend:
            self.supervisor = BackendSupervisor(settings, self.pool,
                                                command_factory=command_factory,
                                                env=supervisor_env)
        self._api_key = settings.api_key.get_secret_value().encode() if settings.api_key else None
        self.admission = Admission(
            max_in_flight=settings.max_in_flight, max_queued=settings.max_queued,
            queue_timeout=settings.queue_timeout, max_bytes=settings.buffered_bytes_limit)
        self.active_requests = 0  # HTTP requests inside the app (the request guard counts)
        self.draining = False  # SIGTERM seen: new requests get 503
        self.closing = False  # the drain's grace is over: streams end now

    # -- lifecycle --------------------------------------------------------------------------------
    async def startup(self) -> None:
        if self.settings.spawns_backend:
            self.settings.resolved_media_dir().mkdir(parents=True, exist_ok=True)
        await self.pool.start()
        if self.supervisor is not None:
            await self.supervisor.start()

    async def shutdown(self) -> None:
        if self.supervisor is not None:
            await self.supervisor.stop()
        await self.pool.stop()
        await self.media.aclose()

    # -- auth -------------------------------------------------------------------------------------
    def check_auth(self, request: Request) -> None:
        if self._api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        ok = scheme.lower() == "bearer" and hmac.compare_digest(
            token.strip().encode(), self._api_key)
        if not ok:
            raise APIError(401, "missing or invalid API key (send 'Authorization: Bearer <key>')",
                           code="invalid_api_key", headers={"www-authenticate": "Bearer"})

    # -- parsing ----------------------------------------------------------------------------------
    def declared_length(self, request: Request) -> int | None:
        """The request's Content-Length (413 beyond the body limit; 400 if not a number)."""
        declared = request.headers.get("content-length")
        if declared is None:
            return None
        if not declared.isascii() or not declared.strip().isdigit():
            raise APIError(400, "invalid Content-Length header", code="invalid_request",
                           headers={"connection": "close"})
        length = int(declared)
        limit = self.settings.request_body_limit
        if length > limit:
            raise APIError(413, f"request body larger than {limit} bytes",
                           code="request_too_large", headers={"connection": "close"})
        return length

    async def read_json(self, request: Request, *, declared: int | None,
                        deadline: float | None = None) -> dict[str, Any]:
        """Read the body (within the body limit, ``body_timeout`` and what is left of the
        request's time cap) and parse it."""
        limit = self.settings.request_body_limit

        async def read() -> bytearray:
            # one buffer, sized up front when the length is declared (no regrowth copies)
            buf = bytearray(declared) if declared else bytearray()
            size = 0
            async for chunk in request.stream():
                end = size + len(chunk)
                if end > limit:
                    raise APIError(413, f"request body larger than {limit} bytes",
                                   code="request_too_large", headers={"connection": "close"})
                if end <= len(buf):
                    buf[size:end] = chunk
                else:
                    del buf[size:]
                    buf += chunk
                size = end
            del buf[size:]
            return buf

        timeout = self.settings.body_timeout
        if deadline is not None:
            timeout = max(0.0, min(timeout, deadline - time.monotonic()))
        try:
            raw = await asyncio.wait_for(read(), timeout)
        except asyncio.TimeoutError:
            raise APIError(408, f"the request body did not arrive within {timeout:g} s",
                           code="request_timeout", headers={"connection": "close"}) from None
        return parse_json_body(raw)

    def parse_earlytom(self, req: ChatCompletionRequest, body: dict[str, Any]
                       ) -> tuple[dict[str, Any], bool, EarlyTomConfig]:
        """(overrides to forward, frames_as_video, effective config)."""
        overrides: dict[str, Any] = {}
        mm = body.get("mm_processor_kwargs")
        if mm is not None:
            for key in mm:
                if key != "earlytom":
                    raise APIError(400, f"mm_processor_kwargs.{key} is not accepted (only "
                                   "'earlytom')", param=f"mm_processor_kwargs.{key}",
                                   code="invalid_value")
            inner = mm.get("earlytom")
            if inner is not None and not isinstance(inner, dict):
                raise APIError(400, "mm_processor_kwargs.earlytom must be an object",
                               param="mm_processor_kwargs.earlytom", code="invalid_value")
            overrides.update(inner or {})
        overrides.update(req.earlytom or {})
        frames_as_video = overrides.pop("frames_as_video", self.settings.frames_as_video)
        if not isinstance(frames_as_video, bool):
            raise APIError(400, f"earlytom.frames_as_video must be true or false, got "
                           f"{frames_as_video!r}", param="earlytom.frames_as_video",
                           code="invalid_value")
        try:  # the engine's processor validates with the same function
            cfg = request_config(self.default_cfg, overrides)
        except EarlyTomConfigError as exc:
            raise APIError(400, f"invalid earlytom setting: {exc}", param=exc.field,
                           code="invalid_value") from None
        except (TypeError, ValueError, OverflowError) as exc:  # e.g. a number past float range
            raise APIError(400, f"invalid earlytom setting: {exc}", param="earlytom",
                           code="invalid_value") from None
        return overrides, frames_as_video, cfg

    def resolve_model(self, requested: str | None) -> str:
        if not self.pool.ready:
            raise APIError(503, "no backend is ready yet (see /health)",
                           code="backend_unavailable")
        ids = [str(m.get("id")) for m in self.pool.models()]
        if requested is None:
            return ids[0]
        if requested not in ids:
            raise APIError(404, f"the model '{requested}' does not exist (available: "
                           f"{', '.join(ids)})", param="model", code="model_not_found")
        return requested

    def _label_model(self, requested: Any) -> str:
        """The model label for a request that may fail validation (known names only)."""
        ids = [str(m.get("id")) for m in self.pool.models()]
        if requested is None and ids:
            return ids[0]
        return requested if isinstance(requested, str) and requested in ids else "unknown"

    async def prepare(self, body: dict[str, Any], *, frames_as_video: bool) -> Prepared:
        """Check and rewrite every media part; collect the videos' frame counts."""
        frames: list[int] = []
        keys: list[str] = []
        images = 0
        messages: list[dict[str, Any]] = []
        frame_slots: list[tuple[int, int, str, str]] = []  # (msg, part, url, param)
        try:
            for i, message in enumerate(body["messages"]):
                message = dict(message)
                content = message.get("content")
                if isinstance(content, list):
                    parts: list[Any] = []
                    for j, part in enumerate(content):
                        kind = part["type"]
                        if kind == "video_url":
                            param = f"messages[{i}].content[{j}].video_url.url"
                            video = await self.media.video(part["video_url"]["url"], param=param)
                            frames.append(video.frames)
                            keys.append(video.key)
                            parts.append({**part, "video_url": {**part["video_url"],
                                                                "url": video.url}})
                        elif kind == "image_url":
                            param = f"messages[{i}].content[{j}].image_url.url"
                            url = part["image_url"]["url"]
                            if frames_as_video:
                                frame_slots.append((i, len(parts), url, param))
                                parts.append(None)  # placeholder
                            else:
                                new = await self.media.image(url, param=param)
                                images += 1
                                parts.append({**part, "image_url": {**part["image_url"],
                                                                    "url": new}})
                        else:
                            parts.append(part)
                    message["content"] = parts
                messages.append(message)
            if frame_slots:
                video: PreparedVideo = await self.media.frames_as_video(
                    [(url, param) for _, _, url, param in frame_slots])
                frames.append(video.frames)
                keys.append(video.key)
                first_msg, first_part = frame_slots[0][:2]
                messages[first_msg]["content"][first_part] = {
                    "type": "video_url", "video_url": {"url": video.url}}
                for m in messages:
                    if isinstance(m.get("content"), list):
                        m["content"] = [p for p in m["content"] if p is not None]
                        if not m["content"]:
                            m["content"] = ""
        except MediaError as exc:
            # The traceback holds the frames that decoded the media (and the body): raised from
            # a worker thread it is also in a reference cycle through anyio's frames, which would
            # keep them until a full gc pass. Drop it: the error is the client's, not a bug.
            exc.__traceback__ = None
            raise APIError(exc.status, exc.message, param=exc.param, code=exc.code) from None
        return Prepared(body={**body, "messages": messages}, frames=frames, images=images,
                        media_keys=keys)

    # -- the chat route ---------------------------------------------------------------------------
    def _refuse(self, labels: Labels, exc: APIError) -> Response:
        self.metrics.requests.labels(labels.model, labels.method, str(exc.status)).inc()
        return exc.response()

    async def chat(self, request: Request) -> Response:
        return await self._admitted(request, self._chat)

    async def completions(self, request: Request) -> Response:
        return await self._admitted(request, self._completions)

    async def _admitted(self, request: Request, handler: Any, refuse: Any = None) -> Response:
        """Auth, the declared length, and an admission slot before ``handler`` reads the body;
        the slot is released when the response is over (a stream: when it ends). ``refuse``
        (labels, APIError) -> Response answers and counts a refusal (default: as a request)."""
        t0 = time.perf_counter()
        deadline = time.monotonic() + self.settings.max_request_seconds
        labels = Labels(method=self.default_cfg.effective_method)
        refuse = refuse or self._refuse
        try:
            self.check_auth(request)
            declared = self.declared_length(request)
        except APIError as exc:
            return refuse(labels, exc)
        # A slot and room for the body BEFORE the body is read (see admission.py).
        weight = declared if declared is not None else self.settings.request_body_limit
        self.metrics.queued.inc()
        try:
            ticket = await self.admission.acquire(weight)
        except Overloaded as exc:
            self.metrics.rejected.labels(exc.reason).inc()
            return refuse(labels, APIError(
                429, exc.message, code="server_busy",
                headers={"retry-after": str(self.settings.retry_after),
                         "connection": "close"}))
        finally:
            self.metrics.queued.dec()
        streaming = False
        try:
            response = await handler(request, t0, deadline, labels, declared)
            streaming = isinstance(response, RelayResponse)
            if streaming:
                response.tickets.append(ticket)
            return response
        finally:
            if not streaming:
                ticket.release()

    async def _read_request(self, request: Request, labels: Labels, declared: int | None,
                            deadline: float, schema: Any, rejected: dict[str, str]
                            ) -> tuple[dict[str, Any], Any]:
        """The body, parsed and validated against ``schema`` (fields in ``rejected`` refused),
        with ``labels.model`` set to the model it resolves to."""
        body = await self.read_json(request, declared=declared, deadline=deadline)
        return body, self._validate(body, labels, schema, rejected)

    def _validate(self, body: dict[str, Any], labels: Labels, schema: Any,
                  rejected: dict[str, str]) -> Any:
        labels.model = self._label_model(body.get("model"))
        for name, why in rejected.items():
            if body.get(name) is not None:  # null: as if absent (what the schema says)
                raise APIError(400, why, param=name, code="invalid_value")
        try:
            req = schema.model_validate(body)
        except ValidationError as exc:
            raise validation_error(exc.errors()) from None
        labels.model = self.resolve_model(req.model)
        return req

    def _video_settings(self, upstream: dict[str, Any], prepared: Prepared,
                        overrides: dict[str, Any], cfg: EarlyTomConfig) -> str | None:
        """Finish a prepared messages body: client uuids out, the canonical ``earlytom``
        settings in (none for an image-only request: they would only split its images' cache
        entries; see canonical_earlytom); the media affinity key (the first video's)."""
        strip_client_uuids(upstream["messages"])
        earlytom = canonical_earlytom(overrides, cfg, self.default_cfg, self.settings.compression)
        if earlytom and (prepared.frames or not prepared.images):
            upstream["mm_processor_kwargs"] = {"earlytom": earlytom}
        # the conversation's first video decides the backend (its caches hold the video)
        return prepared.media_keys[0] if prepared.media_keys else None

    async def _chat(self, request: Request, t0: float, deadline: float, labels: Labels,
                    declared: int | None) -> Response:
        try:
            body, req = await self._read_request(request, labels, declared, deadline,
                                                 ChatCompletionRequest, REJECTED_FIELDS)
            overrides, frames_as_video, cfg = self.parse_earlytom(req, body)
            labels.method = cfg.effective_method
        except APIError as exc:
            return self._refuse(labels, exc)
        held = [body]  # the build step takes it: only the encoded bytes outlive it
        del body

        async def build() -> Upstream:
            body = held.pop()
            prepared = await self.unless_disconnected(
                request, self.prepare(body, frames_as_video=frames_as_video), deadline)
            upstream = prepared.body
            upstream.pop("earlytom", None)
            upstream.pop("mm_processor_kwargs", None)
            upstream.pop("request_id", None)  # vLLM's id comes from X-Request-Id
            key = self._video_settings(upstream, prepared, overrides, cfg)
            upstream["model"] = labels.model
            strip_usage = ask_for_usage(body, upstream, stream=req.stream)
            return Upstream(encode_upstream(upstream), strip_usage=strip_usage, key=key)

        return await self._forward(request, t0, deadline, labels, build, path=CHAT_PATH,
                                   stream=req.stream, client_fields=req.earlytom)

    async def _completions(self, request: Request, t0: float, deadline: float, labels: Labels,
                           declared: int | None) -> Response:
        """``POST /v1/completions``: a text prompt (no media: nothing to compress, so the method
        label is ``none``), relayed as chat is (limits, streaming, errors, metrics)."""
        labels.method = "none"
        try:
            body, req = await self._read_request(request, labels, declared, deadline,
                                                 CompletionRequest, COMPLETION_REJECTED_FIELDS)
        except APIError as exc:
            return self._refuse(labels, exc)
        held = [body]
        del body

        async def build() -> Upstream:
            body = held.pop()
            upstream = {k: v for k, v in body.items() if k != "request_id"}
            upstream["model"] = labels.model
            strip_usage = ask_for_usage(body, upstream, stream=req.stream)
            return Upstream(encode_upstream(upstream), strip_usage=strip_usage)

        return await self._forward(request, t0, deadline, labels, build,
                                   path=COMPLETIONS_PATH, stream=req.stream)

    async def _forward(self, request: Request, t0: float, deadline: float, labels: Labels,
                       build: Any, *, path: str, stream: bool,
                       client_fields: dict[str, Any] | None = None) -> Response:
        """Build the upstream body (``await build()``), send it, relay the answer, and count the
        request (in flight, status, latency, tokens) however it ends."""
        in_flight = self.metrics.in_flight.labels(labels.model)
        in_flight.inc()
        handed_off = False
        forwarded = False
        status = 500
        try:
            upstream: Upstream = await build()
            forwarded = True
            response, backend = await self.unless_disconnected(
                request, self._send(labels.model, upstream.content, stream=stream, path=path,
                                    key=upstream.key), deadline)
            del upstream.content
            if response.status_code != 200:
                status, resp = self._error_from_backend(response, client_fields=client_fields)
                return resp
            if stream:
                handed_off = True
                return self._stream(response, backend, labels, t0, upstream.strip_usage,
                                    deadline)
            try:
                data = response.json()
            except (ValueError, RecursionError):
                raise APIError(502, "the backend returned invalid JSON",
                               code="backend_error") from None
            elapsed = time.perf_counter() - t0
            # not a TTFT: the client saw nothing before the whole answer
            self.metrics.non_streaming.labels(labels.model, labels.method).observe(elapsed)
            self.metrics.e2e.labels(labels.model, labels.method).observe(elapsed)
            self._count_success(labels, data.get("usage") if isinstance(data, dict) else None)
            status = 200
            return Response(content=response.content, media_type="application/json")
        except APIError as exc:
            status = exc.status
            return exc.response()
        except (BackendFailed, BackendUnavailable) as exc:
            err = backend_error(exc)
            status = err.status
            return err.response()
        except ClientGone:
            status = 499  # nginx's "client closed request"; nobody reads this response
            return Response(status_code=204)
        finally:
            if not handed_off:
                in_flight.dec()
                self.metrics.requests.labels(labels.model, labels.method, str(status)).inc()
                if forwarded:
                    self.metrics.duration.labels(labels.model, labels.method).observe(
                        time.perf_counter() - t0)

    # -- tokenizer and version routes -------------------------------------------------------------
    async def _utility(self, endpoint: str, work: Any) -> Response:
        """Await ``work`` (a response) and count it under ``earlytom_utility_requests_total``;
        errors become the same OpenAI bodies as chat's."""
        try:
            response: Response = await work
        except APIError as exc:
            response = exc.response()
        except (BackendFailed, BackendUnavailable) as exc:
            response = backend_error(exc).response()
        except ClientGone:
            self.metrics.utility.labels(endpoint, "499").inc()
            return Response(status_code=204)
        self.metrics.utility.labels(endpoint, str(response.status_code)).inc()
        return response

    async def tokenizer(self, request: Request, path: str) -> Response:
        """``POST /tokenize`` and ``/detokenize``: the same auth, admission and media rules as
        chat (a chat-form ``/tokenize`` with videos has them checked and rewritten, and its
        ``earlytom`` settings forwarded, so the count is the compressed prompt's)."""
        endpoint = path.lstrip("/")

        async def handler(request: Request, t0: float, deadline: float, labels: Labels,
                          declared: int | None) -> Response:
            return await self._utility(endpoint, self._tokenizer(request, deadline, declared,
                                                                 labels, path))

        def refuse(labels: Labels, exc: APIError) -> Response:
            self.metrics.utility.labels(endpoint, str(exc.status)).inc()
            return exc.response()

        return await self._admitted(request, handler, refuse)

    async def _tokenizer(self, request: Request, deadline: float, declared: int | None,
                         labels: Labels, path: str) -> Response:
        body = await self.read_json(request, declared=declared, deadline=deadline)
        chat_form = path == TOKENIZE_PATH and body.get("messages") is not None
        schema, rejected = (
            (TokenizeChatRequest, REJECTED_FIELDS) if chat_form else
            (TokenizePromptRequest if path == TOKENIZE_PATH else DetokenizeRequest,
             TOKENIZE_PROMPT_REJECTED_FIELDS))
        req = self._validate(body, labels, schema, rejected)
        upstream = {k: v for k, v in body.items() if k not in ("earlytom", "mm_processor_kwargs")}
        upstream["model"] = labels.model
        key = None
        if chat_form:
            overrides, frames_as_video, cfg = self.parse_earlytom(req, body)
            prepared = await self.unless_disconnected(
                request, self.prepare(upstream, frames_as_video=frames_as_video), deadline)
            upstream = prepared.body
            key = self._video_settings(upstream, prepared, overrides, cfg)
        content = encode_upstream(upstream)
        del body, upstream
        response, _backend = await self.unless_disconnected(
            request, self._send(labels.model, content, stream=False, path=path, key=key),
            deadline)
        if response.status_code != 200:
            return self._error_from_backend(response, client_fields=req.earlytom)[1]
        return Response(content=response.content, media_type="application/json")

    async def version(self, request: Request) -> Response:
        """``GET /version``: the version of the vLLM serving the requests (a ready backend's)."""
        return await self._utility("version", self._version(request))

    async def _version(self, request: Request) -> Response:
        self.check_auth(request)
        backend = self.pool.pick_any()
        if backend is None:
            raise APIError(503, "no backend is ready yet (see /health)",
                           code="backend_unavailable")
        response = await self.pool.send(backend, VERSION_PATH, None, stream=False,
                                        method="GET", request_id=REQUEST_ID.get())
        if response.status_code != 200:
            return self._error_from_backend(response)[1]
        return Response(content=response.content, media_type="application/json")

    async def unless_disconnected(self, request: Request, work: Any, deadline: float) -> Any:
        """Await ``work`` unless the client disconnects first (then cancel it, closing any
        upstream connection, which makes vLLM abort the request, and raise ClientGone) or the
        request's time cap passes first (cancel it, HTTP 504)."""
        task = asyncio.ensure_future(work)

        async def disconnected() -> None:
            while (await request.receive())["type"] != "http.disconnect":
                pass

        watcher = asyncio.ensure_future(disconnected())
        try:
            await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED,
                               timeout=max(0.0, deadline - time.monotonic()))
        except BaseException:
            task.cancel()
            raise
        finally:
            watcher.cancel()
            with contextlib.suppress(BaseException):
                await watcher
        if task.done():
            try:
                return task.result()
            finally:
                # break task -> exception -> traceback -> this frame -> task: that cycle would
                # keep the request's body and decoded media alive until a full gc pass
                task = watcher = None
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        gone = watcher.done() and not watcher.cancelled() and watcher.exception() is None
        task = watcher = None
        if gone:
            raise ClientGone
        raise APIError(504, f"the request took longer than max_request_seconds "
                       f"({self.settings.max_request_seconds:g} s)", code="request_timeout")

    async def _send(self, model: str, content: bytes, *, stream: bool, path: str = CHAT_PATH,
                    key: str | None = None) -> tuple[Any, Backend]:
        """Send to the backend the pool picks (``key``: the request's media affinity key);
        retry elsewhere if it cannot be reached. A streamed 200 response stays open and keeps
        the backend's in-flight count."""
        tried: set[int] = set()
        last: BackendUnavailable | None = None
        while True:
            backend = self.pool.pick(model, tried, key=key)
            if backend is None:
                if last is not None:
                    raise last
                raise APIError(503, "no backend serving this model is ready",
                               code="backend_unavailable")
            tried.add(id(backend))
            backend.in_flight += 1
            try:
                response = await self.pool.send(backend, path, content, stream=stream,
                                                request_id=REQUEST_ID.get())
            except BackendUnavailable as exc:
                backend.in_flight -= 1
                last = exc
                continue
            except BaseException:
                backend.in_flight -= 1
                raise
            if not stream or response.status_code != 200:
                backend.in_flight -= 1
            return response, backend

    def _error_from_backend(self, response: Any, *, client_fields: dict[str, Any] | None = None
                            ) -> tuple[int, JSONResponse]:
        """The backend's error in the front end's shape. ``client_fields``: the request's
        top-level ``earlytom`` object, which travelled as ``mm_processor_kwargs.earlytom``: a
        ``param`` naming one of its keys is given back under the name the client sent."""
        status = response.status_code
        if status == 500 or status < 400:
            status = 502
        body = normalize_error_body(status, response.content)
        err = body["error"]
        prefix = "mm_processor_kwargs.earlytom."
        param = err.get("param")
        if client_fields and isinstance(param, str) and param.startswith(prefix) and \
                param[len(prefix):].split(".")[0].split("[")[0] in client_fields:
            renamed = "earlytom." + param[len(prefix):]
            err["param"] = renamed
            if err["message"].startswith(param):
                err["message"] = renamed + err["message"][len(param):]
        return status, JSONResponse(body, status_code=status)

    def _count_success(self, labels: Labels, usage: Any) -> None:
        m = self.metrics
        if isinstance(usage, dict):
            prompt = usage.get("prompt_tokens")
            completion = usage.get("completion_tokens")
            if isinstance(prompt, int) and prompt >= 0:
                m.prompt_tokens.labels(labels.model, labels.method).inc(prompt)
            if isinstance(completion, int) and completion >= 0:
                m.output_tokens.labels(labels.model, labels.method).inc(completion)

    def _stream(self, response: Any, backend: Backend, labels: Labels, t0: float,
                strip_usage: bool, deadline: float) -> RelayResponse:
        state = StreamState()
        metrics = self.metrics
        pool = self.pool
        outcome = {"status": 499}  # until the relay finishes: the client went away
        closed = False
        recorded = False
        tickets: list[Ticket] = []
        front = self

        async def events() -> AsyncIterator[bytes]:
            observed = False
            try:
                async for event in relay_sse(response, state, strip_usage=strip_usage):
                    if not observed and state.first_content_at is not None:
                        observed = True
                        metrics.ttft.labels(labels.model, labels.method).observe(
                            state.first_content_at - t0)
                    if state.done:  # the last event: settle the books before the client sees it
                        settle()
                        yield event
                        return
                    yield event
                    cut = None
                    if front.closing:
                        cut = APIError(503, "the server is shutting down and its grace period "
                                       "is over; the answer is incomplete",
                                       code="server_draining")
                    elif time.monotonic() > deadline:
                        cut = APIError(504, "the request took longer than max_request_seconds "
                                       f"({front.settings.max_request_seconds:g} s); the answer "
                                       "is incomplete", code="request_timeout")
                    if cut is not None:
                        outcome["status"] = cut.status
                        log.warning("stream cut: %s", cut.message)
                        yield cut.sse()
                        yield b"data: [DONE]\n\n"
                        return
            except BackendFailed as exc:
                if not exc.timeout:
                    pool.report_failure(backend, str(exc))
                err = backend_error(exc)
                outcome["status"] = err.status
                log.warning("stream from %s failed: %s", backend.url, exc)
                yield err.sse()
                yield b"data: [DONE]\n\n"
                return
            settle()  # the backend ended with an error event (no [DONE])

        def settle() -> None:
            if state.error_status is not None:
                outcome["status"] = state.error_status
            else:
                outcome["status"] = 200
                self._count_success(labels, state.usage)
            record()

        def record() -> None:
            nonlocal recorded
            if recorded:
                return
            recorded = True
            # The slot is free once the answer is complete, before the client can see [DONE]
            # and send its next request (which must not meet a 429 from this one).
            for ticket in tickets:
                ticket.release()
            metrics.in_flight.labels(labels.model).dec()
            metrics.requests.labels(labels.model, labels.method, str(outcome["status"])).inc()
            elapsed = time.perf_counter() - t0
            metrics.duration.labels(labels.model, labels.method).observe(elapsed)
            if outcome["status"] == 200:
                metrics.e2e.labels(labels.model, labels.method).observe(elapsed)

        async def close() -> None:
            # Runs once the response is over, however it ended (also if the client disconnected
            # before the first byte): closing the upstream response cancels the request in vLLM.
            nonlocal closed
            if closed:
                return
            closed = True
            await response.aclose()
            backend.in_flight -= 1
            record()

        return RelayResponse(
            events(), on_close=close, tickets=tickets, media_type="text/event-stream",
            headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
        )

    # -- other routes -----------------------------------------------------------------------------
    def authorized(self, request: Request) -> bool:
        try:
            self.check_auth(request)
        except APIError:
            return False
        return True

    def health(self, request: Request) -> Response:
        if self.settings.protect_health_metrics:
            self.check_auth(request)
        # Backend details (private URLs, pids) only for callers holding the key, if there is one.
        detailed = self.authorized(request)
        backends = [b.describe() for b in self.pool.backends]
        extra: dict[str, Any] = {"backends": backends} if detailed else {}
        if self.supervisor is not None and detailed:
            extra["supervisor"] = self.supervisor.status()
        if self.pool.ready:
            return JSONResponse({"status": "ready", **extra})
        reasons = ("; ".join(f"{b['url']}: {b['last_error']}" for b in backends) or
                   "no backends") if detailed else "see the server log"
        body = error_body(503, f"no backend is ready ({reasons})", code="backend_unavailable")
        return JSONResponse({"status": "unavailable", **body, **extra}, status_code=503)

    def metrics_route(self, request: Request) -> Response:
        if self.settings.protect_health_metrics:
            self.check_auth(request)
        return Response(self.metrics.render(), media_type=CONTENT_TYPE)

    def models(self, request: Request) -> Response:
        self.check_auth(request)
        if not self.pool.ready:
            raise APIError(503, "no backend is ready yet (see /health)",
                           code="backend_unavailable")
        return JSONResponse({"object": "list", "data": self.pool.models()})


def create_app(
    settings: Settings | None = None,
    *,
    command_factory: CommandFactory | None = None,
    supervisor_env: dict[str, str] | None = None,
) -> FastAPI:
    """Build the front end. Without ``settings.backends`` the app starts (on start-up) and stops
    (on shutdown) its own vLLM backend; ``command_factory(port)`` replaces the vLLM command
    (tests)."""
    settings = settings or Settings()
    front = FrontEnd(settings, command_factory=command_factory, supervisor_env=supervisor_env)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await front.startup()
        try:
            yield
        finally:
            await front.shutdown()

    # The schema is built either way (tests check the API against it); served unless turned off.
    app = FastAPI(title="earlytom-vllm", docs_url=None, redoc_url=None, lifespan=lifespan,
                  openapi_url=api.OPENAPI_PATH if settings.expose_openapi else None)
    app.state.front = front
    app.state.settings = settings
    app.add_middleware(RequestGuard, state=lambda: front)
    if settings.expose_openapi:
        api.install_docs(app)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = api.build_openapi(app, settings, __version__)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> Response:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        return validation_error(list(exc.errors()), drop_prefix=1).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        if exc.status_code == 404:
            message = f"no route {request.method} {request.url.path}"
        return JSONResponse(error_body(exc.status_code, message), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    # Unexpected exceptions are the request guard's: a normal 500 that keeps the connection.

    @app.post(CHAT_PATH, **api.CHAT)
    async def chat_completions(request: Request) -> Response:
        return await front.chat(request)

    @app.post(COMPLETIONS_PATH, **api.COMPLETIONS)
    async def completions(request: Request) -> Response:
        return await front.completions(request)

    @app.post(TOKENIZE_PATH, **api.TOKENIZE)
    async def tokenize(request: Request) -> Response:
        return await front.tokenizer(request, TOKENIZE_PATH)

    @app.post(DETOKENIZE_PATH, **api.DETOKENIZE)
    async def detokenize(request: Request) -> Response:
        return await front.tokenizer(request, DETOKENIZE_PATH)

    @app.get(VERSION_PATH, **api.VERSION)
    async def version(request: Request) -> Response:
        return await front.version(request)

    @app.get("/v1/models", **api.MODELS)
    async def list_models(request: Request) -> Response:
        return front.models(request)

    @app.get("/health", **api.HEALTH)
    async def health(request: Request) -> Response:
        return front.health(request)

    @app.get("/metrics", **api.METRICS)
    async def metrics(request: Request) -> Response:
        return front.metrics_route(request)

    return app
