"""The published API: the OpenAPI document at ``/openapi.json`` and its pages (``/docs``,
``/redoc``), served like vLLM's unless ``--no-expose-openapi``.

The document says what the front end accepts and answers: the request bodies are the models of
``schemas.py`` (the same ones that validate requests), every route lists the statuses it can
answer with their bodies (an OpenAI error body for each error), ``/metrics`` is Prometheus text,
a streamed answer is ``text/event-stream``. With ``--api-key`` the routes that need the key say so
(a bearer scheme). ``tests/server/test_frontend_schemathesis.py`` holds the server to it.

The pages work offline: Swagger UI's and ReDoc's script and style are served from the
``fastapi-offline`` package's copy (no CDN, no web font).
"""

from __future__ import annotations

from importlib.resources import files
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, TypeAdapter
from starlette.staticfiles import StaticFiles

from earlytom_server.schemas import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    DetokenizeRequest,
    DetokenizeResponse,
    ErrorResponse,
    HealthResponse,
    ModelList,
    TokenizeChatRequest,
    TokenizePromptRequest,
    TokenizeResponse,
    VersionResponse,
)
from earlytom_server.settings import Settings

OPENAPI_PATH = "/openapi.json"
DOCS_PATH = "/docs"
REDOC_PATH = "/redoc"
ASSETS_PATH = "/docs/assets"

#: Why each error status is answered (every one with an OpenAI error body).
ERRORS: dict[int, str] = {
    400: "invalid request: malformed JSON, a field of the wrong type or out of range, a media "
         "URL whose bytes are not a readable image or video, or the backend's own refusal",
    401: "missing or wrong API key (only when the server has one: --api-key)",
    403: "a media URL that may not be fetched (a private address, a path outside --media-dir)",
    404: "unknown model, or a media file that does not exist",
    408: "the request body did not arrive within --body-timeout",
    413: "request body or media larger than the limits",
    429: "at capacity: retry after Retry-After seconds",
    431: "too many or too large request headers",
    499: "the client went away before the answer (logged and counted; nobody receives it)",
    502: "the backend failed or answered garbage",
    503: "no backend ready, or the server is draining (then with Retry-After)",
    504: "the backend or --max-request-seconds time limit passed",
}
#: Statuses every route can answer (the request guard's), besides its own.
GUARD = (431, 503)
#: A relayed POST route's statuses (auth, admission, body reading, the backend).
RELAYED = (400, 401, 404, 408, 413, 429, 499, 502, 504)

_REQUEST_ID = {"X-Request-Id": {
    "description": "the request's id (the client's when it sent a sane one); in every log line "
                   "about it, and in the error body", "schema": {"type": "string"}}}
