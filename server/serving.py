"""How ``earlytom-serve`` runs its app: the HTTP protocol's limits, and the graceful drain.

**Protocol limits** (:class:`GuardedH11Protocol`, uvicorn's h11 protocol with three additions):

- the request line plus headers may not exceed ``max_header_bytes`` (HTTP 431, OpenAI-style body);
- they must arrive within ``header_timeout`` seconds of the connection opening, or of the first
  byte of the next request on a kept-alive connection (a slow-headers client is answered 408 and
  disconnected; uvicorn alone would wait forever);
- a request the parser refuses gets an OpenAI-style 400 (uvicorn's is plain text).

Slow bodies are the app's (``body_timeout``, ``max_request_seconds``), the header count is the
request guard's (``server/guard.py``).

**Graceful drain** (:class:`DrainingServer`): the first SIGTERM does not stop the server. New
requests get 503 with ``Retry-After`` and ``/health`` turns 503 (load balancers stop sending),
in-flight requests and streams run to completion for up to ``drain_grace`` seconds (streams still
running then end with an SSE error event), then uvicorn shuts down: the app's shutdown stops the
supervised vLLM backend and the process exits 0. A second SIGTERM, or SIGINT (Ctrl-C), stops at
once (uvicorn's own handling).

:func:`uvicorn_config` is what the CLI and the tests both run.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import socket
import time
import uuid
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from earlytom_server.errors import error_body
from earlytom_server.settings import Settings

log = logging.getLogger("earlytom_server.serving")

#: Seconds uvicorn waits for connections after the drain (streams were already given their grace).
SHUTDOWN_WAIT = 5


#: Allocations from this size up are mmapped, so that freeing them gives the memory back.
MMAP_THRESHOLD = 1 << 20


def tame_malloc() -> bool:
    """Fix glibc's mmap threshold at :data:`MMAP_THRESHOLD` (True if set).

    By default glibc raises the threshold up to 32 MiB each time a large block is freed, after
    which request bodies and decoded media of a few MiB come from the heap and stay in the
    process after they are freed: a burst of uploads then leaves the RSS at its peak, far above
    what is alive (measured: 8 x 16 MiB uploads through a 32 MiB budget took the front end from
    58 to 433 MiB; fixed, see docs/reliability.md). A fixed threshold also stops the adjustment."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(-3, MMAP_THRESHOLD))  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):  # not glibc
        return False


