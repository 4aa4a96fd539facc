"""Traces of the EarlyTom models: recorded only with the server-wide ``trace`` setting.

With ``--hf-overrides '{"earlytom": {"trace": true}}'`` each model keeps the last video's trace
(frames entering each layer, kept indices, groups, timings measured with one device sync per
stage) and per-layer frame counters. Serving leaves it off: the request path then makes no device
sync or host copy of its own. The readers are importable by name, so ``LLM.apply_model`` /
``collective_rpc`` can ship them to worker processes (they are pickled by reference)::

    llm.apply_model(last_trace)     # one dict per worker (tensor-parallel rank)
"""

from __future__ import annotations

import logging
import time
from typing import Any

logger = logging.getLogger(__name__)


def last_trace(model: Any) -> dict[str, Any]:
    """The last video's trace: frames per layer, rows, method, kept indices, groups, timings."""
    return dict(getattr(model, "earlytom_last", {}) or {})


def recent_traces(model: Any) -> list[dict[str, Any]]:
    """The traces of the last few videos, oldest first (models that keep them: Qwen2.5-VL)."""
    return [dict(t) for t in getattr(model, "earlytom_recent", ())]


def last_positions(model: Any) -> list[list[int]] | None:
    """The last prompt's M-RoPE positions ``[3][N]`` as the LLM used them (models that rewrite
    positions through vLLM's pruning plumbing: Qwen2.5-VL), else None."""
    return getattr(model, "earlytom_positions", None)


def layer_frames(model: Any) -> dict[str, Any]:
    """Frames that entered each encoder layer, summed over all videos since start."""
    return {"videos": getattr(model, "earlytom_videos", 0),
            "layer_frames": list(getattr(model, "earlytom_layer_frames", []))}


def trace_clock(like: Any):
    """A clock for traces: one device sync per reading."""
    import torch

    def clock() -> float:
        if like.is_cuda:
            torch.cuda.synchronize(like.device)
        return time.perf_counter()

    return clock


def record_trace(model: Any, plan: Any, result: Any, seconds: tuple[float, float],
                 **extra: Any) -> None:
    """Keep one video's trace on ``model`` (``plan``: VideoPlan; ``result``: VideoCompression,
    None on the stock path). Copies the kept indices to the host: traces only."""
    depth = len(model.earlytom_layer_frames)
    frames = result.frames_per_layer if result is not None else [plan.num_frames] * depth
    model.earlytom_videos += 1
    for i, f in enumerate(frames):
        model.earlytom_layer_frames[i] += f
    model.earlytom_last = {
        "frames_per_layer": list(frames),
        "rows": plan.rows,
        "method": plan.config.effective_method,
        "index": None if result is None else result.index.cpu().tolist(),
        "groups": None if result is None else result.groups,
        "origins": None if result is None else list(result.origins),
        "encoder_seconds": seconds[0],  # patch embedding + encoder layers (+ Stage I)
        "tokens_seconds": seconds[1],  # projector + pooling + selection
        "batch": 1 if result is None else result.batch,  # videos that shared those seconds
        **extra,
    }
    logger.debug("earlytom video: %d frames, %d rows, frames per layer %s",
                 plan.num_frames, plan.rows, frames)
