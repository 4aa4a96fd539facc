"""EarlyTom, the algorithm: pure torch, no serving-framework imports."""

from earlytom_vllm.core.attention import attention_with_received, pool_received, received_attention
from earlytom_vllm.core.baselines import evs_select, post_encoder_select
from earlytom_vllm.core.budget import (
    TOKENS_PER_FRAME,
    allocate_quota,
    min_frames_for_budget,
    tokens_per_frame_kept,
    video_token_budget,
)
from earlytom_vllm.core.encoder import (
    EncoderRun,
    VideoCompression,
    VisionTower,
    compress_video,
    run_encoder,
)
from earlytom_vllm.core.selection import dynamic_mask, select_tokens
from earlytom_vllm.core.temporal import merge_frames, segment_frames, similarity_band, stage1

__all__ = [
    "TOKENS_PER_FRAME",
    "EncoderRun",
    "VideoCompression",
    "VisionTower",
    "allocate_quota",
    "attention_with_received",
    "compress_video",
    "dynamic_mask",
    "evs_select",
    "merge_frames",
    "min_frames_for_budget",
    "pool_received",
    "post_encoder_select",
    "received_attention",
    "run_encoder",
    "segment_frames",
    "select_tokens",
    "similarity_band",
    "stage1",
    "tokens_per_frame_kept",
    "video_token_budget",
]
