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

#: The paper's prune layers on LLaVA-OneVision's 26-layer SigLIP (docs/method.md section 5): the
#: serving default and two of its alternatives (the earliest placements in its scripts).
PAPER_PRUNE_LAYERS, PAPER_DEPTH = (10, 21, 23), 26
PAPER_ALTERNATIVES = ((4, 14, 24), (6, 14, 20))


def at_depth(layers: tuple[int, ...], depth: int) -> tuple[int, ...]:
    """SigLIP prune layers at the same relative depth of a ``depth``-block encoder: layer ``i``
    (0-based) of 26 is the output after ``i + 1`` of 26 layers, so it becomes
    ``round((i + 1) * depth / 26) - 1``."""
    if depth < 1:
        raise ValueError(f"vision encoder depth must be positive, got {depth}")
    return tuple(sorted({max(0, round((i + 1) * depth / PAPER_DEPTH) - 1) for i in layers}))


def default_prune_layers(depth: int) -> tuple[int, ...]:
    """The paper's placement at the same relative depth (27 blocks: 10, 22, 24; 24 blocks: 9,
    19, 21)."""
    return at_depth(PAPER_PRUNE_LAYERS, depth)


class Qwen3VLFamily(QwenVisionFamily):
    def defaults_for(self, model_config: Any) -> EarlyTomConfig:
        return dataclasses.replace(
            self.defaults, prune_layers=default_prune_layers(self.encoder_depth(model_config)))


# The benchmark-sized Qwen3-VL (``checkpoint.bench_sizes``): the tiny model's vision tower (the
# real geometry: 27 blocks, deepstack 8/16/24, patch 16; 64 wide) and an LLM sized so that the
# encoder takes Qwen3-VL-8B's share of a full-token TTFT at the benchmark's 32 frames of 448 x
# 448 (16 slices of 28 x 28 patches, 3136 video tokens, ~3350 prompt tokens). Target, from FLOPs
# (this project's convention, python -m benchmarks.flops --model qwen3-vl-8b): the vision tower
# (27 x 1152, MLP 4304, patch embedding and the four mergers) is 6.29 T, the LLM (Qwen3-8B: 36 x
# 4096, 8 KV heads, MLP 12288) 25.56 T: the encoder is 19.8% of the prefill.
# Measured here (python -m benchmarks.ttft --family qwen3_vl --methods none --checkpoint-sizes
# ..., 2026-12-06, a machine shared with other jobs): the tiny tower takes 2.5-4.3 s for that
# video; with a 768 x 7 LLM (12 heads of 64, 2 KV heads, MLP 3072) the prefill took 12.1 s next
# to 4.3 s of encoder (25.1%), ~1.7 s a layer, so 10 layers bring the encoder to ~20%. The TTFT
# benchmark prints the share it measures (results/ttft_qwen3_vl.json).
BENCH_SIZES = {"text_hidden": 768, "text_layers": 10, "text_heads": 12, "text_kv_heads": 2,
               "text_intermediate": 3072}

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
        # The bare layout (no outer <|vision_start|>/<|vision_end|> around the per-slice groups):
        # vLLM 0.32's own EVS and VidCom2 crash on the chat template's nested layout
        # ("The expanded size of the tensor (0) must match ...", video_prune/evs.py:
        # recompute_mrope_positions) and run only on this one, so every arm is measured on it.
        # EarlyTom serves both (tests/vllm/test_qwen3_vl.py).
        prompt=("<|im_start|>user\n<|video_pad|>What happens in this video? Describe it "
                "briefly.<|im_end|>\n<|im_start|>assistant\n"),
        video_token="<|video_pad|>", video_size=448, video_fps=2,
        ttft_ratios=(0.15, 0.10), throughput_ratios=(0.15, 0.10), kv_cache_gib=1,
        # the paper's earliest alternatives at Qwen3-VL-8B's depth, (4, 15, 25) and (6, 15, 21):
        # how much earlier merging buys next to vLLM's EVS and VidCom2 (not the default)
        extra_prune_layers=tuple(at_depth(p, 27) for p in PAPER_ALTERNATIVES),
        # issue targets: >= 2.5x full tokens on the scene video at r = 0.15; >= 1.25x vLLM's EVS
        # and VidCom2 there, and no slower than them on the motion video (nothing merges)
        ttft_targets={"none": {"scene": 2.5},
                      "vllm_evs": {"scene": 1.25, "motion": 1.0},
                      "vllm_vidcom2": {"scene": 1.25, "motion": 1.0}},
        ttft_target_ratios=(0.15,),
        # Qwen3-VL-8B's vision share of a full-token prefill at 32 frames x 448^2 (19.8%,
        # python -m benchmarks.flops --model qwen3-vl-8b), which the benchmark checkpoint is
        # sized for
        vision_share_band=(0.15, 0.25),
        # 12 frames of 128 px (6 slices of 4 x 4 = 16 tokens): EVS's floor of one slice (16)
        # stays below EarlyTom's budget at r = 0.15 (6 x 3 = 18); one ratio, concurrency 1 and a
        # Poisson level of 2 requests
        chat_video_rewrite=("<|vision_start|><|video_pad|><|vision_end|>", "<|video_pad|>"),
        throughput_quick={"frames": 12, "video_size": 128, "concurrency": "1", "ratios": "0.15",
                          "request_rate": "4", "rate_requests": 2}),
    checkpoint=CheckpointRecipe(
        name="tiny-qwen3-vl",
        recipe="earlytom_vllm.checkpoints.qwen3_vl:RECIPE",
        cache_tag="qwen3_vl",
        bench_sizes=BENCH_SIZES),
    vllm_pruning=("evs", "vidcom2"),
)
