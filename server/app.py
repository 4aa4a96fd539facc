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
500 or a stack trace. ``/openapi.json``, ``/docs`` and ``/redoc`` publish all this (``openapi.py``).

The modules behind the routes: ``frontend.py`` (request handling: auth, admission, forwarding),
``prepare.py`` (reading, checking and rewriting bodies), ``relay.py`` (streamed answers).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from earlytom_server import openapi as api
from earlytom_server.errors import APIError, error_body
from earlytom_server.frontend import (
    CHAT_PATH,
    COMPLETIONS_PATH,
    DETOKENIZE_PATH,
    TOKENIZE_PATH,
    VERSION_PATH,
    FrontEnd,
)
from earlytom_server.guard import RequestGuard
from earlytom_server.prepare import validation_error
from earlytom_server.settings import Settings
from earlytom_server.supervisor import CommandFactory
from earlytom_vllm import __version__


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
