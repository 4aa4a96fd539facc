"""OpenAI-shaped errors: ``{"error": {"message", "type", "param", "code"}}``.

Every failure the front end reports -- bad JSON, a wrong type, a video that is not a video, a URL
pointing into the private network, a dead backend -- goes through :class:`APIError`, so clients
always get this shape and never a stack trace.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from fastapi.responses import JSONResponse

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
    return {
        "error": {
            "message": message,
            "type": type_ or error_type(status),
            "param": param,
            "code": code,
        }
    }


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


def normalize_error_body(status: int, raw: bytes) -> dict[str, Any]:
    """A backend's error body in OpenAI shape (vLLM's already is; anything else is wrapped)."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        data = None
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        err = data["error"]
        return error_body(
            status,
            str(err.get("message", "")) or f"backend returned HTTP {status}",
            param=err.get("param"),
            code=err.get("code"),
            type_=err.get("type") or None,
        )
    if isinstance(data, dict) and "detail" in data:  # plain FastAPI/Starlette error
        return error_body(status, str(data["detail"]))
    text = raw.decode("utf-8", "replace").strip()[:500]
    return error_body(status, text or f"backend returned HTTP {status}")
