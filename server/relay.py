"""The streaming relay: a backend's server-sent events passed on to the client, and counted.

:class:`StreamRelay` owns one streamed answer from the moment the backend's 200 arrives. Its
events are the backend's, re-emitted by ``proxy.relay_sse``; the relay ends them early with an
OpenAI error event when the server's drain grace is over (503), the request's time cap passes
(504) or the backend fails (502/504). The request is counted exactly once (status, latency,
tokens, in-flight gauge; its admission tickets released) as soon as its outcome is known: before
the client sees the backend's last event (so the client's next request never meets this one's
slot), with the error event that ends a cut or failed stream, or -- if the client goes away first
-- as 499 when the response closes. Closing the upstream response, which always happens, however
the response ended, cancels the request in vLLM.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import anyio
from fastapi.responses import StreamingResponse

from earlytom_server.admission import Ticket
from earlytom_server.errors import APIError
from earlytom_server.metrics import Metrics
from earlytom_server.proxy import (
    Backend,
    BackendFailed,
    BackendPool,
    StreamState,
    backend_error,
    relay_sse,
)

log = logging.getLogger("earlytom_server.app")

DONE = b"data: [DONE]\n\n"


@dataclass
class Labels:
    """The metric labels of a request (known once its body is read)."""

    model: str = "unknown"
    method: str = "earlytom"


def count_tokens(metrics: Metrics, labels: Labels, usage: Any) -> None:
    """Count a successful answer's prompt and output tokens (from vLLM's ``usage``)."""
    if isinstance(usage, dict):
        prompt = usage.get("prompt_tokens")
        completion = usage.get("completion_tokens")
        if isinstance(prompt, int) and prompt >= 0:
            metrics.prompt_tokens.labels(labels.model, labels.method).inc(prompt)
        if isinstance(completion, int) and completion >= 0:
            metrics.output_tokens.labels(labels.model, labels.method).inc(completion)


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


class StreamRelay:
    """One streamed answer: ``upstream`` (the backend's open 200 response) relayed to the
    client (:meth:`response`). ``status`` is the outcome once it is known (None until then)."""

    def __init__(self, upstream: Any, backend: Backend, *, pool: BackendPool, metrics: Metrics,
                 labels: Labels, t0: float, deadline: float, strip_usage: bool,
                 closing: Callable[[], bool], max_request_seconds: float) -> None:
        self.upstream = upstream
        self.backend = backend
        self.pool = pool
        self.metrics = metrics
        self.labels = labels
        self.t0 = t0  # perf_counter() when the request arrived
        self.deadline = deadline  # monotonic() past which the answer is cut (504)
        self.strip_usage = strip_usage
        self.closing = closing  # the drain's grace is over: the answer is cut (503)
        self.max_request_seconds = max_request_seconds
        self.tickets: list[Ticket] = []
        self.status: int | None = None

    def response(self) -> RelayResponse:
        return RelayResponse(
            self.events(), on_close=self.close, tickets=self.tickets,
            media_type="text/event-stream",
            headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
        )

    async def events(self) -> AsyncIterator[bytes]:
        state = StreamState()
        first_token_seen = False
        try:
            async for event in relay_sse(self.upstream, state, strip_usage=self.strip_usage):
                if not first_token_seen and state.first_content_at is not None:
                    first_token_seen = True
                    self.metrics.ttft.labels(self.labels.model, self.labels.method).observe(
                        state.first_content_at - self.t0)
                if state.done:  # the last event: settle the books before the client sees it
                    self.settle(state)
                    yield event
                    return
                yield event
                cut = self.cut_reason()
                if cut is not None:
                    log.warning("stream cut: %s", cut.message)
                    for tail in self.end_with(cut):
                        yield tail
                    return
        except BackendFailed as exc:
            if not exc.timeout:
                self.pool.report_failure(self.backend, str(exc))
            log.warning("stream from %s failed: %s", self.backend.url, exc)
            for tail in self.end_with(backend_error(exc)):
                yield tail
            return
        self.settle(state)  # the backend ended with an error event (no [DONE])

    def cut_reason(self) -> APIError | None:
        """Why the answer must end now, if it must."""
        if self.closing():
            return APIError(503, "the server is shutting down and its grace period is over; "
                            "the answer is incomplete", code="server_draining")
        if time.monotonic() > self.deadline:
            return APIError(504, "the request took longer than max_request_seconds "
                            f"({self.max_request_seconds:g} s); the answer is incomplete",
                            code="request_timeout")
        return None

    def settle(self, state: StreamState) -> None:
        """Count the backend's own ending: 200 (with its tokens) or its error event's status."""
        if state.error_status is not None:
            self.record(state.error_status)
        else:
            count_tokens(self.metrics, self.labels, state.usage)
            self.record(200)

    def end_with(self, error: APIError) -> tuple[bytes, bytes]:
        """Count the answer as ``error`` and return the events that end it."""
        self.record(error.status)
        return error.sse(), DONE

    def record(self, status: int) -> None:
        """Count the request as ``status`` (once: every caller ends the answer)."""
        self.status = status
        # The slot is free once the answer is complete, before the client can see [DONE]
        # and send its next request (which must not meet a 429 from this one).
        for ticket in self.tickets:
            ticket.release()
        model, method = self.labels.model, self.labels.method
        self.metrics.in_flight.labels(model).dec()
        self.metrics.requests.labels(model, method, str(status)).inc()
        elapsed = time.perf_counter() - self.t0
        self.metrics.duration.labels(model, method).observe(elapsed)
        if status == 200:
            self.metrics.e2e.labels(model, method).observe(elapsed)

    async def close(self) -> None:
        """Once the response is over, however it ended (also if the client disconnected before
        the first byte): closing the upstream response cancels the request in vLLM."""
        await self.upstream.aclose()
        self.backend.in_flight -= 1
        if self.status is None:  # the client went away before the answer was complete
            self.record(499)
