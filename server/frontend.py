"""The front end's request handling (:class:`FrontEnd`), behind the routes of ``app.py``.

Each relayed route goes the same way: auth and the declared length, an admission slot (429 when
full) before the body is read, the body read, validated and rewritten (``prepare.py``), sent to
the backend the pool picks (retried elsewhere when one cannot be reached; a request about a video
goes to the backend its content hashes to: ``proxy.py``), and the answer relayed -- JSON, or a
stream (``relay.py``) -- with every outcome counted in the metrics. A client that goes away
cancels the work and the upstream request; the request's time cap ends it with a 504.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from earlytom_server.admission import Admission, Overloaded
from earlytom_server.errors import REQUEST_ID, APIError, backend_error_response, error_body
from earlytom_server.media import MediaPolicy, MediaProcessor
from earlytom_server.metrics import CONTENT_TYPE, Metrics
from earlytom_server.prepare import (
    Preparer,
    Upstream,
    ask_for_usage,
    encode_upstream,
    validation_error,
)
from earlytom_server.proxy import (
    BackendFailed,
    BackendPool,
    BackendUnavailable,
    backend_error,
)
from earlytom_server.relay import Labels, RelayResponse, StreamRelay, count_tokens
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

log = logging.getLogger("earlytom_server.app")

CHAT_PATH = "/v1/chat/completions"
COMPLETIONS_PATH = "/v1/completions"
TOKENIZE_PATH = "/tokenize"
DETOKENIZE_PATH = "/detokenize"
VERSION_PATH = "/version"


class ClientGone(Exception):
    """The client disconnected before the response started."""



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
        self.media = MediaProcessor(MediaPolicy.from_settings(settings),
                                    vllm_version=self.pool.vllm_version)
        self.prepare = Preparer(settings, self.media)
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

    def model_card(self, model: str) -> dict[str, Any] | None:
        """``model``'s ``/v1/models`` entry from a ready backend."""
        return next((m for m in self.pool.models() if str(m.get("id")) == model), None)

    def _label_model(self, requested: Any) -> str:
        """The model label for a request that may fail validation (known names only)."""
        ids = [str(m.get("id")) for m in self.pool.models()]
        if requested is None and ids:
            return ids[0]
        return requested if isinstance(requested, str) and requested in ids else "unknown"

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
            declared = self.prepare.declared_length(request)
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
        body = await self.prepare.read_json(request, declared=declared, deadline=deadline)
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

    async def _chat(self, request: Request, t0: float, deadline: float, labels: Labels,
                    declared: int | None) -> Response:
        try:
            body, req = await self._read_request(request, labels, declared, deadline,
                                                 ChatCompletionRequest, REJECTED_FIELDS)
            overrides, frames_as_video, cfg = self.prepare.parse_earlytom(
                req, body, self.model_card(labels.model))
            labels.method = cfg.effective_method
        except APIError as exc:
            return self._refuse(labels, exc)
        held = [body]  # the build step takes it: only the encoded bytes outlive it
        del body

        async def build() -> Upstream:
            body = held.pop()
            prepared = await self.unless_disconnected(
                request, self.prepare.prepare(body, frames_as_video=frames_as_video), deadline)
            upstream = prepared.body
            upstream.pop("earlytom", None)
            upstream.pop("mm_processor_kwargs", None)
            upstream.pop("request_id", None)  # vLLM's id comes from X-Request-Id
            key = self.prepare.video_settings(upstream, prepared, overrides, cfg)
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
                request, self.pool.send_picked(labels.model, path, upstream.content,
                                               stream=stream, key=upstream.key), deadline)
            del upstream.content
            if response.status_code != 200:
                status, resp = backend_error_response(response, client_fields=client_fields)
                return resp
            if stream:
                handed_off = True
                return StreamRelay(
                    response, backend, pool=self.pool, metrics=self.metrics, labels=labels,
                    t0=t0, deadline=deadline, strip_usage=upstream.strip_usage,
                    closing=lambda: self.closing,
                    max_request_seconds=self.settings.max_request_seconds).response()
            try:
                data = response.json()
            except (ValueError, RecursionError):
                raise APIError(502, "the backend returned invalid JSON",
                               code="backend_error") from None
            elapsed = time.perf_counter() - t0
            # not a TTFT: the client saw nothing before the whole answer
            self.metrics.non_streaming.labels(labels.model, labels.method).observe(elapsed)
            self.metrics.e2e.labels(labels.model, labels.method).observe(elapsed)
            count_tokens(self.metrics, labels, data.get("usage") if isinstance(data, dict) else None)
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
        body = await self.prepare.read_json(request, declared=declared, deadline=deadline)
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
            overrides, frames_as_video, cfg = self.prepare.parse_earlytom(
                req, body, self.model_card(labels.model))
            prepared = await self.unless_disconnected(
                request, self.prepare.prepare(upstream, frames_as_video=frames_as_video), deadline)
            upstream = prepared.body
            key = self.prepare.video_settings(upstream, prepared, overrides, cfg)
        content = encode_upstream(upstream)
        del body, upstream
        response, _backend = await self.unless_disconnected(
            request, self.pool.send_picked(labels.model, path, content, stream=False, key=key),
            deadline)
        if response.status_code != 200:
            return backend_error_response(response, client_fields=req.earlytom)[1]
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
            return backend_error_response(response)[1]
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