#: A streamed answer: one schema per event (OpenAPI 3.1 reads an event stream's schema so).
_SSE = {"text/event-stream": {"schema": {
    "type": "object", "required": ["data"],
    "properties": {"data": {"type": "string", "minLength": 1}},
    "description": "one server-sent event: `data: <chunk JSON>`, the last one `data: [DONE]`; "
    "a failure after the first byte is reported as one `data: <error body JSON>` event"}}}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The error responses ``codes`` (and the guard's), each with the OpenAI error body."""
    out: dict[int | str, dict[str, Any]] = {}
    for code in sorted({*codes, *GUARD}):
        entry: dict[str, Any] = {"model": ErrorResponse, "description": ERRORS[code],
                                 "headers": _REQUEST_ID}
        if code == 429:
            entry["headers"] = {**_REQUEST_ID, "Retry-After": {
                "description": "seconds to wait", "schema": {"type": "string"}}}
        out[code] = entry
    return out


def ok(model: type[BaseModel] | None, description: str, *, streams: bool = False,
       content: dict[str, Any] | None = None) -> dict[int | str, dict[str, Any]]:
    entry: dict[str, Any] = {"description": description, "headers": _REQUEST_ID}
    if model is not None:
        entry["model"] = model
    if streams:
        entry["content"] = dict(_SSE)
    if content is not None:
        entry["content"] = content
    return {200: entry}


def body(ref: str) -> dict[str, Any]:
    """``openapi_extra`` declaring a JSON request body (the route reads its body itself)."""
    return {"requestBody": {"required": True, "content": {"application/json": {
        "schema": {"$ref": f"#/components/schemas/{ref}"}}}}}


#: Per route: the FastAPI route keyword arguments that publish it.
CHAT = {
    "openapi_extra": body("ChatCompletionRequest"),
    "responses": {**ok(ChatCompletionResponse, "the completion (JSON), or server-sent events "
                       "with stream: true", streams=True),
                  **errors(*RELAYED, 403)},
}
COMPLETIONS = {
    "openapi_extra": body("CompletionRequest"),
    "responses": {**ok(CompletionResponse, "vLLM's completion (JSON), or server-sent events "
                       "with stream: true", streams=True), **errors(*RELAYED)},
}
TOKENIZE = {
    "openapi_extra": body("TokenizeRequest"),
    "responses": {**ok(TokenizeResponse, "vLLM's token count (a chat-form request's media "
                       "checked and compressed as chat's)"), **errors(*RELAYED, 403)},
}
DETOKENIZE = {
    "openapi_extra": body("DetokenizeRequest"),
    "responses": {**ok(DetokenizeResponse, "vLLM's text of the tokens"), **errors(*RELAYED)},
}
VERSION = {"responses": {**ok(VersionResponse, "a ready backend's vLLM version"),
                         **errors(401, 502, 504)}}
MODELS = {"responses": {**ok(ModelList, "the models of the ready backends"), **errors(401)}}
HEALTH = {"responses": {
    **ok(HealthResponse, "a backend is ready (backend details only for holders of the key)"),
    **errors(401),
    503: {"model": HealthResponse, "headers": _REQUEST_ID,
          "description": "no backend is ready, or the server is draining"},
}}
METRICS = {"responses": {
    **ok(None, "Prometheus text exposition format (earlytom_* series)", content={
        "text/plain": {"schema": {"type": "string"}}}),
    **{code: spec for code, spec in errors(401).items() if code != 503},
}}

#: The routes that need the key when the server has one (``/health`` and ``/metrics`` too with
#: ``--protect-health-metrics``).
KEYED = ("/v1/chat/completions", "/v1/completions", "/tokenize", "/detokenize", "/version",
         "/v1/models")


def request_schemas() -> dict[str, Any]:
    """The request bodies' JSON schemas, keyed by component name (with their $defs)."""
    out: dict[str, Any] = {}
    named: dict[str, Any] = {
        "ChatCompletionRequest": ChatCompletionRequest, "CompletionRequest": CompletionRequest,
        "TokenizeChatRequest": TokenizeChatRequest,
        "TokenizePromptRequest": TokenizePromptRequest, "DetokenizeRequest": DetokenizeRequest,
    }
    for name, model in named.items():
        schema = TypeAdapter(model).json_schema(ref_template="#/components/schemas/{model}")
        out.update(schema.pop("$defs", {}))
        out[name] = schema
    out["TokenizeRequest"] = {
        "description": "vLLM's /tokenize: a chat-form (messages) or a prompt-form (prompt) body",
        "anyOf": [{"$ref": "#/components/schemas/TokenizeChatRequest"},
                  {"$ref": "#/components/schemas/TokenizePromptRequest"}]}
    return out


def build_openapi(app: FastAPI, settings: Settings, version: str) -> dict[str, Any]:
    schema = get_openapi(title=app.title, version=version, routes=app.routes,
                         description="OpenAI-compatible front end of vLLM with EarlyTom video "
                         "token compression. Errors are OpenAI error bodies.")
    schema.setdefault("components", {}).setdefault("schemas", {}).update(request_schemas())
    if settings.api_key is not None:
        schema["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        keyed = KEYED + (("/health", "/metrics") if settings.protect_health_metrics else ())
        for path in keyed:
            for operation in schema["paths"].get(path, {}).values():
                operation["security"] = [{"bearer": []}]
    return schema


def install_docs(app: FastAPI) -> None:
    """``/docs`` (Swagger UI) and ``/redoc``, with their assets served from this host."""
    assets = str(files("fastapi_offline") / "static")
    app.mount(ASSETS_PATH, StaticFiles(directory=assets), name="docs-assets")

    @app.get(DOCS_PATH, include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=OPENAPI_PATH, title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{ASSETS_PATH}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS_PATH}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS_PATH}/favicon.png",
            swagger_ui_parameters={"validatorUrl": None})

    @app.get(REDOC_PATH, include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=OPENAPI_PATH, title=f"{app.title} - ReDoc",
            redoc_js_url=f"{ASSETS_PATH}/redoc.standalone.js",
            redoc_favicon_url=f"{ASSETS_PATH}/favicon.png", with_google_fonts=False)
