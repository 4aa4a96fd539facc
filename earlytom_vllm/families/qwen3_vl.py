"""Qwen3-VL and the models on its vision encoder (Qwen3-VL-MoE, Qwen3.5, Qwen3.5-MoE):
docs/method.md, "EarlyTom on Qwen3-VL".

A frame is a temporal slice (a temporal patch of 2 video frames); its tokens are the merged grid
``(h/2) * (w/2)`` of THAT video; nothing is appended per video. Every block attends fully within
a slice, so any block can be the received-attention layer; the default prune layers are the
paper's SigLIP placement (10, 21, 23 of 26 layers) at the same relative depth, which depends on
the checkpoint's ``vision_config.depth`` (27 blocks: 10, 22, 24). Deepstack levels (the hidden
states after ``deepstack_visual_indexes``) follow the kept tokens; the adapter does that. vLLM's
own pruning peers are EVS and VidCom2 (``--video-pruning-rate``, ``--video-pruning-method``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from earlytom_vllm.config import EarlyTomConfig
from earlytom_vllm.families.base import BenchmarkSpec, CheckpointRecipe
from earlytom_vllm.families.qwen2_5_vl import QwenVisionFamily

#: The paper's prune layers on LLaVA-OneVision's 26-layer SigLIP (docs/method.md section 5).
PAPER_PRUNE_LAYERS, PAPER_DEPTH = (10, 21, 23), 26


def default_prune_layers(depth: int) -> tuple[int, ...]:
    """The paper's placement at the same relative depth: layer ``i`` (0-based) of 26 is the
    output after ``i + 1`` of 26 layers, so it becomes ``round((i + 1) * depth / 26) - 1``
    (27 blocks: 10, 22, 24; 24 blocks: 9, 19, 21)."""
    if depth < 1:
        raise ValueError(f"vision encoder depth must be positive, got {depth}")
    layers = {max(0, round((i + 1) * depth / PAPER_DEPTH) - 1) for i in PAPER_PRUNE_LAYERS}
    return tuple(sorted(layers))


class Qwen3VLFamily(QwenVisionFamily):
    def defaults_for(self, model_config: Any) -> EarlyTomConfig:
        return dataclasses.replace(
            self.defaults, prune_layers=default_prune_layers(self.encoder_depth(model_config)))


FAMILY = Qwen3VLFamily(
    name="qwen3_vl",
    title="Qwen3-VL",
    model_types=("qwen3_vl", "qwen3_vl_moe", "qwen3_5", "qwen3_5_moe"),
    architectures={
        "EarlyTomQwen3VLForConditionalGeneration": "Qwen3VLForConditionalGeneration",
        "EarlyTomQwen3VLMoeForConditionalGeneration": "Qwen3VLMoeForConditionalGeneration",
        "EarlyTomQwen3_5ForConditionalGeneration": "Qwen3_5ForConditionalGeneration",
        "EarlyTomQwen3_5MoeForConditionalGeneration": "Qwen3_5MoeForConditionalGeneration",
    },
    adapter="earlytom_vllm.vllm.qwen3_vl",
    frame_unit=2,
    extra_rows=0,
    # Qwen3-VL-8B (27 blocks); other depths: defaults_for
    defaults=EarlyTomConfig(prune_layers=default_prune_layers(27), tau=0.5, max_window=6,
                            ema=0.9),
    benchmark=BenchmarkSpec(
        prompt=("<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>What happens in "
                "this video? Describe it briefly.<|im_end|>\n<|im_start|>assistant\n"),
        video_token="<|video_pad|>", video_size=448, video_fps=2,
        ttft_ratios=(0.15, 0.10), throughput_ratios=(0.15, 0.10), kv_cache_gib=1),
    checkpoint=CheckpointRecipe(
        name="tiny-qwen3-vl",
        recipe="earlytom_vllm.checkpoints.qwen3_vl:RECIPE",
        cache_tag="qwen3_vl",
        # To be sized with the FLOPs tool (issue 19, item 4: the lead's); the tiny LLM until then.
        bench_sizes={}),
    vllm_pruning=True,
)
