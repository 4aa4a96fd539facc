"""A vLLM backend's cache counters, read from its ``/metrics`` (Prometheus text)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

#: vLLM 0.32's counters (``vllm/v1/metrics/loggers.py``; prometheus appends ``_total``), by the
#: short names the report uses.
COUNTERS: dict[str, str] = {
    "prefix_queries": "vllm:prefix_cache_queries",
    "prefix_hits": "vllm:prefix_cache_hits",
    "mm_queries": "vllm:mm_cache_queries",
    "mm_hits": "vllm:mm_cache_hits",
    "prompt_tokens": "vllm:prompt_tokens",
    "prompt_tokens_cached": "vllm:prompt_tokens_cached",
}


def parse_counters(text: str) -> dict[str, float]:
    """:data:`COUNTERS` summed over every label set (engines, models) of a Prometheus text
    exposition; a counter the text lacks is 0."""
    from prometheus_client.parser import text_string_to_metric_families

    want = {v: k for k, v in COUNTERS.items()}
    out = dict.fromkeys(COUNTERS, 0.0)
    for family in text_string_to_metric_families(text):
        key = want.get(family.name.removesuffix("_total"))
        if key is None:
            continue
        for s in family.samples:
            if s.name.endswith("_total"):
                out[key] += float(s.value)
    return out


def read_counters(backends: Sequence[str]) -> dict[str, float]:
    """The counters of all ``backends`` together (their ``/metrics`` need no key)."""
    import httpx

    total = dict.fromkeys(COUNTERS, 0.0)
    for url in backends:
        r = httpx.get(f"{url}/metrics", timeout=30.0)
        r.raise_for_status()
        for k, v in parse_counters(r.text).items():
            total[k] += v
    return total


def cache_config(backends: Sequence[str]) -> dict[str, Any]:
    """``block_size`` and ``enable_prefix_caching`` of the first backend, from vLLM's
    ``vllm:cache_config_info`` gauge; a clear error where prefix caching is off (the follow-up
    turns would then measure nothing but the multimodal cache)."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{backends[0]}/metrics", timeout=30.0).text
    for family in text_string_to_metric_families(text):
        if family.name == "vllm:cache_config_info" and family.samples:
            labels = family.samples[0].labels
            if labels.get("enable_prefix_caching") != "True":
                raise SystemExit(f"prefix caching is off in the backend {backends[0]} "
                                 f"(enable_prefix_caching={labels.get('enable_prefix_caching')})"
                                 ": start it without --no-enable-prefix-caching")
            return {"block_size": int(labels["block_size"]), "enable_prefix_caching": True}
    raise SystemExit(f"the backend {backends[0]} exposes no vllm:cache_config_info on /metrics")


def counters_after(backends: Sequence[str], before: dict[str, float], *, settle_s: float = 5.0
                   ) -> dict[str, float]:
    """Counters once the turn's prompt shows up in them (vLLM records a request's stats as its
    outputs are processed: a scrape right after the stream ends may be a step behind)."""
    deadline = time.monotonic() + settle_s
    while True:
        now = read_counters(backends)
        if now["prompt_tokens"] > before["prompt_tokens"] or time.monotonic() > deadline:
            return now
        time.sleep(0.1)

