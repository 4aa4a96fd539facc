"""EarlyTom, the algorithm: pure torch, no serving-framework imports.

Names load lazily (PEP 562), so ``from earlytom_vllm.core.budget import video_token_count`` (or
``earlytom_vllm.core.video_token_count``) counts tokens without importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "budget": ("allocate_quota", "min_frames_for_budget", "tokens_per_frame_kept",
               "video_token_budget", "video_token_count"),
    "attention": ("attention_with_received", "pool_merge_units", "pool_received",
                  "received_attention"),
    "baselines": ("evs_select", "frame_groups", "post_encoder_select"),
    "positions": ("kept_grid_positions",),
    "encoder": ("BatchRun", "EncoderRun", "VideoCompression", "VisionTower", "batch_key",
                "compress_video", "compress_videos", "run_encoder", "run_encoder_batch"),
    "selection": ("dynamic_mask", "select_index", "select_tokens"),
    "temporal": ("merge_frames", "segment_frames", "similarity_band", "stage1"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