def listen_socket(host: str, port: int) -> socket.socket:
    """A bound TCP socket for uvicorn. Created with ``IPPROTO_TCP`` so that asyncio turns on
    ``TCP_NODELAY`` for every accepted connection: with protocol 0 it does not, and Nagle's
    algorithm then holds a response's body until the client's delayed ACK of its headers
    (~40 ms added to every response)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


def _json_error(status: int, message: str, code: str) -> tuple[list[tuple[bytes, bytes]], bytes]:
    request_id = uuid.uuid4().hex
    body = error_body(status, message, code=code)
    body["request_id"] = request_id
    content = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"connection", b"close"),
               (b"x-request-id", request_id.encode())]
    return headers, content


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a header size limit, a header timeout and JSON 400s.
    Configured through ``config.earlytom_max_header_bytes`` / ``earlytom_header_timeout``."""

    def __init__(self, config: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        self.max_head = int(getattr(config, "earlytom_max_header_bytes", 16 * 1024))
        self.header_timeout = float(getattr(config, "earlytom_header_timeout", 10.0))
        self.header_timer: asyncio.TimerHandle | None = None

    # -- header timeout ---------------------------------------------------------------------------
    def _waiting_for_head(self) -> bool:
        return self.conn.their_state is h11.IDLE and (
            self.cycle is None or self.cycle.response_complete)

    def _arm_header_timer(self) -> None:
        if self.header_timer is None:
            self.header_timer = self.loop.call_later(self.header_timeout, self._header_timeout)

    def _cancel_header_timer(self) -> None:
        if self.header_timer is not None:
            self.header_timer.cancel()
            self.header_timer = None

    def _header_timeout(self) -> None:
        self.header_timer = None
        if self.transport.is_closing() or not self._waiting_for_head():
            return
        buffered = bool(self.conn.trailing_data[0])
        if buffered:  # a client that started a request and stalled: tell it why
            self._reply(408, f"the request headers did not arrive within "
                        f"{self.header_timeout:g} s", "header_timeout")
        else:  # an idle connection: just close it
            self.transport.close()

    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # the keep-alive timer covers the idle wait; the header timer starts with the next byte

    # -- header size ------------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self._waiting_for_head():
            head = self.conn.trailing_data[0] + data
            end = head.find(b"\r\n\r\n")
            if (end < 0 and len(head) > self.max_head) or end > self.max_head:
                self._unset_keepalive_if_required()
                self._reply(431, f"the request line and headers exceed {self.max_head} bytes",
                            "headers_too_large")
                return
            self._arm_header_timer()
        super().data_received(data)
        if not self._waiting_for_head():
            self._cancel_header_timer()

    # -- refusals ---------------------------------------------------------------------------------
    def send_400_response(self, msg: str) -> None:
        self._reply(400, f"invalid HTTP request ({msg.rstrip('.')})", "invalid_http")

    def _reply(self, status: int, message: str, code: str) -> None:
        self._cancel_header_timer()
        if self.transport.is_closing():
            return
        headers, content = _json_error(status, message, code)
        headers.append((b"content-length", str(len(content)).encode()))
        reason = {400: b"Bad Request", 408: b"Request Timeout",
                  431: b"Request Header Fields Too Large"}[status]
        head = b"HTTP/1.1 %d %s\r\n" % (status, reason) + b"".join(
            k + b": " + v + b"\r\n" for k, v in headers) + b"\r\n"
        self.transport.write(head + content)  # raw: h11's state may be broken by now
        self.transport.close()


def uvicorn_config(app: Any, settings: Settings, *, log_level: str | None = None
                   ) -> uvicorn.Config:
    """The uvicorn configuration of ``earlytom-serve`` (the tests run the same)."""
    config = uvicorn.Config(
        app,
        http=GuardedH11Protocol,
        ws="none",
        lifespan="on",
        log_config=None,  # the root logger's handler (with the request-id filter) prints
        log_level=log_level or settings.log_level,
        access_log=False,  # the request guard logs one line per request, with its id
        proxy_headers=False,
        server_header=False,
        timeout_keep_alive=settings.keep_alive_timeout,
        timeout_graceful_shutdown=SHUTDOWN_WAIT,
        h11_max_incomplete_event_size=settings.max_header_bytes + 1,
    )
    config.earlytom_max_header_bytes = settings.max_header_bytes  # type: ignore[attr-defined]
    config.earlytom_header_timeout = settings.header_timeout  # type: ignore[attr-defined]
    return config


class DrainingServer(uvicorn.Server):
    """uvicorn's server, with the first SIGTERM turned into a graceful drain of ``front``."""

    def __init__(self, config: uvicorn.Config, front: Any) -> None:
        super().__init__(config)
        self.front = front
        self.drain_task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.drained_in: float | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets=sockets)

    def handle_exit(self, sig: int, frame: Any) -> None:
        if sig == signal.SIGTERM and self.drain_task is None and not self.should_exit \
                and self._loop is not None:
            self._loop.call_soon_threadsafe(self.start_drain)
            return
        super().handle_exit(sig, frame)

    def start_drain(self) -> None:
        if self.drain_task is None:
            self.drain_task = asyncio.ensure_future(self.drain())

    async def drain(self) -> None:
        front = self.front
        grace = front.settings.drain_grace
        t0 = time.monotonic()
        front.draining = True
        log.warning("SIGTERM: draining. New requests get 503; %d in flight get up to %g s",
                    front.active_requests, grace)
        deadline = t0 + grace
        while front.active_requests > 0 and time.monotonic() < deadline and not self.should_exit:
            await asyncio.sleep(0.05)
        if front.active_requests > 0:
            log.warning("drain grace (%g s) over with %d requests in flight: ending them",
                        grace, front.active_requests)
            front.closing = True
            end = time.monotonic() + 2.0
            while front.active_requests > 0 and time.monotonic() < end:
                await asyncio.sleep(0.05)
        self.drained_in = time.monotonic() - t0
        log.warning("drained in %.2f s; stopping", self.drained_in)
        self.should_exit = True
