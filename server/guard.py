"""The request guard: the outermost layer of the app, around every HTTP request.

- **Request ids.** A client's ``X-Request-Id`` is kept when it is a sane token (1-128 of
  ``A-Z a-z 0-9 . _ : -``), else one is generated. It is set in :data:`errors.REQUEST_ID` for the
  request's task (error bodies and every log line read it), returned as the ``X-Request-Id``
  response header, and forwarded to vLLM (which uses it as the engine's request id).
- **Header count.** More than ``max_header_count`` headers: HTTP 431 (their total size is capped
  earlier, by the HTTP parser: see ``server/serving.py``).
- **Draining.** After SIGTERM new requests get 503 with ``Retry-After`` and ``Connection: close``
  (``/metrics`` keeps answering); the requests already in flight are counted here, so the drain
  knows when they are done.
- **No dropped connections.** An exception that escapes the app becomes a normal OpenAI-style 500
  with the request id, and the connection stays usable. (Uvicorn, given the exception, would log
  it and close the connection with no ``Connection: close``, so the client's next request on it
  failed too.) If the response had already started, it is ended properly: an SSE error event for
  a stream, ``Connection: close`` is impossible by then, so the body is closed as sent.
- **Access log.** One line per request (method, path, status, duration) carrying the id.

Pure ASGI, a few microseconds per request.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Callable
from typing import Any

from earlytom_server.errors import REQUEST_ID, error_body

log = logging.getLogger("earlytom_server.app")
access_log = logging.getLogger("earlytom_server.access")

_REQUEST_ID_OK = re.compile(r"[A-Za-z0-9._:\-]{1,128}")


def request_id_from(value: bytes | None) -> str:
    """The client's id when it is a sane token, else a fresh one."""
    if value:
        try:
            text = value.decode("ascii")
        except UnicodeDecodeError:
            text = ""
        if _REQUEST_ID_OK.fullmatch(text):
            return text
    return uuid.uuid4().hex


class RequestIdFilter(logging.Filter):
    """Adds ``record.request_id`` (the id of the request being served, ``-`` outside one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = REQUEST_ID.get() or "-"
        return True


def json_response_messages(status: int, body: dict[str, Any], headers: dict[str, str]
                           ) -> tuple[dict[str, Any], dict[str, Any]]:
    content = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(content)).encode())]
    raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    return ({"type": "http.response.start", "status": status, "headers": raw},
            {"type": "http.response.body", "body": content, "more_body": False})


class RequestGuard:
    """ASGI middleware; ``state()`` returns the FrontEnd (for its settings, drain flag and
    counters), looked up per request so that one guard serves the app for its whole life."""

    def __init__(self, app: Any, state: Callable[[], Any]) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        front = self.state()
        settings = front.settings
        headers = scope["headers"]
        rid_header = None
        for name, value in headers:
            if name == b"x-request-id":
                rid_header = value
                break
        request_id = request_id_from(rid_header)
        token = REQUEST_ID.set(request_id)
        scope.setdefault("state", {})["request_id"] = request_id
        t0 = time.perf_counter()
        status_seen = [0]
        started = [False]
        finished = [False]
        sse = [False]
        rid_bytes = request_id.encode("ascii")

        async def guarded_send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                started[0] = True
                status_seen[0] = message["status"]
                message["headers"] = [*message.get("headers", ()), (b"x-request-id", rid_bytes)]
                sse[0] = any(k == b"content-type" and v.startswith(b"text/event-stream")
                             for k, v in message["headers"])
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                finished[0] = True
            await send(message)

        path = scope.get("path", "")
        front.active_requests += 1
        try:
            if len(headers) > settings.max_header_count:
                await self._reply(guarded_send, 431, f"too many request headers ({len(headers)}; "
                                  f"the limit is {settings.max_header_count})",
                                  code="headers_too_large", close=True)
            elif front.draining and path != "/metrics":
                if path in ("/v1/chat/completions", "/v1/completions"):
                    front.metrics.rejected.labels("draining").inc()
                if path == "/health":
                    body = {"status": "draining", **error_body(
                        503, "the server is shutting down", code="server_draining")}
                else:
                    body = error_body(503, "the server is shutting down; retry on another "
                                      "instance or after Retry-After seconds",
                                      code="server_draining")
                start, end = json_response_messages(
                    503, body, {"retry-after": str(settings.retry_after), "connection": "close"})
                await guarded_send(start)
                await guarded_send(end)
            else:
                await self.app(scope, receive, guarded_send)
        except Exception:
            log.exception("unexpected error on %s %s", scope.get("method"), path)
            if not started[0]:
                await self._reply(guarded_send, 500, "internal error (details in the server "
                                  f"log under request id {request_id})", code="internal_error")
            elif not finished[0]:
                tail = b""
                if sse[0]:
                    event = error_body(500, "internal error (details in the server log)",
                                       code="internal_error")
                    tail = b"data: " + json.dumps(event).encode() + b"\n\ndata: [DONE]\n\n"
                try:
                    await guarded_send({"type": "http.response.body", "body": tail,
                                        "more_body": False})
                except Exception:  # the connection is gone (or the length was declared)
                    log.debug("could not end the response", exc_info=True)
        finally:
            front.active_requests -= 1
            if access_log.isEnabledFor(logging.INFO):
                client = scope.get("client") or ("-", 0)
                access_log.info('%s:%s "%s %s" %s %.1f ms', client[0], client[1],
                                scope.get("method"), path, status_seen[0] or "-",
                                1000 * (time.perf_counter() - t0))
            REQUEST_ID.reset(token)

    @staticmethod
    async def _reply(send: Any, status: int, message: str, *, code: str,
                     close: bool = False) -> None:
        headers = {"connection": "close"} if close else {}
        start, end = json_response_messages(status, error_body(status, message, code=code),
                                            headers)
        await send(start)
        await send(end)
