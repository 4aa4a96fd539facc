"""Qwen2.5-VL (docs/method.md section 7).

A frame is a temporal slice (a temporal patch of 2 video frames); its tokens are the merged grid
``(h/2) * (w/2)`` of THAT video (so two videos of one prompt may differ); nothing is appended per
video. The encoder mixes windowed and full attention: the last prune layer (where received
attention is read) must be a full-attention block. vLLM's own pruning peer is EVS
(``--video-pruning-rate``).
"""

from __future__ import annotations

from typing import Any

from earlytom_vllm.config import EarlyTomConfig
from earlytom_vllm.families.base import (
    BenchmarkSpec,
    CheckpointRecipe,
    Family,
    check_grid,
    config_value,
)


class QwenVisionFamily(Family):
    """What the Qwen vision encoders share: patch grids merged 2 x 2, slices of 2 frames."""

    def encoder_depth(self, config: Any) -> int:
        return int(config_value(config, "vision_config", "depth"))

    def merge(self, config: Any) -> int:
        return int(config_value(config, "vision_config", "spatial_merge_size"))

    def frame_tokens(self, config: Any, grid_hw: tuple[int, int] | None = None) -> int:
        m = self.merge(config)
        h, w = check_grid(grid_hw, m, self.title)
        return (h // m) * (w // m)

    def patch_grid(self, config: Any, height: int, width: int) -> tuple[int, int]:
        patch = int(config_value(config, "vision_config", "patch_size"))
        unit = patch * self.merge(config)
        if height % unit or width % unit:
            raise ValueError(f"{self.title} frames of {height}x{width} px are resized: give "
                             f"multiples of {unit} px")
        return height // patch, width // patch


class Qwen2_5_VLFamily(QwenVisionFamily):
    def full_attention_blocks(self, config: Any) -> tuple[int, ...]:
        return tuple(int(i) for i in config_value(config, "vision_config",
                                                  "fullatt_block_indexes"))


# The benchmark-sized Qwen2.5-VL (``checkpoint.bench_sizes``): the tiny model's vision tower (real
# geometry, 64 wide) and an LLM sized so that the vision encoder takes the share of a full-token
# TTFT that it takes in Qwen2.5-VL-7B at the benchmark's 32 frames of 448 x 448 (16 slices of 32 x
# 32 patches, 4096 video tokens, ~100 text tokens).
#
# Target, from FLOPs (this project's convention: multiply-adds, attention per slice as vLLM runs
# it, windows of 64 patches, GQA, 3-matrix SwiGLU MLPs): Qwen2.5-VL-7B's vision tower (32 x 1280,
# MLP 3420, patch embedding and merger included) is 10.8 T, its LLM (Qwen2.5-7B: 28 x 3584, 4 KV
# heads, MLP 18944) over 4196 tokens 30.9 T: the encoder is 25.8% of the prefill (24-27% from 16
# to 64 frames, 336 to 672 px).
#
# On this CPU the tiny tower takes 2.6-3.0 s for that video (quiet machine; it is dominated by the
# per-window attention calls, which scale with the slices as the real encoder's FLOPs do); a
# 4112-token text-only prefill of a 512 x 4 LLM took 2.4 s (~55 G multiply-adds/s, the attention's
# n^2 term dominating at these widths). 768 x 7 (12 heads of 64, 2 KV heads, MLP 3072, ~425 G
# multiply-adds at that length) is then ~7.7 s, so the encoder is ~26% of a ~11 s full-token TTFT.
# Re-measure on the benchmark machine: the encoder time is the model's trace (``encoder_seconds``
# with ``trace`` on), the LLM time a text-only prompt of equal length.
FAMILY = Qwen2_5_VLFamily(
    name="qwen2_5_vl",
    title="Qwen2.5-VL",
    model_types=("qwen2_5_vl",),
    architectures={"EarlyTomQwen2_5_VLForConditionalGeneration":
                   "Qwen2_5_VLForConditionalGeneration"},
    adapter="earlytom_vllm.vllm.qwen2_5_vl",
    frame_unit=2,
    extra_rows=0,
    # method.md section 7: merge after full-attention blocks 7, 15, 23 (22% / 47% / 72% depth)
    defaults=EarlyTomConfig(prune_layers=(7, 15, 23), tau=0.5, max_window=6, ema=0.9),
    benchmark=BenchmarkSpec(
        prompt=("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                "<|vision_start|><|video_pad|><|vision_end|>What happens in this video? "
                "Describe it briefly.<|im_end|>\n<|im_start|>assistant\n"),
        video_token="<|video_pad|>", video_size=448, video_fps=2,
        ttft_ratios=(0.15, 0.10), throughput_ratios=(0.15, 0.10), kv_cache_gib=1,
        ttft_targets={"none": 2.0, "vllm_evs": 1.5}, ttft_target_ratios=(0.15, 0.10),
        # the 7B model's FLOPs share (25.8%) the benchmark checkpoint is sized for
        vision_share_band=(0.21, 0.31),
        # 12 frames of 112 px (6 slices of 16 tokens): EVS's floor of one slice (16) stays below
        # EarlyTom's budget at r = 0.15 (6 x 3 = 18); one ratio (one EVS server), concurrency 1
        # and a Poisson level of 2 requests: both load modes in one run.
        throughput_quick={"frames": 12, "video_size": 112, "concurrency": "1", "ratios": "0.15",
                          "request_rate": "4", "rate_requests": 2}),
    checkpoint=CheckpointRecipe(
        name="tiny-qwen2-5-vl",
        recipe="earlytom_vllm.checkpoints.qwen2_5_vl:RECIPE",
        cache_tag="qwen2_5_vl",
        bench_sizes={"text_hidden": 768, "text_layers": 7, "text_heads": 12,
                     "text_kv_heads": 2, "text_intermediate": 3072}),
    vllm_pruning=("evs",),
)
