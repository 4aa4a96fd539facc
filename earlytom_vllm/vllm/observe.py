"""Read the EarlyTom model's observability counters from a running engine.

Functions here are importable by name, so ``LLM.apply_model`` / ``collective_rpc`` can ship them
to worker processes (they are pickled by reference)::

    llm.apply_model(last_trace)     # one dict per worker (tensor-parallel rank)
"""

from __future__ import annotations

from typing import Any


def last_trace(model: Any) -> dict[str, Any]:
    """The last video's trace: frames per layer, rows, method, kept indices, groups, timings."""
    return dict(getattr(model, "earlytom_last", {}) or {})


def layer_frames(model: Any) -> dict[str, Any]:
    """Frames that entered each encoder layer, summed over all videos since start."""
    return {"videos": getattr(model, "earlytom_videos", 0),
            "layer_frames": list(getattr(model, "earlytom_layer_frames", []))}
