"""OpenAI-shaped errors: ``{"error": {"message", "type", "param", "code"}, "request_id": ...}``.

Every failure the front end reports -- bad JSON, a wrong type, a video that is not a video, a URL
pointing into the private network, a dead backend -- goes through :class:`APIError`, so clients
always get this shape and never a stack trace. Errors relayed from a backend are rewritten into the
same shape (:func:`normalize_error_body`). ``request_id`` (beside ``error``, so the error object
itself stays exactly OpenAI's) is the id of the request the error is about, also sent as the
``X-Request-Id`` response header.
"""

from __future__ import annotations

import contextvars
import json
import re
from collections.abc import Mapping
from typing import Any

from fastapi.responses import JSONResponse

#: The id of the request being served (set by the request guard, read by errors and log lines).
REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "earlytom_request_id", default=None)

#: OpenAI's ``error.type`` for each status we emit.
_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "timeout_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    502: "upstream_error",
    503: "service_unavailable_error",
    504: "timeout_error",
}


def error_type(status: int) -> str:
    if status in _TYPES:
        return _TYPES[status]
    return "invalid_request_error" if 400 <= status < 500 else "server_error"


def error_body(
    status: int, message: str, *, param: str | None = None, code: str | int | None = None,
    type_: str | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "error": {
            "message": message,
            "type": type_ or error_type(status),
            "param": param,
            "code": code,
        }
    }
    request_id = REQUEST_ID.get()
    if request_id is not None:
        body["request_id"] = request_id
    return body


class APIError(Exception):
    """An error with an HTTP status, rendered as an OpenAI error body."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | int | None = None,
        type_: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type_ = type_
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return error_body(self.status, self.message, param=self.param, code=self.code,
                          type_=self.type_)

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers or None)

    def sse(self) -> bytes:
        """The error as one server-sent event (what vLLM emits when a stream fails)."""
        return b"data: " + json.dumps(self.body()).encode() + b"\n\n"


#: One entry of vLLM's validation-error message (``{'type': ..., 'loc': (...), 'msg': '...'``).
_PYDANTIC_MSG = re.compile(r"""'msg': (?:'((?:[^'\\]|\\.)*)'|"((?:[^"\\]|\\.)*)")""")
_PYDANTIC_HEAD = re.compile(r"^(\d+) validation errors?:?\s*\n")


def readable_backend_message(message: str, param: str | None) -> str:
    """vLLM 0.32 renders a request that fails its pydantic model as ``"N validation errors:\n
    {'type': ..., 'loc': (...), 'msg': '...', 'input': ...}"``: keep the first ``msg``, prefixed
    with the parameter (what the front end's own validation errors look like)."""
    head = _PYDANTIC_HEAD.match(message)
    if head is None:
        return message.strip()[:1000]
    found = _PYDANTIC_MSG.search(message)
    text = (found.group(1) or found.group(2) or "invalid value") if found else "invalid value"
    count = int(head.group(1))
    more = f" (and {count - 1} more invalid field{'s' if count > 2 else ''})" if count > 1 else ""
    return f"{param}: {text}{more}" if param else f"{text}{more}"


def _clean_param(param: Any) -> str | None:
    if not isinstance(param, str) or not param:
        return None
    return param[5:] if param.startswith("body.") else param


def normalize_error_body(status: int, raw: bytes) -> dict[str, Any]:
    """A backend's error body, rewritten into the front end's OpenAI shape: the type that goes
    with ``status``, ``param`` without vLLM's ``body.`` prefix, a readable message (not a pydantic
    dump), a string ``code`` (vLLM puts the HTTP status there), this request's id."""
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        data = None
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        err = data["error"]
        param = _clean_param(err.get("param"))
        message = readable_backend_message(str(err.get("message") or ""), param)
        code = err.get("code")
        if not isinstance(code, str) or not code:
            code = ("invalid_value" if param else "invalid_request") if status < 500 \
                else "backend_error"
        return error_body(status, message or f"the backend refused the request (HTTP {status})",
                          param=param, code=code)
    if isinstance(data, dict) and "detail" in data:  # plain FastAPI/Starlette error
        return error_body(status, str(data["detail"])[:1000])
    text = raw.decode("utf-8", "replace").strip()[:500]
    return error_body(status, text or f"backend returned HTTP {status}")


def backend_error_response(response: Any, *, client_fields: Mapping[str, Any] | None = None
                           ) -> tuple[int, JSONResponse]:
    """A backend's error answer (an httpx response) in the front end's shape: its status (a 500,
    or a non-error, becomes 502) and :func:`normalize_error_body`'s body. ``client_fields``: the
    request's top-level ``earlytom`` object, which travelled as ``mm_processor_kwargs.earlytom``:
    a ``param`` naming one of its keys is given back under the name the client sent."""
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
