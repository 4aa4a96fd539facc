"""The ``earlytom_*`` Prometheus metrics (names are fixed: a Grafana dashboard uses them).

Each app owns a :class:`Metrics` with its own ``CollectorRegistry``, so several apps (tests) can
live in one process. Labels:

- ``model``: the served model name the request resolved to (``unknown`` before that is known);
- ``method``: the effective compression method of the request -- ``earlytom``, ``post_encoder``,
  ``evs``, or ``none`` when compression is off for it (``enabled: false``, ``method: none`` or
  ``retain_ratio: 1``);
- ``status``: the HTTP status code as a string (429: refused for capacity, see
  ``earlytom_requests_rejected_total{reason}``). A stream that fails after its 200 header was sent is
  counted with ``502``; a client that disconnects mid-stream with ``499``.

``earlytom_request_duration_seconds`` covers requests that were forwarded to a backend (requests
rejected by the front end's own checks only count in ``earlytom_requests_total``). TTFT: streaming,
until the first chunk with content; non-streaming, until the whole response. Token counters count
successful (200) requests; prompt tokens are vLLM's ``usage.prompt_tokens`` (compressed prompt).

Visual-token counters (``earlytom_visual_tokens_{before,after}_total{model, method}``) are not the
front end's: the EarlyTom processor adds them in vLLM's API-server process, from the same per-video
plan that fixes the placeholder count, so they appear on the engine's ``/metrics`` (the ``vllm``
scrape job) and count exactly what the engine encodes (its own frame sampling, edit lists and
all). The front end never decodes a video to count it.
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

#: 10 ms .. 60 s, denser where CPU and GPU TTFTs live.
TTFT_BUCKETS = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0,
    7.5, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0,
)
#: Whole requests run longer than their first token.
DURATION_BUCKETS = (*TTFT_BUCKETS, 90.0, 120.0, 180.0, 300.0, 600.0)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    """All front-end metrics, registered in one private registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.ttft = Histogram(
            "earlytom_time_to_first_token_seconds",
            "Time to first token: streaming, until the first content chunk; "
            "non-streaming, until the full response.",
            ["model", "method"], buckets=TTFT_BUCKETS, registry=r,
        )
        self.duration = Histogram(
            "earlytom_request_duration_seconds",
            "Chat completion request duration, from request received to last byte relayed.",
            ["model", "method"], buckets=DURATION_BUCKETS, registry=r,
        )
        # prometheus_client appends _total to counter names itself.
        self.output_tokens = Counter(
            "earlytom_output_tokens", "Completion tokens (usage.completion_tokens).",
            ["model", "method"], registry=r,
        )
        self.prompt_tokens = Counter(
            "earlytom_prompt_tokens",
            "Prompt tokens after compression (usage.prompt_tokens, as the backend counts them).",
            ["model", "method"], registry=r,
        )
        self.requests = Counter(
            "earlytom_requests", "Chat completion requests by final HTTP status.",
            ["model", "method", "status"], registry=r,
        )
        self.in_flight = Gauge(
            "earlytom_requests_in_flight", "Chat completion requests being served.",
            ["model"], registry=r,
        )
        self.backend_up = Gauge(
            "earlytom_backend_up", "1 when the backend answers its health check, else 0.",
            ["backend"], registry=r,
        )
        self.rejected = Counter(
            "earlytom_requests_rejected",
            "Chat requests refused for capacity before any work: reason queue_full or "
            "queue_timeout (HTTP 429), draining (HTTP 503 during a graceful shutdown).",
            ["reason"], registry=r,
        )
        self.queued = Gauge(
            "earlytom_requests_queued", "Chat requests waiting for an in-flight slot.",
            registry=r,
        )
        self.routed = Counter(
            "earlytom_requests_routed",
            "Requests sent to a backend by routing policy: affinity (a video's requests to the "
            "backend its content hashes to), affinity_overflow (that backend was at its "
            "in-flight limit: the least loaded took it), least_loaded (no video).",
            ["policy"], registry=r,
        )
        self.backend_restarts = Counter(
            "earlytom_backend_restarts",
            "Restarts of the vLLM backend supervised by earlytom-serve.",
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
