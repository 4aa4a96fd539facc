"""The engine-side ``earlytom_*`` metrics (names are fixed: the Grafana dashboard uses them).

The EarlyTom processor adds them in vLLM's API-server process (which serves vLLM's ``/metrics``)
from the per-video plans that fix the prompt, so they count exactly what the engine encodes:

- ``earlytom_visual_tokens_before_total{model_name, method}``: video tokens the prompts would hold
  without compression (frames x tokens per frame, plus the model family's extra rows);
- ``earlytom_visual_tokens_after_total{model_name, method}``: the placeholder rows after compression.

``method`` is the effective method (``none`` when a request does not compress). Only
``prometheus_client`` is imported here.
"""

from __future__ import annotations

from typing import Any

LABELS = ("model_name", "method")  # vLLM labels its series model_name too


class VisualTokenCounters:
    """The two counters, in ``registry`` (default: prometheus_client's global one)."""

    def __init__(self, registry: Any = None) -> None:
        from prometheus_client import REGISTRY, Counter

        r = REGISTRY if registry is None else registry
        self.before = Counter("earlytom_visual_tokens_before",
                              "Video tokens the prompts would hold without compression "
                              "(frames x tokens per frame, plus the model's extra rows).",
                              LABELS, registry=r)
        self.after = Counter("earlytom_visual_tokens_after",
                             "Video tokens in the prompts after compression (the placeholder "
                             "rows fixed by the EarlyTom processor).", LABELS, registry=r)

    def add(self, model: str, method: str, before: int, after: int) -> None:
        self.before.labels(model, method).inc(before)
        self.after.labels(model, method).inc(after)
