"""LLaVA-OneVision (and LLaVA-Video, which vLLM serves with the same class).

A frame is a video frame; SigLIP's 27 x 27 patch grid is pooled 2 x 2 (bilinear) to 14 x 14 = 196
tokens at every resolution (frames are resized to 384 px); each video gets one ``image_newline``
row after its tokens. Every SigLIP layer attends over a whole frame, so any layer may be a prune
layer. vLLM has no pruning of its own for this family (``method="evs"`` is this project's
EVS-style baseline).
"""

from __future__ import annotations

import math
from typing import Any

from earlytom_vllm.config import EarlyTomConfig
from earlytom_vllm.families.base import (
    BenchmarkSpec,
    CheckpointRecipe,
    Family,
    config_value,
    layer_index,
)


class LlavaOnevisionFamily(Family):
    def encoder_depth(self, config: Any) -> int:
        # mirrors vLLM 0.32 llava.py: _get_num_hidden_layers for one feature layer (pinned by
        # tests/vllm/test_families.py against it)
        layer = config_value(config, "vision_feature_layer", default=-1)
        if isinstance(layer, bool) or not isinstance(layer, int):
            raise ValueError(f"EarlyTom needs a single vision_feature_layer, got {layer!r}")
        return layer_index(layer, int(config_value(config, "vision_config",
                                                   "num_hidden_layers")))

    def frame_tokens(self, config: Any, grid_hw: tuple[int, int] | None = None) -> int:
        # vLLM's _get_num_frame_tokens: ceil((image_size / patch) / spatial_pool_stride) ** 2
        side = (int(config_value(config, "vision_config", "image_size"))
                // int(config_value(config, "vision_config", "patch_size")))
        pooled = math.ceil(side / int(config_value(config, "spatial_pool_stride", default=2)))
        return pooled * pooled

    def patch_grid(self, config: Any, height: int, width: int) -> tuple[int, int]:
        side = (int(config_value(config, "vision_config", "image_size"))
                // int(config_value(config, "vision_config", "patch_size")))
        return side, side  # every frame is resized to image_size


FAMILY = LlavaOnevisionFamily(
    name="llava_onevision",
    title="LLaVA-OneVision",
    model_types=("llava_onevision",),
    architectures={"EarlyTomLlavaOnevisionForConditionalGeneration":
                   "LlavaOnevisionForConditionalGeneration"},
    adapter="earlytom_vllm.vllm.llava_onevision",
    frame_unit=1,
    extra_rows=1,
    # docs/method.md section 5: the scripts' most common setting
    defaults=EarlyTomConfig(prune_layers=(10, 21, 23), tau=0.5, max_window=6, ema=0.9),
    benchmark=BenchmarkSpec(
        prompt=("<|im_start|>user\n<video>\nWhat happens in this video? Describe it briefly."
                "<|im_end|>\n<|im_start|>assistant\n"),
        video_token="<video>", video_size=384, video_fps=4,
        ttft_ratios=(0.25, 0.10), throughput_ratios=(0.10,), kv_cache_gib=2,
        extra_prune_layers=((4, 14, 24), (6, 14, 20)),
        # docs/method.md section 6 (the paper's 10% row, LLaVA-OV-7B on an A100): 889.9 / 336.2
        ttft_targets={"none": 2.65, "post_encoder": 1.3, "evs": 1.3}, ttft_target_ratios=(0.10,),
        vision_share_band=(0.30, 0.45),
        paper_ttft={"ttft_ms": {"none": 889.9, "earlytom@0.25": 426.3, "earlytom@0.10": 336.2},
                    "breakdown_ms_at_0.10": {"none": [323, 63, 500], "earlytom": [239, 35, 58]},
                    "vision_share_none": round(323 / 889.9, 3)}),
    checkpoint=CheckpointRecipe(
        name="tiny-llava-onevision",
        recipe="earlytom_vllm.checkpoints.llava_onevision:RECIPE",
        # Real geometry (384 px, patch 14, 26 SigLIP layers), narrow widths: the vision encoder
        # takes about the paper's share of a full-token TTFT (measured in results/ttft.json).
        bench_sizes={"seed": 0, "vision_hidden": 128, "vision_layers": 26, "vision_heads": 2,
                     "vision_intermediate": 512, "text_hidden": 768, "text_layers": 12,
                     "text_heads": 12, "text_kv_heads": 2, "text_intermediate": 2048,
                     "dtype": "float32"}),
)
