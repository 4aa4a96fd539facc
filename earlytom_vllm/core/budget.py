"""Token accounting: the single source of truth for how many visual tokens a video takes.

The serving rule (``docs/method.md`` section 4): the count is fixed before encoding,
``budget(T, r) = T * ceil(tokens_per_frame * r)``. ``tokens_per_frame`` belongs to the model and
the video (LLaVA-OneVision: 196 after pooling; Qwen2.5-VL: ``(h/2) * (w/2)`` of the video's grid),
so every function here takes it. The vLLM processors, the models, the encoder loop and the
benchmarks all count with :func:`video_token_count`.

Pure Python: counting never imports torch (:func:`allocate_quota` works on a tensor it is given).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from earlytom_vllm.config import EarlyTomConfig

_INT_SNAP = 1e-9


def _ceil_snapped(x: float) -> int:
    """``ceil(x)``, except that a value within 1e-9 of an integer is that integer.

    196 * (53 / 196) is 53.00000000000001 in floats; its plain ceiling would be 54.
    """
    nearest = round(x)
    if abs(x - nearest) <= _INT_SNAP:
        return int(nearest)
    return math.ceil(x)


def _check_ratio(retain_ratio: float) -> float:
    if isinstance(retain_ratio, bool) or not isinstance(retain_ratio, (int, float)):
        raise ValueError(f"retain_ratio must be a number, got {retain_ratio!r}")
    r = float(retain_ratio)
    if math.isnan(r) or not 0.0 < r <= 1.0:
        raise ValueError(f"retain_ratio must be in (0, 1], got {retain_ratio!r}")
    return r


def _check_count(name: str, value: int, lo: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < lo:
        raise ValueError(f"{name} must be >= {lo}, got {value!r}")
    return value


def tokens_per_frame_kept(retain_ratio: float, tokens_per_frame: int) -> int:
    """``ceil(tokens_per_frame * retain_ratio)`` with the float guard; always >= 1."""
    r = _check_ratio(retain_ratio)
    n = _check_count("tokens_per_frame", tokens_per_frame)
    return max(1, _ceil_snapped(n * r))


def video_token_budget(num_frames: int, retain_ratio: float, tokens_per_frame: int) -> int:
    """Visual tokens kept for a video of ``num_frames`` frames (a newline is not included)."""
    t = _check_count("num_frames", num_frames)
    return t * tokens_per_frame_kept(retain_ratio, tokens_per_frame)


def video_token_count(num_frames: int, config: EarlyTomConfig, tokens_per_frame: int) -> int:
    """Visual tokens a video keeps under ``config``: the budget when it compresses, else all
    ``num_frames * tokens_per_frame`` (``enabled=False``, ``method="none"`` or ratio 1)."""
    if config.compresses:
        return video_token_budget(num_frames, config.retain_ratio, tokens_per_frame)
    return _check_count("num_frames", num_frames) * _check_count("tokens_per_frame",
                                                                 tokens_per_frame)


def min_frames_for_budget(budget: int, tokens_per_frame: int) -> int:
    """Fewest frames that can hold ``budget`` tokens (no frame holds more than ``tokens_per_frame``)."""
    b = _check_count("budget", budget)
    return -(-b // _check_count("tokens_per_frame", tokens_per_frame))


def allocate_quota(budget: int, dynamic: torch.Tensor, tokens_per_frame: int) -> torch.Tensor:
    """Spread ``budget`` over frames: ``budget // T'`` each, the remainder one token each to the
    dynamic frames first, then to the static frames, in temporal order.

    Args:
        budget: tokens to place.
        dynamic: ``[T']`` bool, True for dynamic frames.
    Returns:
        ``[T']`` int64 quota on ``dynamic``'s device, summing to ``budget``.
    """
    import torch  # already loaded: the caller holds a tensor; counting alone never needs it

    if dynamic.ndim != 1 or dynamic.dtype != torch.bool:
        raise ValueError(f"dynamic must be a 1-D bool tensor, got {tuple(dynamic.shape)} {dynamic.dtype}")
    frames = dynamic.shape[0]
    _check_count("frames", frames)
    _check_count("budget", budget)
    if budget > frames * tokens_per_frame:
        raise ValueError(
            f"budget {budget} does not fit in {frames} frames of {tokens_per_frame} tokens"
        )
    base, rem = divmod(budget, frames)
    # Rank frames for the remainder: dynamic ones first, each class in temporal order.
    order = torch.arange(frames, device=dynamic.device)
    rank_key = order + (~dynamic).long() * frames  # dynamic: 0..T'-1, static: T'..2T'-1
    rank = torch.empty_like(order)
    rank[torch.argsort(rank_key)] = order  # rank[t] = position of frame t in that order
    return base + (rank < rem).long()
